"""Experiments of PrivTuner's wireless system: sweeps, figures (PNG) and their data (JSON).

Each figure compares the proposed allocation with every baseline as one system parameter varies. A
point where a method has no feasible allocation is recorded as ``null`` with the reason and marked on
the figure, never dropped silently. The right-hand panel shows each method's objective relative to the
proposed method's, so that small differences stay visible. Every figure states its fixed parameters
and is written with its JSON data and the command that made it.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.wireless.baselines import BASELINES, run_baseline
from p3eft.wireless.costs import CostSource
from p3eft.wireless.errors import InfeasibleScenarioError
from p3eft.wireless.optimizer import WirelessResult, solve
from p3eft.wireless.scenario import Scenario, generate_scenario

METHODS = ("proposed", *BASELINES)
LABELS = {
    "proposed": "proposed (B&B + continuous)",
    "equal_bandwidth": "equal bandwidth",
    "max_power": "maximum power",
    "smallest_n": "fixed smallest N",
    "largest_n": "fixed largest N",
    "random": "random N",
}


def run_method(method: str, scenario: Scenario, table: CostSource, seed: int = 0) -> WirelessResult:
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


#: The privacy weights of the w3 sweep (J per security bit), sized for the engine-file workload.
DEFAULT_W3 = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)


def default_sweeps(
    seed: int = 0,
    users: int = 10,
    quick: bool = False,
    deadline_s: tuple[float, float] | None = None,
    w3_values: Sequence[float] | None = None,
) -> list[Sweep]:
    """The four sweeps (our parameter ranges); B and F_s are those of the ``users``-user base scenario.
    ``deadline_s``: the range the generated deadlines are drawn from (default: the generator's);
    ``w3_values``: the privacy weights swept (default :data:`DEFAULT_W3`). A real PrivTuner step costs
    kJ per round, so the weight that moves the choice is larger than the engine workload's."""
    gen: dict[str, Any] = {} if deadline_s is None else {"deadline_s": deadline_s}
    base = generate_scenario(users, seed=seed, **gen)

    def sc(**kw: Any) -> Scenario:
        return base.with_(**kw)

    us = sorted({2, 4, 6, 8, users, 12, 16, 20, 30})
    w3s = list(DEFAULT_W3 if w3_values is None else w3_values)
    bws = [5e6, 10e6, 20e6, 40e6, 80e6]
    pms = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8]
    if quick:
        w3s, us, bws, pms = w3s[::3], [2, max(3, users)], bws[::2], [0.001, 0.01, 0.2]
    # one population for the user sweep: U users = the first U of it (nested curves), with the base
    # scenario's B and F_s held fixed, so the users compete for more and more of the same resources
    population = generate_scenario(max(us), seed=seed, **gen).with_(
        bandwidth_hz=base.bandwidth_hz, server_hz=base.server_hz
    )
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


def fixed_parameters(sweep: Sweep) -> dict[str, Any]:
    """What the figure holds fixed (taken from its first scenario; the swept one is marked)."""
    s = sweep.make(sweep.values[0])
    varied = {
        "energy_vs_privacy_weight": "w3",
        "energy_vs_users": "users",
        "energy_vs_bandwidth": "B",
        "energy_vs_max_power": "p_max",
    }[sweep.name]
    # the drawn deadlines' span; for the user sweep that of its largest population (the others are subsets)
    dl = (sweep.make(sweep.values[-1]) if varied == "users" else s).deadlines_s
    fixed = {
        "users": s.n_users,
        "B_MHz": s.bandwidth_hz / 1e6,
        "F_s_GHz": s.server_hz / 1e9,
        "p_max_W": s.p_max_w,
        "w3_J_per_bit": s.weights[2],
        "deadlines_h": f"{min(dl) / 3600:.2g}-{max(dl) / 3600:.2g}",
    }
    key = {"w3": "w3_J_per_bit", "users": "users", "B": "B_MHz", "p_max": "p_max_W"}[varied]
    fixed[key] = "varied"
    return fixed


def _fixed_text(fixed: dict[str, Any], costs_kind: str) -> str:
    names = {
        "users": "U",
        "B_MHz": "B",
        "F_s_GHz": "F_s",
        "p_max_W": "p_max",
        "w3_J_per_bit": "w3",
        "deadlines_h": "T_n",
    }
    units = {
        "B_MHz": " MHz",
        "F_s_GHz": " GHz",
        "p_max_W": " W",
        "w3_J_per_bit": " J/bit",
        "users": "",
        "deadlines_h": " h",
    }

    def cell(k: str, v: Any) -> str:
        if v == "varied":
            return f"{names[k]} = varied"
        return f"{names[k]} = {v if isinstance(v, str) else f'{v:g}'}{units[k]}"

    parts = [cell(k, v) for k, v in fixed.items()]
    return "fixed: " + ", ".join(parts) + f"; costs: {costs_kind}"


