"""The approximate twin against exact PyTorch on a real encoder, per LayerNorm (plaintext, no encryption).

Usage: ``python benchmarks/privtuner_layernorm.py --model minilm-l6 --layers 2 --max-len 16
[--calib 16] [--examples 8] [--held-out 200] [--json FILE]``. Calibrates on the last ``--calib`` SST-2 training
sentences (as ``p3eft privtuner verify`` does), then on the first ``--examples`` ones prints, per
LayerNorm site: the variance spread across rows (row 0, [CLS], and the others), the calibrated range
of the inverse square root, its first-guess degree, Newton steps and depth, the largest relative
error of the twin's inverse square root against 1/sqrt of the same input, and the largest relative
drift of that input from the exact model's (what the upstream approximations add); the logits of
the twin against the transformers model cut to the same layers, the pooled [CLS] features of the twin
against the exact twin's, and per GELU site and range class (ours: one polynomial per class of
(position group, FFN channel) slots) the class's input range, degree, slots, fit error on its range
and the largest error of the twin's GELU against the exact GELU of the same input on the examples.
``--gelu-core-factor F`` changes the GELU classes' core (ablation). ``--held-out N`` also runs the approximate twin (forward) on the N training sentences after the
examples and counts those with an input outside its calibrated range, per site (robustness of the
calibrated ranges on sentences calibration did not see).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track

from p3eft.fhe.costs import provenance
from p3eft.privtuner.approx import SlotFn, gelu_exact
from p3eft.privtuner.backend import PlainBackend
from p3eft.privtuner.calibration import CORE_FACTOR, calibrate
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.local import examples_from_sentences
from p3eft.privtuner.model import from_hf, load_hf_model
from p3eft.privtuner.twin import PrivTunerModel, Twin
from p3eft.privtuner.wiring import REFRESH_BOUNDS


class _Capture(PlainBackend):
    """A plain backend that keeps every LayerNorm variance (input) and inverse square root (output)."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.gelu_err: dict[str, np.ndarray] = {}  # site -> largest |error| per range class

    def fn(self, site: str, x: np.ndarray, part: int | None = None) -> np.ndarray:
        y = super().fn(site, x, part)
        f = self.fns.get(site)
        if isinstance(f, SlotFn) and part is not None:
            sig, off = f.scales()[part], f.offsets()[part]
            err = np.abs(y - gelu_exact((x + off) / sig))
            cls = f.slot_class[part]
            worst = self.gelu_err.setdefault(site, np.zeros(len(f.classes)))
            np.maximum.at(worst, cls.ravel(), err.ravel())
        if site.endswith("inv_sqrt"):
            self.seen[site] = (x[:, 0].copy(), y[:, 0].copy())  # every slot of a row holds its value
        elif site == "pool.tanh":
            self.seen[site] = (x[0].copy(), y[0].copy())  # the pooled [CLS] features
        return y


