"""`p3eft demo`: the networked ObfuscaTune demo, every party its own process on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from p3eft.cli import options as opt
from p3eft.outputs import check_writable_dir


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        json_out: Path | None = typer.Option(None, "--json", help="Also write the summary JSON here."),
        out: Path = typer.Option(
            Path("runs/demo"), "--out", help="Folder for keys, logs, adapters, results."
        ),
        model: str = typer.Option("smollm2-135m", "--model", help="Registry name or local model folder."),
        dataset: str = typer.Option("obqa", "--dataset", help="webqs, obqa, piqa or sciq."),
        steps: int = typer.Option(4, "--steps", min=1, help="Fine-tuning steps."),
        limit: int = typer.Option(32, "--limit", min=1, help="Training examples used."),
        eval_limit: int = typer.Option(8, "--eval-limit", min=1, help="Evaluation questions scored."),
        in_process: bool = typer.Option(
            True, "--in-process/--no-in-process", help="Also run in-process to compare the final loss."
        ),
        threads: int = typer.Option(1, "--threads", min=1, help="Intra-op threads per party process."),
    ) -> None:
        """Run the networked ObfuscaTune demo (cloud, enclave, model owner, data owner as processes)."""
        check_writable_dir(out)  # before any party starts: a bad --out or --json fails in a second
        opt.check_json_out(json_out)
        from p3eft.obfuscatune.net.demo import DemoConfig, run_demo

        cfg = DemoConfig(
            model=model,
            dataset=dataset,
            steps=steps,
            limit=limit,
            eval_limit=eval_limit,
            out=str(out),
            in_process=in_process,
            threads=threads,
        )
        s = run_demo(cfg, echo=typer.echo)
        weights = "RANDOM weights" if s.get("weights_random") else "real weights"
        typer.echo(
            f"\nnetworked: {s['steps']} steps on {s['model']} ({weights}), final loss {s['final_loss']:.4f}"
        )
        if "in_process_final_loss" in s:
            typer.echo(
                f"in-process: final loss {s['in_process_final_loss']:.4f}; "
                f"equal: {s['final_loss'] == s['in_process_final_loss']}, "
                f"adapters bit-identical: {s['adapters_bit_identical']}"
            )
        ev = s["eval"]
        typer.echo(
            f"evaluation ({ev['n']} {s['dataset']} questions): acc {ev['acc']:.3f}, acc_norm {ev['acc_norm']:.3f}"
        )
        typer.echo(f"parties (pid): {', '.join(f'{k} {v}' for k, v in s['parties'].items())}")
        typer.echo(f"adapter (plain PEFT): {s['adapter']}")
        typer.echo(f"results: {s['results']}, {s['eval_results']}, {Path(cfg.out) / 'demo.json'}")
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(s, indent=2))
            typer.echo(f"summary: {json_out}")
