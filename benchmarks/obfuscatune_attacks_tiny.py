"""The full attack grid (every mode, mask kind and defence) on a tiny random-weight Llama, in minutes.

The real-model table (`p3eft attack all --model smollm2-135m`) is the measurement that counts; on our
shared CPU it covers only part of the grid, so this script runs the *whole* grid on the tiny Llama of
the tests (d=64, 2 blocks, 320 tokens, norm gains randomised as in a trained model), with ``blockperm:8``
added to the mask kinds. Random weights:
it shows which attack succeeds against which configuration, not SmolLM2's numbers.

Run:  python benchmarks/obfuscatune_attacks_tiny.py --json docs/results/obfuscatune/attacks/tiny-llama.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "attacks"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "obfuscatune"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from helpers_attacks import public_model, traffic
    from helpers_obf import batch

    from p3eft.attacks.suite import SuiteConfig, markdown, run_suite, write

    # the CLI's mask kinds plus blockperm:8: width 64 in blocks of 8, the block count of SmolLM2's
    # 576 in blocks of 32 being 18 (blockperm:32 leaves the tiny width only 2 blocks)
    masks = ["orthogonal", "cond:100", "naive", "kron", "blockperm:32", "blockperm:8"]
    cfg = SuiteConfig(model="tiny-llama (random weights)", masks=masks)
    loaded = SimpleNamespace(model=public_model(), spec=SimpleNamespace(name=cfg.model), weights_random=True)
    prior_text = [batch(9, 8, 16)["input_ids"].flatten().tolist()]
    result = run_suite(cfg, progress=False, loaded=loaded, traffic=traffic(), prior_text=prior_text)
    print(markdown(result))
    if args.json is not None:
        write(result, args.json, None)
        args.json.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
