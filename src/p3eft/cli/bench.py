"""`p3eft bench`: measure costs and write them as JSON (thin: the library measures)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from p3eft.cli.options import check_json_out
from p3eft.errors import P3eftError

app = typer.Typer(help="Measure costs (FHE parameter sets, ...) and write JSON.")

DEFAULT_SETS = "N8192,N16384,N32768"


@app.callback(invoke_without_command=True)
def _group(ctx: typer.Context) -> None:
    """Measure costs and write JSON."""
    if ctx.invoked_subcommand is None:  # bare `p3eft bench`: show the commands, exit cleanly
        typer.echo(ctx.get_help())


@app.command("fhe")
def fhe(
    json_path: Path = typer.Option(..., "--json", help="Where to write the cost JSON."),
    sets: str = typer.Option(DEFAULT_SETS, "--sets", help="Comma-separated parameter sets."),
    quick: bool = typer.Option(False, "--quick", help="One repeat per timing."),
    tenseal_sets: str = typer.Option(
        "N8192", "--tenseal-sets", help="Sets on which to time TenSEAL's slow built-in mm ('all' or a list)."
    ),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Repeats per timing (median)."),
    no_matvec: bool = typer.Option(False, "--no-matvec", help="Skip the matrix-product timings."),
) -> None:
    """Per parameter set: key generation, encryption, decryption, sizes and matrix-product times."""
    from p3eft.fhe.costs import measure_param_set, provenance
    from p3eft.fhe.params import NAMED_SETS

    check_json_out(json_path)  # before minutes of measuring
    names = [s.strip() for s in sets.split(",") if s.strip()]
    unknown = [n for n in names if n not in NAMED_SETS]
    if unknown:
        raise P3eftError(f"unknown parameter set(s) {unknown}; known: {', '.join(NAMED_SETS)}")
    reps = 1 if quick else repeats
    cmd = (
        "p3eft " + " ".join(sys.argv[1:])
        if sys.argv and "bench" in sys.argv
        else f"p3eft bench fhe --json {json_path}"
    )
    out: dict = {"provenance": provenance(cmd, reps)}
    for name in names:
        out[name] = measure_param_set(
            name,
            repeats=reps,
            matvec=not no_matvec,
            with_tenseal=tenseal_sets == "all" or name in tenseal_sets.split(","),
            progress=lambda msg: typer.echo(msg, err=True),
        )
        rec = out[name]
        typer.echo(
            f"{name}: {rec['security_bits']}-bit, ct {rec['ciphertext_bytes']} B, keygen {rec['keygen_s']:.3f}s, "
            f"enc {rec['encrypt_s'] * 1e3:.1f} ms, dec {rec['decrypt_s'] * 1e3:.1f} ms"
            + (f", matvec768 {rec['matvec_768x768_s']:.3f}s" if "matvec_768x768_s" in rec else "")
            + (
                f" ({rec['matvec_768x768_with_encode_s']:.3f}s with encoding)"
                if "matvec_768x768_with_encode_s" in rec
                else ""
            )
            + (f", tenseal mm {rec['tenseal_mm_768x768_s']:.2f}s" if "tenseal_mm_768x768_s" in rec else "")
        )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    typer.echo(f"wrote {json_path}")
