"""`p3eft wireless`: PrivTuner's wireless system (energy/privacy resource allocation).

Thin: parse, call :mod:`p3eft.wireless`, print, write JSON.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click
import typer

from p3eft.errors import P3eftError

app = typer.Typer(
    no_args_is_help=True, help="PrivTuner's wireless system: energy/privacy resource allocation."
)


def _command_line(ctx: click.Context) -> str:
    """The command as given (rebuilt from the parsed options, so it is right however we were invoked)."""
    parts = ["p3eft", "wireless", ctx.info_name or ""]
    for param in ctx.command.params:
        val = ctx.params.get(param.name)
        if val is None or val is False or not param.opts:
            continue
        parts.append(param.opts[0])
        if val is not True:
            parts.append(shlex.quote(str(val)))
    return " ".join(parts)


@app.command()
def run(
    ctx: typer.Context,
    scenario: Path = typer.Option(None, "--scenario", help="Scenario file (YAML or JSON)."),
    users: int = typer.Option(None, "--users", help="Generate a scenario with this many users."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated scenario and the random baseline."),
    w3: float = typer.Option(
        None, "--w3", help="Privacy weight in J per security bit (overrides the scenario)."
    ),
    costs: Path = typer.Option(
        None, "--costs", help="FHE cost JSON from `p3eft bench fhe` (default: packaged)."
    ),
    continuous: str = typer.Option(
        "dual",
        "--continuous",
        help="Continuous stage: dual (fast, exact) or fractional (quadratic transform + cvxpy).",
    ),
    check_exhaustive: bool = typer.Option(
        False, "--check-exhaustive", help="Also enumerate all choices (<= 8 users)."
    ),
    baselines: bool = typer.Option(False, "--baselines", help="Also run every baseline."),
    save_scenario: Path = typer.Option(None, "--save-scenario", help="Write the scenario used (YAML/JSON)."),
    json_out: Path = typer.Option(None, "--json", help="Write the result as JSON here."),
) -> None:
    """Solve one scenario with the proposed method (optionally baselines and exhaustive check)."""
    from p3eft.wireless import (
        InfeasibleScenarioError,
        Scenario,
        SolveOptions,
        generate_scenario,
        load_costs,
        solve,
    )
    from p3eft.wireless.baselines import BASELINES, run_baseline
    from p3eft.wireless.optimizer import check_allocation, solve_exhaustive

    if (scenario is None) == (users is None):
        raise P3eftError("give exactly one of --scenario FILE or --users U")
    sc = Scenario.load(scenario) if scenario is not None else generate_scenario(users, seed=seed)
    if w3 is not None:
        sc = sc.with_(weights=(sc.weights[0], sc.weights[1], w3))
    if save_scenario is not None:
        sc.save(save_scenario)
    table = load_costs(costs)
    if continuous not in ("dual", "fractional"):
        raise P3eftError(f"--continuous must be 'dual' or 'fractional', not {continuous!r}")
    res = solve(sc, table, SolveOptions(continuous=continuous))
    out = {
        "command": _command_line(ctx),
        "scenario": sc.to_dict(),
        "result": res.to_json_dict(),
        "violations": check_allocation(sc, table, res),
    }
    t = res.terms
    typer.echo(
        f"proposed: objective {res.fun:.6g}  total energy {t['energy_total_j']:.6g} J  "
        f"mean privacy {t['privacy_mean_bits']:.1f} bits  ({res.time_s:.3f} s, {res.message})"
    )
    if check_exhaustive:
        if sc.n_users > 8:
            raise P3eftError("--check-exhaustive is limited to 8 users (3^U continuous solves)")
        ex = solve_exhaustive(sc, table)
        gap = (res.fun - ex.fun) / max(abs(ex.fun), 1e-12)
        out["exhaustive"] = ex.to_json_dict()
        out["gap_to_exhaustive"] = gap
        typer.echo(f"exhaustive: objective {ex.fun:.6g}  gap_to_exhaustive {gap:.3e}  ({ex.time_s:.3f} s)")
    if baselines:
        out["baselines"] = {}
        for name in BASELINES:
            try:
                rb = run_baseline(name, sc, table, seed=seed)
            except InfeasibleScenarioError as err:
                out["baselines"][name] = {"infeasible": str(err)}
                typer.echo(f"{name:>16}: infeasible ({err})")
                continue
            out["baselines"][name] = rb.to_json_dict()
            saved = 1 - t["energy_total_j"] / rb.terms["energy_total_j"]
            typer.echo(
                f"{name:>16}: objective {rb.fun:.6g}  total energy {rb.terms['energy_total_j']:.6g} J  "
                f"(energy saved by proposed: {100 * saved:.1f}%)"
            )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2))
        typer.echo(f"wrote {json_out}")


@app.command()
def figures(
    ctx: typer.Context,
    out: Path = typer.Option(Path("docs/results/wireless"), "--out", help="Output directory."),
    costs: Path = typer.Option(None, "--costs", help="FHE cost JSON (default: packaged)."),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(False, "--quick", help="Fewer sweep points (for tests)."),
    users: int = typer.Option(10, "--users", help="Users in the base scenario of the sweeps."),
) -> None:
    """Energy vs privacy weight / users / bandwidth / max power, and chosen privacy vs weight."""
    from p3eft.wireless import load_costs
    from p3eft.wireless.experiments import make_figures

    table = load_costs(costs)
    for p in make_figures(out, table, _command_line(ctx), seed=seed, quick=quick, users=users):
        typer.echo(f"wrote {p} (+ .json, .command.txt)")
