"""Leakage against enclave cost: the frontier of ObfuscaTune's configurations (ours).

The attack issue sets goals for the default (token recovery within 5 points of the unigram prior,
weight rho <= 0.05, no loss-span leak, the enclave's arithmetic <= 10% of the accelerator's for
GPT2-XL) and asks, where no construction reaches all of them, for the frontier between leakage and
enclave cost, with the default at its best point. This module builds that frontier from what the
suite measured (:mod:`p3eft.attacks.suite` JSON files) and what the split's accounting prices.

Each point is one ``(mode, masks, defence)``. Its axes:

* **leakage**: per attack, how far the attacker got beyond its baseline (token and bag recall above
  the unigram prior, the loss span above the majority class, later tokens read through the subspace
  attack above the prior, weight rho above 0), clipped at 0, and 1 where a static input mask was
  recovered from known plaintext (every later row of that boundary reads); the point's leakage is the
  worst of them.
  A point whose attacks were not all run is still *classified* if one that ran exceeds the goals'
  margin; the frontier is drawn over the classified points, the others are listed as unknown.
* **enclave cost** per workload: GPT2-XL's enclave arithmetic against the accelerator's useful work
  (:func:`p3eft.obfuscatune.accounting.model_accounting`) for calls of ``rows_per_call`` rows with
  the LM head at ``head_share`` of the positions. Span filling's price depends on both.
* **mask randomness**, which no attack in the suite prices: the continuous degrees of freedom of one
  mask of GPT2-XL's width, and whether the mask's support is dense (every output coordinate mixes
  every input coordinate). Structured masks give up both for cost, and the structure attack is what
  exploits them once any dense estimate of a mask exists (no mixing: rho up to 0.99).

A point is on the frontier if no other classified point is at least as good on every axis (leakage
class, cost at the reference workload, randomness, dense support) and better on one. Leakage enters
as a class, within the goals' 5-point margin or not, since differences of a few tenths of a point
between two runs' secret draws are chance.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p3eft.errors import P3eftError

LEAK_MARGIN = 0.05  # the margin (tokens: prior + 5 points; rho <= 0.05)
COST_GOAL = 0.10  # the goal: enclave arithmetic <= 10% of the accelerator's for GPT2-XL
REFERENCE_MODEL = "gpt2-xl"
_LEAKS = ("tokens", "bag", "weights", "loss_span", "static_mask", "tokens_known_plaintext")


@dataclass(frozen=True)
class Workload:
    """A shape of traffic to price: rows per call and the share of positions that get logits."""

    name: str
    rows_per_call: int
    head_share: float = 1.0

    def __post_init__(self) -> None:
        if self.rows_per_call < 1 or not 0 < self.head_share <= 1:
            raise P3eftError(f"workload {self.name}: rows >= 1 and head share in (0, 1] needed")


@dataclass
class FrontierPoint:
    mode: str
    masks: str
    defence: str
    leakage: dict[str, float | None]  # per attack: excess over its baseline, clipped at 0 (None: not run)
    cost: dict[str, float]  # workload name -> enclave arithmetic / accelerator's useful work
    continuous_dof: int  # of one mask of the reference model's width
    dense_support: bool
    sources: list[str] = field(default_factory=list)
    on_frontier: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.mode, self.masks, self.defence)

    @property
    def complete(self) -> bool:
        return all(self.leakage.get(k) is not None for k in _LEAKS)

    @property
    def worst_leak(self) -> float | None:
        vals = [v for v in self.leakage.values() if v is not None]
        return max(vals) if vals else None

    @property
    def leak_ok(self) -> bool | None:
        """Within the goals' margin on every attack (True), over it on one (False), or unknown: some
        attack was not run and none of those run exceeded the margin (None)."""
        worst = self.worst_leak
        if worst is not None and worst > LEAK_MARGIN:
            return False
        return True if self.complete and worst is not None else None

    @property
    def classified(self) -> bool:
        return self.leak_ok is not None

    def label(self) -> str:
        return f"{self.mode}/{self.masks}/{self.defence}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(complete=self.complete, worst_leak=self.worst_leak, leak_ok=self.leak_ok, label=self.label())
        return d


def leakage_of(h: dict[str, Any]) -> dict[str, float | None]:
    """Per attack, what the attacker got beyond its baseline (clipped at 0), from one suite headline."""

    def excess(value: str, baseline: str) -> float | None:
        if h.get(value) is None or h.get(baseline) is None:
            return None
        return max(0.0, float(h[value]) - float(h[baseline]))

    # a static input mask recovered from known plaintext (rows in order or matched over calls, or the
    # weight attack's fit) reads every later row of that boundary: 1; run and not recovered: 0
    ran = [k for k in ("static_rows_available", "known_rows_available") if h.get(k) is not None]
    recovered = any(
        h.get(k) is not None for k in ("static_rows_needed", "static_calls_needed", "known_rows_needed")
    )
    static = None if not ran else (1.0 if recovered else 0.0)
    known: float | None
    if h.get("subspace_informative_calls") == 0:
        known = 0.0  # no call gave an equation: nothing to read later calls with
    else:
        known = excess("subspace_bag_recall", "subspace_bag_baseline")
    return {
        "tokens": excess("token_recovery", "unigram_baseline"),
        "bag": excess("bag_recall", "bag_unigram_baseline"),
        "weights": None if h.get("weight_rho") is None else max(0.0, float(h["weight_rho"])),
        "loss_span": excess("loss_span_accuracy", "loss_span_baseline"),
        "static_mask": static,
        "tokens_known_plaintext": known,
    }


def merge_headlines(results: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str, str], dict]:
    """One headline per configuration from several suite results (``(source, result)``): a later
    file's measured values fill in or replace an earlier one's, key by key, and the sources are kept."""
    merged: dict[tuple[str, str, str], dict] = {}
    for source, result in results:
        if not isinstance(result, dict) or not isinstance(result.get("results"), list):
            raise P3eftError(f"{source}: not an attack-suite result (no 'results')")
        for rec in result["results"]:
            h = rec.get("headline") if isinstance(rec, dict) else None
            if not isinstance(h, dict) or not all(
                isinstance(h.get(k), str) for k in ("mode", "masks", "defence")
            ):
                raise P3eftError(f"{source}: a result without a headline naming its mode, masks and defence")
            key = (h["mode"], h["masks"], h["defence"])
            cur = merged.setdefault(key, {"_sources": []})
            cur.update({k: v for k, v in h.items() if v is not None})
            cur["_sources"].append(source)
    return merged


@functools.cache
def _reference_config() -> Any:
    """The reference model's config (built once: every point is priced on it)."""
    from p3eft.models import loading

    return loading.resolve_spec(REFERENCE_MODEL).hf_config()


