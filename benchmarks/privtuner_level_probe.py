"""Can PrivTuner run on a given CKKS chain? One encrypted training step of bert-tiny per chain.

Calibrates bert-tiny (2 layers, 64 tokens, rank 8; random weights) once, prints the levels each
site's first phase needs, then for every chain runs one encrypted training step in one process
(:class:`p3eft.privtuner.local.LocalSession`) and records whether it ran or which ``LevelError``
stopped it. docs/wireless.md quotes its result for the 128-bit N = 8192 chains:

    nice -n 5 .venv/bin/python benchmarks/privtuner_level_probe.py --json probe.json

A chain that runs takes a full step (minutes at N >= 16384); the default chains all stop at once.
"""

from __future__ import annotations

import argparse
import json
import time

from p3eft.fhe.context import LevelError
from p3eft.fhe.params import ParamSet
from p3eft.privtuner import config
from p3eft.privtuner.local import LocalSession
from p3eft.privtuner.twin import PrivTunerModel
from p3eft.privtuner.wiring import BertBackend, settings

#: Every 128-bit N = 8192 chain shape the wireless candidates use, and the 218-bit maximum.
DEFAULT_CHAINS = "8192:50,40,40,40,48;8192:45,40,40,40,45;8192:60,40,40,60"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", default=DEFAULT_CHAINS, help="'N:b0,b1,...;N:...' (>= 128-bit each)")
    ap.add_argument("--data", default=None, help="data folder (default: P3EFT_DATA)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    chains = []
    for i, spec in enumerate(args.chains.split(";")):
        n, bits = spec.split(":")
        ps = ParamSet(f"probe{i}", int(n), tuple(int(b) for b in bits.split(",")))
        ps.check_secure()  # refuses anything below 128 bits
        config.PRIVTUNER_PARAM_SETS[ps.name] = ps  # PrivTunerConfig looks chains up by name
        chains.append(ps)
    t0 = time.perf_counter()
    cal_cfg = settings(model="bert-tiny", layers=2, max_len=64, rank=8, param_set=chains[0].name)
    calibrated = BertBackend(cal_cfg, args.data)  # calibration is plaintext: the same for every chain
    sites = {s: f.first_phase_depth for s, f in calibrated.fns.items()}
    out = {"sites_first_phase_levels": sites, "calibration_s": time.perf_counter() - t0, "chains": []}
    print(f"first-phase levels per site: {sites}")
    for ps in chains:
        cfg = settings(model="bert-tiny", layers=2, max_len=64, rank=8, param_set=ps.name)
        model = PrivTunerModel(cfg)
        backend = BertBackend(cfg, args.data, model=model, calibration=calibrated.calibration)
        row = {"N": ps.poly_modulus_degree, "bits": list(ps.coeff_mod_bit_sizes), "log_q": ps.total_bits}
        sess = LocalSession.start(model, calibrated.fns, model.init_params())
        row.update(top_level=sess.ctx.top_level, refresh_floor=sess.refresher.min_level)
        try:
            res = sess.step(backend.tokens.example("a gripping and moving film", 1), cfg.lr)
            row.update(ran=True, refreshes=res["refreshes"])
        except LevelError as err:
            row.update(ran=False, error=f"LevelError: {err}")
        print(row)
        out["chains"].append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
