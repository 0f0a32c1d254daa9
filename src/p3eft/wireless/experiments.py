"""Experiments of PrivTuner's wireless system: sweeps, figures (PNG) and their data (JSON).

Each figure compares the proposed allocation with every baseline as one system parameter varies. A
point where a method has no feasible allocation is recorded as ``null`` with the reason, never dropped
silently. Every figure is written with its JSON data and the command that made it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.wireless.baselines import BASELINES, run_baseline
from p3eft.wireless.costs import FheCostTable
from p3eft.wireless.errors import InfeasibleScenarioError
from p3eft.wireless.optimizer import WirelessResult, solve
from p3eft.wireless.scenario import Scenario, generate_scenario

METHODS = ("proposed", *BASELINES)
LABELS = {
    "proposed": "proposed (B&B + continuous)",
    "equal_bandwidth": "equal bandwidth",
    "max_power": "maximum power",
    "smallest_n": "fixed smallest N (8192)",
    "largest_n": "fixed largest N (32768)",
    "random": "random N",
}


def run_method(method: str, scenario: Scenario, table: FheCostTable, seed: int = 0) -> WirelessResult:
    """The proposed method or one baseline."""
    return (
        solve(scenario, table) if method == "proposed" else run_baseline(method, scenario, table, seed=seed)
    )


@dataclass
class Sweep:
    """One figure: a parameter swept, a scenario factory, what to plot."""

    name: str
    xlabel: str
    values: Sequence[float]
    make: Callable[[float], Scenario]
    xscale: str = "linear"


def default_sweeps(seed: int = 0, users: int = 10, quick: bool = False) -> list[Sweep]:
    """The four sweeps of the issue (our parameter ranges)."""
    base = {"n_users": users, "seed": seed}
    us = sorted({2, 4, 6, 8, users, 12, 16, 20, 30})

    def sc(**kw: Any) -> Scenario:
        args = dict(base)
        args.update(kw)
        n = args.pop("n_users")
        return generate_scenario(n, **args)

    w3s = [0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02]
    bws = [5e6, 10e6, 20e6, 40e6, 80e6]
    pms = [0.02, 0.05, 0.1, 0.2, 0.4, 0.8]
    if quick:
        w3s, us, bws, pms = w3s[::3], [2, max(3, users)], bws[::2], pms[::2]
    # one population for the user sweep: U users = the first U of it, so curves are nested
    population = generate_scenario(max(us), seed=seed)
    return [
        Sweep(
            "energy_vs_privacy_weight",
            "privacy weight w3 (J per security bit)",
            w3s,
            lambda w: sc(weights=(1.0, 1.0, w)),
        ),
        Sweep("energy_vs_users", "number of users U", us, lambda u: population.subset(list(range(int(u))))),
        Sweep(
            "energy_vs_bandwidth",
            "total bandwidth B (MHz)",
            [b / 1e6 for b in bws],
            lambda b: sc(bandwidth_hz=b * 1e6),
            "log",
        ),
        Sweep("energy_vs_max_power", "maximum transmit power p_max (W)", pms, lambda p: sc(p_max_w=p), "log"),
    ]


def run_sweep(sweep: Sweep, table: FheCostTable, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Every method at every value; energies in J, privacy in bits, None where infeasible."""
    from tqdm import tqdm

    data: dict[str, Any] = {"x": list(sweep.values), "xlabel": sweep.xlabel, "methods": {}}
    for m in METHODS:
        data["methods"][m] = {
            "energy_total_j": [],
            "privacy_mean_bits": [],
            "objective": [],
            "time_s": [],
            "infeasible": [],
        }
    it = [(x, m) for x in sweep.values for m in METHODS]
    for x, m in tqdm(it, desc=sweep.name, disable=not progress, leave=False):
        rec = data["methods"][m]
        try:
            r = run_method(m, sweep.make(x), table, seed=seed)
        except InfeasibleScenarioError as err:
            for k in ("energy_total_j", "privacy_mean_bits", "objective", "time_s"):
                rec[k].append(None)
            rec["infeasible"].append(str(err))
            continue
        rec["energy_total_j"].append(r.terms["energy_total_j"])
        rec["privacy_mean_bits"].append(r.terms["privacy_mean_bits"])
        rec["objective"].append(float(r.fun))
        rec["time_s"].append(float(r.time_s))
        rec["infeasible"].append(None)
    return data


def _draw(ax: Any, data: dict[str, Any], key: str, ylabel: str, xscale: str, logy: bool) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    markers = dict(zip(METHODS, "os^vDx", strict=True))
    for m in METHODS:
        ys = np.array([np.nan if v is None else v for v in data["methods"][m][key]], dtype=float)
        ax.plot(
            data["x"],
            ys,
            marker=markers[m],
            lw=2.4 if m == "proposed" else 1.3,
            ls="-" if m == "proposed" else "--",
            label=LABELS[m],
            zorder=3 if m == "proposed" else 2,
        )
    ax.set_xscale(xscale)
    if xscale == "log":  # label the swept values themselves, no overlapping minor labels
        ax.set_xticks(data["x"])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(data["xlabel"])
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _plot(data: dict[str, Any], key: str, ylabel: str, title: str, path: Path, xscale: str) -> None:
    """Energy figures get a second panel with the objective actually minimised (energy - w3 privacy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if key == "energy_total_j":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.8), dpi=110)
        _draw(ax, data, key, ylabel, xscale, logy=True)
        _draw(ax2, data, "objective", "objective w1 E_dev + w2 E_srv - w3 sum P (J)", xscale, logy=False)
        ax.set_title("total energy (log scale)")
        ax2.set_title("objective minimised (lower is better)")
        ax.legend(fontsize=8, loc="best")
        fig.suptitle(title)
    else:
        fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=120)
        _draw(ax, data, key, ylabel, xscale, logy=False)
        ax.set_title(title)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def make_figures(
    out: str | Path,
    table: FheCostTable,
    command: str,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    users: int = 10,
) -> list[Path]:
    """Run every sweep; write PNG + JSON + the command beside each figure; return the PNG paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sw in default_sweeps(seed=seed, users=users, quick=quick):
        data = run_sweep(sw, table, seed=seed, progress=progress)
        data.update(
            {
                "command": command,
                "seed": seed,
                "costs": table.summary(),
                "scenario_base": sw.make(sw.values[0]).to_dict() if sw.name != "energy_vs_users" else None,
                "note": "system model: our reconstruction in the PrivTuner paper's frame (DESIGN.md 2.2)",
            }
        )
        figs = [(sw.name, "energy_total_j", "total energy, device + server (J)")]
        if sw.name == "energy_vs_privacy_weight":
            figs.append(
                ("privacy_vs_privacy_weight", "privacy_mean_bits", "mean chosen privacy level P(N) (bits)")
            )
        for name, key, ylabel in figs:
            png = out / f"{name}.png"
            head = ylabel.split(",")[0].split(" (")[0]
            title = f"{head[0].upper() + head[1:]} vs {sw.xlabel.split(' (')[0]}"
            if sw.name != "energy_vs_users":
                title += f" ({users} users)"
            _plot(data, key, ylabel, title, png, sw.xscale)
            (out / f"{name}.json").write_text(json.dumps({**data, "plotted": key}, indent=1))
            (out / f"{name}.command.txt").write_text(command + "\n")
            written.append(png)
    return written
