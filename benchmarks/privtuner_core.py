"""One encrypted PrivTuner training step (forward + backward + SGD), where its time goes, against the twin.

Usage: ``python benchmarks/privtuner_core.py --model bert-tiny --layers 2 --max-len 64 [--adapt-from 0]
[--param-set PT16384] [--calib 8] [--json FILE]``. Calibrates on the first ``--calib`` SST-2 training
sentences, runs one encrypted step on the next one (in process, refresh by a local key holder), and
prints seconds per kind of work (plaintext-weight kernels, ciphertext products, feature/head/row sums,
non-linear functions, refreshes), refresh count, logit and step differences to the twin. Wall clock
on whatever else the machine runs; the protocol's traffic is measured by ``benchmarks/privtuner.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from p3eft.fhe.costs import provenance
from p3eft.privtuner.calibration import calibrate
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.local import examples_from_sentences, verify_local
from p3eft.privtuner.model import from_hf, load_hf_model
from p3eft.privtuner.twin import PrivTunerModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bert-tiny")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--adapt-from", type=int, default=0)
    ap.add_argument("--param-set", default="PT16384")
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/sst2/train.tsv"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    cfg = PrivTunerConfig(
        model=args.model,
        layers=args.layers,
        max_len=args.max_len,
        adapt_from=args.adapt_from,
        param_set=args.param_set,
    )
    hf, tok, random, source = load_hf_model(args.model)
    model = PrivTunerModel(cfg, from_hf(hf, args.layers, args.model, random, source))
    with args.data.open() as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1 : args.calib + 2]
    examples = examples_from_sentences(tok, model.spec, [r[0] for r in rows], [int(r[1]) for r in rows])
    params = model.init_params()
    t0 = time.perf_counter()
    report = calibrate(model, examples[:-1], params)
    calib_s = time.perf_counter() - t0
    res = verify_local(model, report.fns, params, examples[-1:], cfg.lr)
    step = res["steps"][0]
    out = {
        "model": {
            "name": args.model,
            "layers": args.layers,
            "max_len": args.max_len,
            "hidden": model.weights.hidden,
        },
        "weights_random": random,
        "param_set": args.param_set,
        "packing": model.spec.__dict__,
        "calibration_s": calib_s,
        "keygen_s": res["keygen_s"],
        "forward_s": step["forward_s"],
        "backward_update_s": step["backward_update_s"],
        "refreshes": res["refreshes"],
        "logit_max_abs_diff": res["logit_max_abs_diff"],
        "step_max_abs_diff": res["step_max_abs_diff"],
        "seconds_by_kind": res["stats"]["seconds"],
        "counts_by_kind": res["stats"]["counts"],
        "provenance": provenance(" ".join(["benchmarks/privtuner_core.py", *__import__("sys").argv[1:]]), 1),
    }
    print(f"{args.model} layers={args.layers} max_len={args.max_len} {args.param_set} packing={model.spec}")
    print(
        f"forward {step['forward_s']:.1f} s, backward+update {step['backward_update_s']:.1f} s, refreshes {res['refreshes']}"
    )
    print(f"logit diff {res['logit_max_abs_diff']:.2e}, step diff {res['step_max_abs_diff']:.2e}")
    for k, v in sorted(res["stats"]["seconds"].items(), key=lambda kv: -kv[1]):
        print(f"  {k:14s} {v:8.1f} s  ({res['stats']['counts'][k]} calls)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
