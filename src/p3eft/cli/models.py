"""`p3eft models`: the model registry (list, info)."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Model registry: list, inspect.", no_args_is_help=True)


def _rows() -> list[dict[str, object]]:
    from p3eft.models import list_models, parameter_count_from_config, real_weights_location

    rows = []
    for spec in list_models():
        where = real_weights_location(spec)
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "architecture": type(spec.hf_config()).__name__.replace("Config", ""),
                "task": spec.task,
                "parameters": parameter_count_from_config(spec),
                "real_weights_here": where is not None,
                "weights_source": where or "random init from config (no local weights, hub not allowed)",
                "description": spec.description,
            }
        )
    return rows


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Every registered model: architecture, parameter count (from its config) and whether real weights are here."""
    rows = _rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = f"{'name':<14} {'architecture':<12} {'task':<24} {'parameters':>14}  real weights here"
    typer.echo(header)
    typer.echo("-" * len(header))
    for r in rows:
        real = f"yes ({r['weights_source']})" if r["real_weights_here"] else "no (random weights from config)"
        typer.echo(f"{r['name']:<14} {r['architecture']:<12} {r['task']:<24} {r['parameters']:>14,}  {real}")


@app.command("info")
def info_cmd(name: str = typer.Argument(..., help="Registry name or local model folder.")) -> None:
    """Details of one model as JSON."""
    from p3eft.models import parameter_count_from_config, real_weights_location, resolve_spec

    spec = resolve_spec(name)
    cfg = spec.hf_config()
    where = real_weights_location(spec)
    typer.echo(
        json.dumps(
            {
                "name": spec.name,
                "family": spec.family,
                "task": spec.task,
                "architecture": type(cfg).__name__.replace("Config", ""),
                "parameters": parameter_count_from_config(spec),
                "real_weights_here": where is not None,
                "weights_source": where,
                "hub_id": spec.hub_id,
                "package": spec.package,
                "config": cfg.to_diff_dict(),
            },
            indent=2,
            default=str,
        )
    )