def price(mode: str, masks: str, defence: str, workloads: list[Workload]) -> dict[str, float]:
    """Enclave arithmetic against the accelerator's useful work, per workload, on the reference model."""
    from p3eft.obfuscatune.accounting import model_accounting

    cfg = _reference_config()
    return {
        w.name: model_accounting(
            cfg,
            mode=mode,
            masks=masks,
            defence=defence,
            rows_per_call=w.rows_per_call,
            head_share=w.head_share,
        )["arithmetic"]["enclave_vs_useful_accelerator"]
        for w in workloads
    }


def randomness(masks: str) -> tuple[int, bool]:
    """(continuous degrees of freedom of one mask of the reference model's width, dense support)."""
    from p3eft.obfuscatune.masks import parse_masks

    width = int(_reference_config().n_embd)
    fam = parse_masks(masks)
    return int(fam.with_chunk(width).randomness(width)["continuous_dof"]), fam.kind != "blockperm"


def dominates(a: FrontierPoint, b: FrontierPoint, reference: str) -> bool:
    """``a`` is at least as good as ``b`` on every axis and better on one (both classified)."""
    ge = (
        a.leak_ok >= b.leak_ok,
        a.cost[reference] <= b.cost[reference],
        a.continuous_dof >= b.continuous_dof,
        a.dense_support >= b.dense_support,
    )
    gt = (
        a.leak_ok > b.leak_ok,
        a.cost[reference] < b.cost[reference],
        a.continuous_dof > b.continuous_dof,
        a.dense_support > b.dense_support,
    )
    return all(ge) and any(gt)