def _run(model: PrivTunerModel, twin: Twin, ex: Any, params: dict) -> tuple[np.ndarray, dict, dict]:
    bk = _Capture(model.spec, twin.fns)
    x_rot, km = model.example_inputs(ex)
    x = model.graph.forward_frozen(bk, x_rot, km)
    logits = model.graph.forward_adapted(bk, x, km, params, None)
    twin.flags.extend(bk.flags)  # out-of-range inputs on these examples (none expected)
    return logits, bk.seen, bk.gelu_err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=16)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--held-out", type=int, default=0)
    ap.add_argument(
        "--gelu-core-factor",
        type=float,
        default=CORE_FACTOR,
        help="GELU range classes contain [-core, core], core = this x the median channel bound (ablation)",
    )
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/sst2/train.tsv"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    kw = {"refresh_bound": REFRESH_BOUNDS[args.model]} if args.model in REFRESH_BOUNDS else {}
    cfg = PrivTunerConfig(model=args.model, layers=args.layers, max_len=args.max_len, **kw)
    hf, tok, random, source = load_hf_model(args.model)
    model = PrivTunerModel(cfg, from_hf(hf, args.layers, args.model, random, source))
    with args.data.open() as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    calib = examples_from_sentences(
        tok, model.spec, [r[0] for r in rows[-args.calib :]], [int(r[1]) for r in rows[-args.calib :]]
    )
    test = examples_from_sentences(
        tok, model.spec, [r[0] for r in rows[: args.examples]], [int(r[1]) for r in rows[: args.examples]]
    )
    params = model.init_params()  # LoRA B = 0: the model is the pretrained one
    t0 = time.perf_counter()
    report = calibrate(model, calib, params, core_factor=args.gelu_core_factor)
    calib_s = time.perf_counter() - t0
    approx, exact = Twin(model, report.fns), Twin(model, report.fns, exact=True)

    hf.bert.encoder.layer = hf.bert.encoder.layer[: args.layers]
    hf.eval()
    sites: dict[str, dict[str, Any]] = {}
    logit_twin_vs_torch = logit_exact_vs_torch = pooled_diff = logit_scale = 0.0
    gelu_seen: dict[str, np.ndarray] = {}
    for ex in test:
        za, seen_a, gerr = _run(model, approx, ex, params)
        ze, seen_e, _ = _run(model, exact, ex, params)
        for site, e in gerr.items():
            gelu_seen[site] = np.maximum(gelu_seen.get(site, 0.0), e)
        ids = torch.tensor(ex.ids[None, : model.spec.max_len])
        mask = (torch.arange(ids.shape[1]) < ex.length).long()[None]
        with torch.no_grad():
            zt = hf(input_ids=ids, attention_mask=mask).logits[0].double().numpy()
        logit_twin_vs_torch = max(logit_twin_vs_torch, float(np.max(np.abs(za - zt))))
        logit_scale = max(logit_scale, float(np.max(np.abs(zt))))
        logit_exact_vs_torch = max(logit_exact_vs_torch, float(np.max(np.abs(ze - zt))))
        pooled_diff = max(pooled_diff, float(np.max(np.abs(seen_a["pool.tanh"][1] - seen_e["pool.tanh"][1]))))
        for site, (var_a, ya) in seen_a.items():
            if site == "pool.tanh":
                continue
            var_e, ye = seen_e[site]
            sigma = np.broadcast_to(np.asarray(report.fns.in_scale(site), dtype=np.float64), var_e.shape)
            raw = var_e / sigma  # the unscaled variance + eps of each row
            s = sites.setdefault(
                site, {"row0": [np.inf, 0.0], "rows1+": [np.inf, 0.0], "rel_err": 0.0, "input_drift": 0.0}
            )
            s["row0"] = [min(s["row0"][0], float(raw[0])), max(s["row0"][1], float(raw[0]))]
            s["rows1+"] = [
                min(s["rows1+"][0], float(raw[1:].min())),
                max(s["rows1+"][1], float(raw[1:].max())),
            ]
            # the approximation's own error (on the input the twin gives it) and how far that input
            # drifted from the exact model's (the upstream approximations: softmax, GELU, ...)
            s["rel_err"] = max(s["rel_err"], float(np.max(np.abs(ya * np.sqrt(var_a) - 1))))
            s["input_drift"] = max(s["input_drift"], float(np.max(np.abs(var_a / var_e - 1))))
    print(f"{args.model} layers={args.layers} max_len={args.max_len} calibration {calib_s:.1f} s")
    print(f"{'site':18s} {'var row0':>20s} {'var rows1+':>20s} {'range':>16s} deg newton depth rel.err drift")
    for site, s in sites.items():
        fn = report.fns[site]
        a = fn.approximation
        assert a is not None
        s.update({"range": [fn.lo, fn.hi], "degree": a.degree, "depth": a.depth, "note": a.note})
        print(
            f"{site:18s} [{s['row0'][0]:8.3g}, {s['row0'][1]:8.3g}] [{s['rows1+'][0]:8.3g},"
            f" {s['rows1+'][1]:8.3g}] [{fn.lo:5.2f}, {fn.hi:6.2f}] {a.degree:3d} {a.note.split()[0]:>6s}"
            f" {a.depth:5d} {s['rel_err']:.1e} {s['input_drift']:.1e}"
        )
    print(
        f"logits (|torch| up to {logit_scale:.2e}): twin vs torch {logit_twin_vs_torch:.2e}, exact twin vs"
        f" torch {logit_exact_vs_torch:.2e}; pooled [CLS] features (tanh, in [-1, 1]): twin vs exact"
        f" {pooled_diff:.2e}"
    )
    gelu = {k: v.describe() for k, v in report.fns.items() if k.endswith(".gelu") or k.endswith(".gelu_grad")}
    for k, d in gelu.items():
        print(f"{k}: degree {d['degree']}, depth {d['depth']}, {len(d['classes'])} range classes")
        for i, c in enumerate(d["classes"]):
            lo, hi = c["input_range"]
            c["max_abs_error_seen"] = float(gelu_seen[k][i]) if k in gelu_seen else None
            seen = (
                "" if c["max_abs_error_seen"] is None else f", on the examples {c['max_abs_error_seen']:.1e}"
            )
            print(
                f"  class {i:2d} [{lo:6.1f}, {hi:6.1f}] {c['slots']:6d} slots, degree {c['degree']:2d},"
                f" max abs error on the range {c['max_abs_error_on_range']:.1e}{seen}"
            )
    print(f"range flags: {len(approx.flags)}")
    held: dict[str, Any] = {}
    if args.held_out:
        sel = rows[args.examples : args.examples + args.held_out]
        more = examples_from_sentences(tok, model.spec, [r[0] for r in sel], [int(r[1]) for r in sel])
        per_site: dict[str, int] = {}
        flagged = 0
        for ex in track(more, description="held-out sentences"):
            t = Twin(model, report.fns)
            t.logits(ex, params)
            flagged += bool(t.flags)
            for site in {f.site for f in t.flags}:
                per_site[site] = per_site.get(site, 0) + 1
        held = {"sentences": len(more), "with_range_flags": flagged, "per_site": per_site}
        print(f"held-out sentences with a range flag: {flagged} of {len(more)} {per_site}")
    out = {
        "model": {"name": args.model, "layers": args.layers, "max_len": args.max_len, "random": random},
        "calibration_examples": args.calib,
        "gelu_core_factor": args.gelu_core_factor,
        "examples": args.examples,
        "calibration_s": calib_s,
        "sites": sites,
        "logit_max_abs_diff_twin_vs_torch": logit_twin_vs_torch,
        "logit_max_abs_diff_exact_twin_vs_torch": logit_exact_vs_torch,
        "logit_max_abs_torch": logit_scale,
        "pooled_max_abs_diff_twin_vs_exact": pooled_diff,
        "gelu_sites": gelu,
        "range_flags": [f.__dict__ for f in approx.flags],
        "held_out": held,
        "provenance": provenance(" ".join(["benchmarks/privtuner_layernorm.py", *sys.argv[1:]]), 1),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
