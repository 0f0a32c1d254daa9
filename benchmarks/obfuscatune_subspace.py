"""The subspace-membership attack (p3eft.attacks.subspace) on the tiny Llama: mask kinds, defences, call lengths.

Single-prompt calls of L random tokens (the tiny model of the tests: d=64, 320 tokens, random weights);
the attacker knows the text of the first calls and reads the rest. Per configuration: known rows and
calls until block 0's input mask is within 1e-3 (relative Frobenius error, up to scale), the distinct
tokens they hold, the final error, and the bag recall of the later calls. With ``mix:4`` a call of L
rows sends 5*ceil(L/4) rows: L <= 48 leaves a proper span on width 64, L = 64 fills it (the negative
control: no equations). ``mix:4+fill`` (the default) sends at least 64 + 16 random rows per call, so no
call gives an equation; the last column decodes the later calls with the victim's *true* mask (a
control: what a holder of the mask would read), so a failure is the mask estimate's.

Run:  python benchmarks/obfuscatune_subspace.py --json docs/results/obfuscatune/attacks/subspace-tiny.json
      (``--defences mix:4+fill --json .../subspace-tiny-fill.json``: the span-filling rows only)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "attacks"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "obfuscatune"))

CONFIGS = [  # (masks, defence, call length, known calls, solve after every n-th known call)
    ("kron", "mix:4", 16, 16, 1),
    ("orthogonal", "mix:4", 16, 16, 1),
    ("blockperm:8", "mix:4", 16, 16, 1),
    ("blockperm:32", "mix:4", 16, 16, 1),
    ("kron", "none", 16, 16, 1),
    ("orthogonal", "none", 16, 16, 1),
    ("kron", "mix:4", 8, 48, 2),
    ("kron", "mix:4", 32, 12, 1),
    ("kron", "mix:4", 48, 32, 2),
    ("kron", "mix:4", 64, 8, 1),
    # span filling (the default): random rows until every call spans the width
    ("kron", "mix:4+fill", 16, 16, 1),
    ("orthogonal", "mix:4+fill", 16, 16, 1),
    ("kron", "mix:4+fill", 8, 48, 2),
    ("kron", "mix:4+fill", 48, 32, 2),
    ("kron", "mix:4+fill", 1, 96, 8),
]


def traffic(calls: int, length: int, vocab: int, seed: int = 7):
    from p3eft.attacks.victim import Traffic

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(calls):
        ids = torch.randint(1, vocab, (1, length), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return Traffic(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--later", type=int, default=4, help="Calls decoded after the known ones.")
    ap.add_argument("--defences", default=None, help="Only the rows of these defences (comma-separated).")
    args = ap.parse_args()
    only = None if args.defences is None else set(args.defences.split(","))
    from helpers_attacks import prior, public_model
    from helpers_obf import VOCAB

    from p3eft.attacks import subspace, tokens
    from p3eft.attacks.victim import VictimConfig, run_victim

    pub = public_model()
    cands = tokens.candidate_table(pub)
    rows = []
    print(
        "| masks | defence | tokens per call | sent rows per call | known rows (calls, distinct tokens) to 1e-3"
        " | final error | later calls: bag recall (prior) | with the true mask |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for masks, defence, length, known, every in CONFIGS:
        if only is not None and defence not in only:
            continue
        t0 = time.perf_counter()
        v = run_victim(
            pub, traffic(known + args.later, length, VOCAB), VictimConfig("strict", masks, defence)
        )
        res = subspace.subspace_attack(v, cands, known_calls=known, every=every, prior=prior())
        res["seconds"] = time.perf_counter() - t0
        oracle = subspace.subspace_attack(v, cands, known_calls=known, prior=prior(), oracle_mask=True)
        res["true_mask_decoded"] = oracle["decoded"]
        res["config"] = {"masks": masks, "defence": defence, "length": length, "every": every}
        rows.append(res)
        need = (
            f"{res['rows_needed']} ({res['calls_needed']}, {res['distinct_tokens_needed']})"
            if res["rows_needed"] is not None
            else f"> {res['known_rows']} ({known})"
        )
        dec = res["decoded"]
        recall = (
            "nothing to read with"
            if dec is None
            else f"{100 * dec['bag_recall']:.1f}% ({100 * dec['bag_unigram_baseline']:.1f}%)"
        )
        oracle_recall = f"{100 * res['true_mask_decoded']['bag_recall']:.1f}%"
        err = "no equations" if res["mask_error"] is None else f"{res['mask_error']:.1e}"
        print(
            f"| {masks} | {defence} | {length} | {res['rows_per_call'][0]} | {need} | {err} | {recall}"
            f" | {oracle_recall} |",
            flush=True,
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"model": "tiny-llama (random weights, d=64)", "results": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