def mark_frontier(points: list[FrontierPoint], reference: str) -> list[FrontierPoint]:
    """Set ``on_frontier`` on the classified points no other classified point dominates."""
    known = [p for p in points if p.classified]
    for p in points:
        p.on_frontier = p.classified and not any(dominates(q, p, reference) for q in known if q is not p)
    return points


def build_frontier(
    results: list[tuple[str, dict[str, Any]]], workloads: list[Workload], *, mode: str | None = "strict"
) -> list[FrontierPoint]:
    """Every configuration the results measured (``mode`` only, if given), priced and marked; the
    first workload is the reference for the frontier."""
    if not workloads:
        raise P3eftError("at least one workload is needed")
    if len({w.name for w in workloads}) != len(workloads):
        raise P3eftError("workload names must differ (each names a cost column)")
    points = []
    for key, h in merge_headlines(results).items():
        if mode is not None and key[0] != mode:
            continue
        dof, dense = randomness(key[1])
        try:
            leakage = leakage_of(h)
        except (TypeError, ValueError) as e:
            raise P3eftError(f"{'/'.join(key)}: a figure is not a number ({e})") from None
        points.append(
            FrontierPoint(
                *key,
                leakage=leakage,
                cost=price(*key, workloads),
                continuous_dof=dof,
                dense_support=dense,
                sources=list(dict.fromkeys(h["_sources"])),
            )
        )
    if not points:
        raise P3eftError(f"no configuration in mode {mode!r} in the results")
    return mark_frontier(points, workloads[0].name)