def run_sweep(sweep: Sweep, table: CostSource, seed: int = 0, progress: bool = True) -> dict[str, Any]:
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
            "candidates_chosen": [],
        }
    it = [(x, m) for x in sweep.values for m in METHODS]
    for x, m in tqdm(it, desc=sweep.name, disable=not progress, leave=False):
        rec = data["methods"][m]
        try:
            r = run_method(m, sweep.make(x), table, seed=seed)
        except InfeasibleScenarioError as err:
            for k in ("energy_total_j", "privacy_mean_bits", "objective", "time_s", "candidates_chosen"):
                rec[k].append(None)
            rec["infeasible"].append(str(err))
            continue
        rec["energy_total_j"].append(r.terms["energy_total_j"])
        rec["privacy_mean_bits"].append(r.terms["privacy_mean_bits"])
        rec["objective"].append(float(r.fun))
        rec["time_s"].append(float(r.time_s))
        rec["infeasible"].append(None)
        chosen = r.allocation["candidate"]
        rec["candidates_chosen"].append({c: chosen.count(c) for c in sorted(set(chosen))})
    prop = data["methods"]["proposed"]["objective"]
    for m in METHODS:
        rec = data["methods"][m]
        pairs = list(zip(rec["objective"], prop, strict=True))
        rec["objective_gap_j"] = [None if o is None or p is None else o - p for o, p in pairs]
        rec["objective_rel_pct"] = [
            None if o is None or p is None else 100.0 * (o - p) / max(abs(p), 1e-12) for o, p in pairs
        ]
    return data


def _draw(ax: Any, data: dict[str, Any], key: str, ylabel: str, xscale: str, logy: bool) -> None:
    """One panel: a line per method, gaps where infeasible, and each infeasible point marked with an X
    in the method's colour along the bottom of the panel."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    from matplotlib.transforms import blended_transform_factory

    markers = dict(zip(METHODS, "os^vDx", strict=True))
    strip = blended_transform_factory(ax.transData, ax.transAxes)
    any_infeasible = False
    for i, m in enumerate(METHODS):
        ys = np.array([np.nan if v is None else v for v in data["methods"][m][key]], dtype=float)
        (line,) = ax.plot(
            data["x"],
            ys,
            marker=markers[m],
            lw=2.4 if m == "proposed" else 1.3,
            ls="-" if m == "proposed" else "--",
            label=LABELS[m],
            zorder=3 if m == "proposed" else 2,
        )
        bad = [x for x, r in zip(data["x"], data["methods"][m]["infeasible"], strict=True) if r is not None]
        if bad:
            any_infeasible = True
            ax.plot(
                bad,
                [0.04 + 0.045 * i] * len(bad),
                "X",
                ms=9,
                color=line.get_color(),
                transform=strip,
                clip_on=False,
                zorder=4,
            )
    if any_infeasible:
        ax.plot([], [], "X", color="0.3", ms=9, label="infeasible (no allocation meets every constraint)")
    ax.set_xscale(xscale)
    if xscale == "log":  # label the swept values themselves, no overlapping minor labels
        ax.set_xticks(data["x"])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=45 if len(data["x"]) > 6 else 0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(data["xlabel"])
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if any_infeasible:  # keep the bottom of the panel free for the markers
        lo, hi = ax.get_ylim()
        if logy:
            ax.set_ylim(lo / (hi / lo) ** 0.5, hi)
        elif ax.get_yscale() == "symlog":  # gaps are >= 0: the negative decade holds the markers
            ax.set_ylim(-1.0, hi)
        else:
            ax.set_ylim(lo - 0.4 * (hi - lo), hi)


def _plot(data: dict[str, Any], key: str, ylabel: str, title: str, path: Path, xscale: str) -> None:
    """Energy figures get a second panel: each method's objective relative to the proposed method's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if key == "energy_total_j":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13.0, 5.8), dpi=110)
        _draw(ax, data, key, ylabel, xscale, logy=True)
        ax2.set_yscale("symlog", linthresh=0.1)
        _draw(
            ax2, data, "objective_gap_j", "J_method - J_proposed (J, symmetric log scale)", xscale, logy=False
        )
        ax.set_title("total energy (log scale)")
        ax2.set_title("objective gap to the proposed method (0 = as good, higher = worse)")
        ncol, bottom = 4, 0.13
    else:
        fig, ax = plt.subplots(figsize=(7.6, 5.8), dpi=120)
        _draw(ax, data, key, ylabel, xscale, logy=False)
        ncol, bottom = 2, 0.2
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    width = 150 if key == "energy_total_j" else 95  # characters per line of the figure's header
    lines = [
        title,
        *textwrap.wrap(data["fixed_text"], width),
        *textwrap.wrap(data.get("excluded_note") or "", width),
    ]
    fig.suptitle("\n".join(lines), fontsize=10)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def make_figures(
    out: str | Path,
    table: CostSource,
    command: str,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    users: int = 10,
    deadline_s: tuple[float, float] | None = None,
    w3_values: Sequence[float] | None = None,
) -> list[Path]:
    """Run every sweep; write PNG + JSON + the command beside each figure; return the PNG paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    sweeps = default_sweeps(seed=seed, users=users, quick=quick, deadline_s=deadline_s, w3_values=w3_values)
    for sw in sweeps:
        data = run_sweep(sw, table, seed=seed, progress=progress)
        first = sw.make(sw.values[0])
        resolved = table.for_scenario(first)
        fixed = fixed_parameters(sw)
        kind = "PrivTuner step costs" if resolved.kind == "privtuner_step" else "engine file, CPU times"
        data.update(
            {
                "command": command,
                "seed": seed,
                "fixed": fixed,
                "fixed_text": _fixed_text(fixed, kind),
                "excluded_note": resolved.exclusion_note(),
                "costs": resolved.summary(),
                "scenario_base": first.to_dict(),
                "note": "system model: our reconstruction in the PrivTuner paper's frame (docs/wireless.md)",
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
            _plot(data, key, ylabel, title, png, sw.xscale)
            (out / f"{name}.json").write_text(json.dumps({**data, "plotted": key}, indent=1))
            (out / f"{name}.command.txt").write_text(command + "\n")
            written.append(png)
    return written
