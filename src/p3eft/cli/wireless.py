"""`p3eft wireless`: PrivTuner's wireless system (energy/privacy resource allocation).

Thin: parse, call :mod:`p3eft.wireless`, print, write JSON.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import click
import typer

from p3eft.cli import options as opt
from p3eft.errors import P3eftError
from p3eft.outputs import check_writable_dir, check_writable_file

app = typer.Typer(
    no_args_is_help=True, help="PrivTuner's wireless system: energy/privacy resource allocation."
)


def _command_line(ctx: click.Context) -> str:
    """The command as given (rebuilt from the parsed options, so it is right however we were invoked)."""
    parts = ["p3eft", "wireless", ctx.info_name or ""]
    for param in ctx.command.params:
        val = ctx.params.get(param.name)
        if val is None or val is False or not param.opts or val == [] or val == ():
            continue
        if isinstance(val, (list, tuple)):  # a repeatable option: repeat the flag
            for v in val:
                parts += [param.opts[0], shlex.quote(str(v))]
            continue
        parts.append(param.opts[0])
        if val is not True:
            parts.append(shlex.quote(str(val)))
    return " ".join(parts)


def _load(costs: list[Path] | None, cpu_hz: float | None):  # noqa: ANN202 - CostSource, imported lazily
    from p3eft.wireless import load_costs

    return load_costs(list(costs or []), cpu_hz=cpu_hz)


def _deadlines(text: str | None) -> tuple[float, float] | None:
    """``"LO,HI"`` seconds -> the range generated deadlines are drawn from (None: the generator's)."""
    if text is None:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise P3eftError(f"--deadline-s takes 'LO,HI' in seconds, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise P3eftError(f"--deadline-s needs 0 < LO <= HI (finite seconds), got {text!r}")
    return lo, hi


def _w3_grid(text: str | None) -> list[float] | None:
    """``"0,0.5,1"`` -> the privacy weights of the w3 sweep (None: the default grid)."""
    if text is None:
        return None
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise P3eftError(f"--w3-grid takes comma-separated J/bit values, got {text!r}") from None
    if len(vals) < 2 or any(not (math.isfinite(v) and v >= 0) for v in vals) or vals != sorted(set(vals)):
        raise P3eftError(f"--w3-grid needs >= 2 increasing finite values >= 0, got {text!r}")
    return vals


_W3_HELP = "Privacy weights (J/bit, comma-separated, increasing) of the w3 sweep (default 0,...,0.2)."

_DEADLINE_HELP = (
    "Range 'LO,HI' (seconds) the generated users' deadlines are drawn from (default 150,300: the "
    "engine-file workload; one real PrivTuner step takes tens of minutes, see docs/wireless.md)."
)

_COSTS_HELP = (
    "Cost file: the PrivTuner step costs of `p3eft privtuner bench --json`, or the CKKS engine's "
    "`p3eft bench fhe --json` file (default: the packaged engine file, CPU times). Repeat the option to "
    "combine several PrivTuner step-cost files of one model shape (each keeps its own provenance)."
)


# Options that several commands share, declared once.
_COSTS = typer.Option(None, "--costs", help=_COSTS_HELP)
_DEADLINE = typer.Option(None, "--deadline-s", help=_DEADLINE_HELP)
_W3_GRID = typer.Option(None, "--w3-grid", help=_W3_HELP)
_CPU_HZ = typer.Option(
    None, "--cpu-hz", help="Clock of the machine that measured the cost file (if its provenance lacks it)."
)
_SEED = opt.option(0, "--seed", help="Seed of the generated scenario and the random baseline.")


@app.command()
def run(
    ctx: typer.Context,
    scenario: Path = typer.Option(None, "--scenario", help="Scenario file (YAML or JSON)."),
    users: int = typer.Option(None, "--users", help="Generate a scenario with this many users."),
    seed: int = _SEED,
    w3: float = typer.Option(
        None, "--w3", help="Privacy weight in J per security bit (overrides the scenario)."
    ),
    bandwidth_mhz: float = typer.Option(
        None, "--bandwidth-mhz", help="Total bandwidth B in MHz (default: 2 MHz per generated user)."
    ),
    server_ghz: float = typer.Option(
        None, "--server-ghz", help="Total server capacity F_s in GHz (default: 1 GHz per generated user)."
    ),
    costs: list[Path] = _COSTS,
    deadline_s: str = _DEADLINE,
    cpu_hz: float = _CPU_HZ,
    continuous: str = typer.Option(
        "dual",
        "--continuous",
        help="Continuous stage: dual (fast, exact) or fractional (quadratic transform + cvxpy).",
    ),
    check_exhaustive: bool = typer.Option(
        False, "--check-exhaustive", help="Also enumerate every choice (at most 50000 combinations)."
    ),
    baselines: bool = typer.Option(False, "--baselines", help="Also run every baseline."),
    save_scenario: Path = typer.Option(None, "--save-scenario", help="Write the scenario used (YAML/JSON)."),
    json_out: Path = typer.Option(None, "--json", help="Write the result as JSON here."),
) -> None:
    """Solve one scenario with the proposed method (optionally baselines and exhaustive check)."""
    from p3eft.wireless import InfeasibleScenarioError, Scenario, SolveOptions, generate_scenario, solve
    from p3eft.wireless.baselines import BASELINES, run_baseline
    from p3eft.wireless.discrete import EXHAUSTIVE_LIMIT
    from p3eft.wireless.optimizer import check_allocation, exhaustive_size, solve_exhaustive

    if (scenario is None) == (users is None):
        raise P3eftError("give exactly one of --scenario FILE or --users U")
    opt.check_json_out(json_out)
    if save_scenario is not None:
        check_writable_file(save_scenario, "--save-scenario")
    if users is not None and users < 1:
        raise P3eftError(f"--users must be >= 1, got {users}")
    if continuous not in ("dual", "fractional"):
        raise P3eftError(f"--continuous must be 'dual' or 'fractional', not {continuous!r}")
    system = {}
    for flag, val, key, unit in (
        ("--bandwidth-mhz", bandwidth_mhz, "bandwidth_hz", 1e6),
        ("--server-ghz", server_ghz, "server_hz", 1e9),
    ):
        if val is not None:
            if not (math.isfinite(val) and val > 0):
                raise P3eftError(f"{flag} must be a positive number, got {val}")
            system[key] = val * unit
    dl = _deadlines(deadline_s)
    if scenario is not None and dl is not None:
        raise P3eftError(
            "--deadline-s applies to generated scenarios (--users); the scenario file has its own"
        )
    gen = {} if dl is None else {"deadline_s": dl}
    sc = Scenario.load(scenario) if scenario is not None else generate_scenario(users, seed=seed, **gen)
    if w3 is not None:
        system["weights"] = (sc.weights[0], sc.weights[1], w3)
    if system:
        sc = sc.with_(**system)
    table = _load(costs, cpu_hz)
    if check_exhaustive:  # refuse before any solving, so no work is thrown away
        size = exhaustive_size(sc, table)
        if size > EXHAUSTIVE_LIMIT:
            raise P3eftError(
                f"--check-exhaustive would enumerate {size:.0f} choices ({sc.n_users} users); "
                f"the limit is {EXHAUSTIVE_LIMIT} (e.g. 6 users with 6 candidates)"
            )
    if save_scenario is not None:
        sc.save(save_scenario)
    res = solve(sc, table, SolveOptions(continuous=continuous))
    out = {
        "command": _command_line(ctx),
        "scenario": sc.to_dict(),
        "result": res.to_json_dict(),
        "violations": check_allocation(sc, table, res),
    }
    t = res.terms
    for why in dict.fromkeys(x["reason"] for x in res.costs.get("excluded", [])):
        names = [x["candidate"] for x in res.costs["excluded"] if x["reason"] == why]
        typer.echo(f"note: excluded {', '.join(names)}: {why}")
    typer.echo(
        f"proposed: objective {res.fun:.6g}  total energy {t['energy_total_j']:.6g} J  "
        f"mean privacy {t['privacy_mean_bits']:.1f} bits  ({res.time_s:.3f} s, {res.message})"
    )
    if check_exhaustive:
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
    out: Path = typer.Option(
        Path("runs/wireless-figures"),
        "--out",
        help="Output folder (a run folder; the committed results live in docs/results/wireless).",
    ),
    costs: list[Path] = _COSTS,
    deadline_s: str = _DEADLINE,
    w3_grid: str = _W3_GRID,
    cpu_hz: float = _CPU_HZ,
    seed: int = _SEED,
    quick: bool = typer.Option(False, "--quick", help="Fewer sweep points (for tests)."),
    users: int = typer.Option(10, "--users", help="Users in the base scenario of the sweeps."),
) -> None:
    """Energy vs privacy weight / users / bandwidth / max power, and chosen privacy vs weight."""
    from p3eft.wireless.experiments import make_figures

    if users < 2:
        raise P3eftError(f"--users must be >= 2 for the figures, got {users}")
    check_writable_dir(out)  # before the sweeps run: a bad --out fails in a second, not after them
    dl = _deadlines(deadline_s)
    table = _load(costs, cpu_hz)
    cmd = _command_line(ctx)
    w3s = _w3_grid(w3_grid)
    for p in make_figures(out, table, cmd, seed=seed, quick=quick, users=users, deadline_s=dl, w3_values=w3s):
        typer.echo(f"wrote {p} (+ .json, .command.txt)")


@app.command()
def regenerate(
    ctx: typer.Context,
    out: Path = typer.Option(
        Path("runs/wireless-results"),
        "--out",
        help="Output folder; pass docs/results/wireless to rewrite the committed results.",
    ),
    costs: list[Path] = _COSTS,
    deadline_s: str = _DEADLINE,
    w3_grid: str = _W3_GRID,
    cpu_hz: float = _CPU_HZ,
    seed: int = _SEED,
    repeats: int = opt.option(3, "--repeats", help="Solve-time repeats of the benchmark (median)."),
) -> None:
    """Every published result in one go: the figures, the 6-user exhaustive check, the benchmark."""
    from p3eft.wireless import check_allocation, generate_scenario, solve, solve_exhaustive
    from p3eft.wireless.bench import benchmark_record, format_tables, run_benchmark
    from p3eft.wireless.experiments import make_figures

    check_writable_dir(out)  # before the sweeps and the benchmark run
    dl = _deadlines(deadline_s)
    w3s = _w3_grid(w3_grid)
    gen = {} if dl is None else {"deadline_s": dl}
    table = _load(costs, cpu_hz)
    command = _command_line(ctx)
    for p in make_figures(out, table, command, seed=seed, users=10, deadline_s=dl, w3_values=w3s):
        typer.echo(f"wrote {p} (+ .json, .command.txt)")
    sc = generate_scenario(6, seed=seed, **gen)
    res = solve(sc, table)
    ex = solve_exhaustive(sc, table)
    gap = (res.fun - ex.fun) / max(abs(ex.fun), 1e-12)
    record = {
        "command": command,
        "scenario": sc.to_dict(),
        "result": res.to_json_dict(),
        "violations": check_allocation(sc, table, res),
        "exhaustive": ex.to_json_dict(),
        "gap_to_exhaustive": gap,
    }
    (out / "run_users6_exhaustive.json").write_text(json.dumps(record, indent=2))
    typer.echo(
        f"exhaustive check (6 users): gap_to_exhaustive {gap:.3e}; wrote {out / 'run_users6_exhaustive.json'}"
    )
    rows = run_benchmark(table, [10, 100, 1000], seed=seed, repeats=repeats, deadline_s=dl)
    typer.echo(format_tables(rows, repeats))
    (out / "benchmark.json").write_text(json.dumps(benchmark_record(table, rows, command), indent=2))
    (out / "regenerate.command.txt").write_text(command + "\n")
    typer.echo(f"wrote {out / 'benchmark.json'}")