def load_results(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for p in paths:
        try:
            out.append((str(p), json.loads(Path(p).read_text())))
        except (OSError, ValueError) as e:
            raise P3eftError(f"cannot read attack results {p}: {e}") from None
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def markdown(points: list[FrontierPoint], workloads: list[Workload], default: tuple[str, str, str]) -> str:
    """The frontier table: one row per configuration, frontier points first, then the others."""
    ref = workloads[0].name
    order = sorted(points, key=lambda p: (not p.on_frontier, not p.classified, p.cost[ref]))
    lines = [
        f"# Leakage against enclave cost ({REFERENCE_MODEL} prices, attacks measured on the suite's model)",
        "",
        "Leakage: per attack, what the attacker got beyond its baseline (tokens and bag recall above the"
        " unigram prior, weight rho, the loss span above the majority class, later tokens read by the"
        " subspace attack above the prior), clipped at 0, and 100% where a static input mask was recovered"
        f" from known plaintext; the worst of them (goal <= {LEAK_MARGIN:.0%})."
        " Cost: the enclave's arithmetic against the accelerator's useful work per workload (rows per call,"
        f" share of positions with logits; goal <= {COST_GOAL:.0%}). Randomness: continuous degrees of"
        f" freedom of one mask of {REFERENCE_MODEL}'s width, and whether every output coordinate mixes every"
        " input coordinate (dense support); no attack of the suite prices it. Frontier: no other measured"
        f" configuration is as good on every axis (leakage within the goal or not, cost at {ref},"
        " randomness, dense support) and better on one.",
        "",
        "| configuration | frontier | worst leak (attack) | "
        + " | ".join(f"cost {w.name} ({w.rows_per_call} rows, head {w.head_share:.3g})" for w in workloads)
        + " | continuous dof | dense support |",
        "|---|---|---|" + "---|" * len(workloads) + "---|---|",
    ]
    for p in order:
        name = p.label() + (" **(default)**" if p.key == default else "")
        missing = [k for k in _LEAKS if p.leakage.get(k) is None]
        worst_attack = max(_LEAKS, key=lambda k: p.leakage.get(k) or 0.0)
        leak = f"{_pct(p.worst_leak)}" + (f" ({worst_attack})" if p.worst_leak else "")
        if missing:
            leak += f"; not run: {', '.join(missing)}" + ("" if p.classified else " (unknown)")
        costs = " | ".join(
            ("**" if p.cost[w.name] <= COST_GOAL else "")
            + _pct(p.cost[w.name])
            + ("**" if p.cost[w.name] <= COST_GOAL else "")
            for w in workloads
        )
        lines.append(
            f"| {name} | {'yes' if p.on_frontier else ('no' if p.classified else '–')} | {leak} | {costs}"
            f" | {p.continuous_dof} | {'yes' if p.dense_support else 'no'} |"
        )
    lines += [
        "",
        "Bold: within the 10% cost goal. Sources: "
        + "; ".join(sorted({s for p in points for s in p.sources}))
        + ".",
    ]
    return "\n".join(lines) + "\n"


def plot(
    points: list[FrontierPoint], workloads: list[Workload], default: tuple[str, str, str], path: Path
) -> None:
    """Worst leak against cost at the reference workload, classified points only, numbered (the key
    below the panels names them); frontier points filled, squares for sparse support, the default
    ringed red, the cost goal and the leakage margin drawn. Left: every point (log cost); right: the
    points near the cost goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = workloads[0]
    pts = sorted((p for p in points if p.classified), key=lambda p: (p.cost[ref.name], p.worst_leak or 0.0))
    near = [p for p in pts if p.cost[ref.name] <= 2 * COST_GOAL]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.8))
    for ax, subset, log in ((axes[0], pts, True), (axes[1], near, False)):
        for p in subset:
            n = pts.index(p) + 1
            x, y = 100 * p.cost[ref.name], 100 * (p.worst_leak or 0.0)
            ax.scatter(
                x,
                y,
                s=60,
                marker="o" if p.dense_support else "s",
                facecolors="C0" if p.on_frontier else "none",
                edgecolors="C0",
            )
            if p.key == default:
                ax.scatter(x, y, s=280, facecolors="none", edgecolors="C3", linewidths=1.5)
            ax.annotate(str(n), (x, y), fontsize=8, xytext=(4, 4 + 9 * (n % 3)), textcoords="offset points")
        ax.axvline(100 * COST_GOAL, color="grey", linestyle="--", linewidth=1)
        ax.axhline(100 * LEAK_MARGIN, color="grey", linestyle=":", linewidth=1)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(f"enclave / accelerator's useful work, {REFERENCE_MODEL}, % ({ref.name})")
        ax.set_ylabel("worst leak beyond baseline, points")
    axes[0].set_title("every classified configuration", fontsize=9)
    axes[1].set_title(f"near the {COST_GOAL:.0%} goal", fontsize=9)
    key = [
        f"{i + 1}: {p.masks} {p.defence} ({p.continuous_dof} dof)"
        + (" [default]" if p.key == default else "")
        for i, p in enumerate(pts)
    ]
    half = (len(key) + 1) // 2
    fig.text(0.06, 0.01, "\n".join(key[:half]), fontsize=7, va="bottom", family="monospace")
    fig.text(0.53, 0.01, "\n".join(key[half:]), fontsize=7, va="bottom", family="monospace")
    fig.suptitle(
        "ObfuscaTune: leakage against enclave cost (filled: on the frontier; square: sparse support;"
        " red ring: default)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.03 + 0.018 * half, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(
    points: list[FrontierPoint],
    workloads: list[Workload],
    default: tuple[str, str, str],
    json_path: Path | None,
    report_dir: Path | None,
) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(
            json.dumps(
                {
                    "reference_model": REFERENCE_MODEL,
                    "workloads": [asdict(w) for w in workloads],
                    "default": "/".join(default),
                    "goals": {"leak_margin": LEAK_MARGIN, "cost": COST_GOAL},
                    "points": [p.to_json() for p in points],
                },
                indent=2,
            )
        )
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "frontier.md").write_text(markdown(points, workloads, default))
        plot(points, workloads, default, report_dir / "frontier.png")
