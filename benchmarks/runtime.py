"""Network transport vs in-process: per-step overhead and bytes per link (ObfuscaTune parties).

The cloud and the enclave run as their own processes on 127.0.0.1 (mutual TLS, attested and
encrypted enclave session); this script is the model owner (it uploads) and the data owner (it
trains). The same steps then run through :class:`~p3eft.channel.InProcessChannel`, with the
same mask seed. Batches are real PIQA text packed to ``--seq-len`` tokens. Bytes are frame bytes on
the wire above TLS (TLS records add a few percent more). Warm-up steps are not timed.

    .venv/bin/python benchmarks/runtime.py [--model tiny|smollm2-135m|FOLDER] [--batch-size 2]
        [--seq-len 64] [--steps 5] [--warmup 1] [--threads 1] [--json FILE]

Every process (this one, the cloud, the enclave) gets ``--threads`` intra-op threads: on a shared
2-core machine two OpenMP threads per process are pathologically slow (see ``p3eft.obfuscatune.net.demo``).

``tiny`` is a GPT-2 architecture (4 layers, width 256, GPT-2 vocabulary) with random weights: the
transport costs depend on shapes, not on what the weights learned.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from p3eft.data import load_task
from p3eft.models import load_causal_lm
from p3eft.obfuscatune.enclave import EnclaveSettings
from p3eft.obfuscatune.net.connect import open_enclave
from p3eft.obfuscatune.net.demo import thread_env
from p3eft.obfuscatune.session import provision_model, session_from_model
from p3eft.runtime.launch import PartyGroup, cloud_argv, enclave_argv, write_seed_file
from p3eft.runtime.pki import init_keys

SEED = bytes(range(32))
LORA = {"lora_r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05, "dtype": "float32"}


def tiny_model(folder: Path):
    """A small GPT-2 (random weights) saved with the real GPT-2 tokenizer; returns the loaded model."""
    import transformers

    from p3eft.models import sources

    torch.manual_seed(0)
    # no dropout in the enclave part: its RNG is the process-global one, which differs between runs
    cfg = transformers.GPT2Config(
        n_embd=256, n_layer=4, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    for f in sources.gpt2_tokenizer_dir().iterdir():
        shutil.copy(f, folder / f.name)
    return load_causal_lm(str(folder))


def packed_batch(tokenizer, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    need, ids = batch_size * seq_len, []
    for ex in load_task("piqa", "eval").examples:
        ids += tokenizer(ex.context + " " + ex.choices[ex.label] + "\n", add_special_tokens=False)[
            "input_ids"
        ]
        if len(ids) >= need:
            break
    x = torch.tensor(ids[:need]).view(batch_size, seq_len)
    return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": x.clone()}


def timed_steps(channel, batch: dict, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    times, losses = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = channel.call("train_step", **batch)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            losses.append(out["loss"])
    return times, losses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads in every process (default 1)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    env = thread_env(args.threads)

    work = Path(tempfile.mkdtemp(prefix="p3eft-bench-runtime-"))
    try:
        if args.model == "tiny":
            model_arg = str(work / "tiny-gpt2")
            loaded = tiny_model(Path(model_arg))
        else:
            model_arg = args.model
            loaded = load_causal_lm(model_arg)
        batch = packed_batch(loaded.tokenizer, args.batch_size, args.seq_len)
        certs = work / "certs"
        init_keys(certs)
        seed_file = write_seed_file(work / "seed.hex", SEED)

        with PartyGroup(work / "logs") as group:
            cloud = group.start("cloud", cloud_argv(certs / "cloud"), env=env)
            enclave = group.start(
                "enclave",
                enclave_argv(
                    certs / "enclave",
                    cloud.url,
                    work / "state",
                    checkpoint_every=10**6,
                    settings=LORA,
                    session_seed_file=seed_file,
                ),
                env=env,
            )
            t0 = time.perf_counter()
            with open_enclave(enclave.url, certs / "model-owner", "seed=pinned", "model-owner", False) as mo:
                provision_model(mo, loaded.model, name=loaded.spec.name, weights_random=loaded.weights_random)
                upload_bytes = mo.stats.bytes_sent
            upload_s = time.perf_counter() - t0
            ch = open_enclave(enclave.url, certs / "data-owner", "seed=pinned")
            inner = ch.inner
            pings = []
            for _ in range(20):
                t1 = time.perf_counter()
                inner.ping()
                pings.append(time.perf_counter() - t1)
            ch.call("configure_training", optimizer="adamw", lr=3e-5)
            before = ch.call("runtime_status")["cloud_link"]
            net_times, net_losses = timed_steps(ch, batch, args.steps, args.warmup)
            after = ch.call("runtime_status")["cloud_link"]
            n = args.steps + args.warmup  # bytes are averaged over every step, warm-up included
            calls, sent, received = inner.stats.per_method["train_step"]
            do_sent, do_recv = sent / calls, received / calls
            cl = {k: (after[k] - before[k]) / n for k in ("calls", "bytes_sent", "bytes_received")}
            ch.close()

        session = session_from_model(
            loaded.model, EnclaveSettings(**LORA, session_seed=SEED), name=loaded.spec.name
        )
        session.enclave_channel.call("configure_training", optimizer="adamw", lr=3e-5)
        ip_times, ip_losses = timed_steps(session.enclave_channel, batch, args.steps, args.warmup)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    net, ip = statistics.median(net_times), statistics.median(ip_times)
    result = {
        "model": loaded.spec.name
        if args.model != "tiny"
        else "tiny-gpt2 (4 layers, width 256, random weights)",
        "weights_random": loaded.weights_random or args.model == "tiny",
        "batch": [args.batch_size, args.seq_len],
        "steps_timed": args.steps,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "network_step_s_median": net,
        "in_process_step_s_median": ip,
        "overhead_s": net - ip,
        "overhead_pct": 100.0 * (net - ip) / ip,
        "network_step_s": net_times,
        "in_process_step_s": ip_times,
        "losses_equal": net_losses == ip_losses,
        "ping_ms_median": 1e3 * statistics.median(pings),
        "links_per_step": {
            "data-owner -> enclave": do_sent,
            "enclave -> data-owner": do_recv,
            "enclave -> cloud": cl["bytes_sent"],
            "cloud -> enclave": cl["bytes_received"],
            "enclave<->cloud round trips": cl["calls"],
        },
        "upload_bytes": upload_bytes,
        "upload_s": upload_s,
    }
    print(f"model {result['model']}, batch {args.batch_size}x{args.seq_len}, {args.steps} timed steps, "
          f"{result['threads']} threads, load average {result['load_average'][0]:.1f}")  # fmt: skip
    print(f"{'transport':<22}{'median step s':>14}")
    print(f"{'in-process':<22}{ip:>14.3f}")
    print(f"{'network (mTLS, gRPC)':<22}{net:>14.3f}")
    print(f"overhead {net - ip:+.3f} s/step ({result['overhead_pct']:+.1f}%); "
          f"losses equal: {result['losses_equal']}; ping {result['ping_ms_median']:.2f} ms")  # fmt: skip
    print(f"{'link':<30}{'bytes/step':>14}")
    for k, v in result["links_per_step"].items():
        print(f"{k:<30}{v:>14,.0f}")
    print(
        f"model upload: {upload_bytes / 2**20:.1f} MiB in {upload_s:.1f} s (obfuscation and cloud load included)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
