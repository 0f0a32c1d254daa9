"""What the enclave's random rows cost to draw: CSPRNG Gaussians in float64 and in float32.

Span filling (``mix:K+fill``) makes the enclave draw at least ``width + 16`` fresh Gaussian rows per
call; profiling an ObfuscaTune evaluation showed those draws, not the mixing arithmetic, as the
enclave's largest cost. Both paths of :meth:`p3eft.obfuscatune.masks.CsprngStream.normal` draw the
same number of values from the same ChaCha20 stream construction; the same sizes and the same repeats
(one warm-up, then ``--repeats`` timed) for both; process CPU time and wall time, single-threaded.

Run:  .venv/bin/python benchmarks/obfuscatune_noise.py --json docs/results/obfuscatune/noise.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from p3eft.obfuscatune.masks import CsprngStream

# rows x width of one call's random rows: SmolLM2's widths (576, 1536) and GPT2-XL's (1600, 6400)
SHAPES = [(592, 576), (1552, 1536), (1616, 1600), (6416, 6400)]


def time_draw(shape: tuple[int, int], dtype: torch.dtype, repeats: int) -> dict[str, float]:
    stream = CsprngStream(b"\x01" * 32, "benchmark")
    stream.normal(*shape, dtype=dtype)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        stream.normal(*shape, dtype=dtype)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall_s_median": statistics.median(walls), "cpu_s_median": statistics.median(cpus)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(
        f"{'rows x width':>14} {'values':>10} {'f64 CPU s':>10} {'f32 CPU s':>10} {'CPU ratio':>9} {'wall ratio':>10}"
    )
    for shape in SHAPES:
        f64 = time_draw(shape, torch.float64, args.repeats)
        f32 = time_draw(shape, torch.float32, args.repeats)
        row = {
            "shape": list(shape),
            "values": shape[0] * shape[1],
            "float64": f64,
            "float32": f32,
            "cpu_ratio": f64["cpu_s_median"] / f32["cpu_s_median"],
            "wall_ratio": f64["wall_s_median"] / f32["wall_s_median"],
        }
        rows.append(row)
        print(
            f"{shape[0]:>6} x {shape[1]:<5} {row['values']:>10} {f64['cpu_s_median']:>10.4f} "
            f"{f32['cpu_s_median']:>10.4f} {row['cpu_ratio']:>9.2f} {row['wall_ratio']:>10.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"repeats": args.repeats, "torch_threads": 1, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
