"""ObfuscaTune costs: who computes what, step time and throughput vs plain, obfuscation time, memory.

Prints tables and (with --json) writes everything measured. Sections:
  1. arithmetic per token from each model's actual split (meta device): the enclave's share split into
     masking, norms/nonlinearities, attention products and the LM head, per mode and mask family;
  2. fine-tuning step time and inference tokens/s, obfuscated vs plain PEFT, both on this CPU;
  3. obfuscation time (mask draws + W* = R_in^-1 W R_out) per model size, per layer measured;
  4. memory: peak RSS, and bytes resident in the enclave vs on the untrusted side.

Run:  .venv/bin/python benchmarks/obfuscatune.py --json docs/results/obfuscatune/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
import warnings

import torch

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = [
        "| " + " | ".join(format(r[c[0]], c[2]) if c[2] else str(r[c[0]]) for c in cols) + " |" for r in rows
    ]
    return "\n".join([head, sep, *body])


def arithmetic_section(models: list[str], context: int) -> list[dict]:
    from p3eft.models import get_spec
    from p3eft.obfuscatune.accounting import model_accounting

    rows = []
    for name in models:
        cfg = get_spec(name).hf_config()
        for mode, masks, defence in [
            ("strict", "orthogonal", "none"),
            ("strict", "kron", "none"),
            ("strict", "kron", "mix:4+fill"),  # the default (one prompt of --context tokens per call)
            ("strict", "kron", "mix:4"),
            ("strict", "blockperm:32", "mix:4"),
            ("paper", "orthogonal", "none"),
            ("paper", "kron", "mix:4"),
        ]:
            acc = model_accounting(cfg, mode=mode, masks=masks, context=context, defence=defence)
            a = acc["arithmetic"]
            rows.append(
                {
                    "model": name,
                    "mode": mode,
                    "masks": masks,
                    "defence": defence,
                    "mixing": a["mixing_share"],
                    "enclave_vs_acc": a["enclave_vs_useful_accelerator"],
                    "noise_overhead": a["accelerator_noise_overhead"],
                    "enclave_params": acc["enclave_param_share"],
                    "enclave_arith": a["enclave_share"],
                    "masking": a["masking_share"],
                    "norms": a["norms_nonlinear_share"],
                    "attention": a["attention_share"],
                    "lm_head": a["lm_head_share"],
                    "mask_vs_acc": a["masking_vs_accelerator"],
                    "acc_mflop": a["accelerator_flops_per_token"] / 1e6,
                }
            )
    return rows


def _batch(vocab: int, b: int, t: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[:, : t // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def speed_section(
    model_name: str, variants_list: list[tuple[str, str]], b: int, t: int, steps: int
) -> tuple[list[dict], dict]:
    """``variants_list``: (masks, defence) pairs, each timed in strict mode against plain PEFT."""
    from p3eft.models import load_causal_lm
    from p3eft.obfuscatune.enclave import EnclaveSettings
    from p3eft.obfuscatune.session import session_from_model
    from p3eft.tuning import TrainConfig, attach_lora, trainable_parameters

    loaded = load_causal_lm(model_name, dtype=torch.float32)
    vocab = loaded.model.config.vocab_size
    data = [_batch(vocab, b, t, seed=i) for i in range(steps + 1)]
    tokens = b * t

    # plain PEFT reference: AdamW step with clipping, as the foundation's loop does
    import copy

    work = copy.copy(loaded)
    work.model = copy.deepcopy(loaded.model)
    peft_model = attach_lora(work, TrainConfig())
    params = list(trainable_parameters(peft_model).values())
    opt = torch.optim.AdamW(params, lr=3e-5)

    def plain_step(d):
        peft_model.train()
        opt.zero_grad(set_to_none=True)
        loss = peft_model(**d).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def plain_infer(d):
        peft_model.eval()
        with torch.no_grad():
            peft_model(input_ids=d["input_ids"], attention_mask=d["attention_mask"])

    variants: dict[str, tuple] = {"plain PEFT": (plain_step, plain_infer, 0.0)}
    memory: dict = {}
    sessions = []
    for masks, defence in variants_list:
        t0 = time.perf_counter()
        s = session_from_model(loaded.model, EnclaveSettings(masks=masks, defence=defence), name=model_name)
        setup = time.perf_counter() - t0
        ch = s.enclave_channel
        ch.call("configure_training", optimizer="adamw", lr=3e-5, max_grad_norm=1.0)
        sessions.append(s)
        if not memory:
            memory = resident_bytes(s)
        variants[f"ObfuscaTune strict/{masks}/{defence}"] = (
            lambda d, ch=ch: ch.call("train_step", **d),
            lambda d, ch=ch: ch.call("logits", input_ids=d["input_ids"], attention_mask=d["attention_mask"]),
            setup,
        )

    # Interleave the variants step by step and keep the median, and measure process CPU time beside
    # wall time: on a shared machine other jobs inflate wall time by different amounts over a run.
    keys = ("train_cpu", "train_wall", "infer_cpu", "infer_wall")
    times: dict[str, dict[str, list[float]]] = {v: {k: [] for k in keys} for v in variants}
    for i, d in enumerate(data):
        for name, (train, infer, _) in variants.items():
            for kind, fn in (("train", train), ("infer", infer)):
                c0, w0 = time.process_time(), time.perf_counter()
                fn(d)
                if i > 0:  # the first round is warm-up
                    times[name][f"{kind}_cpu"].append(time.process_time() - c0)
                    times[name][f"{kind}_wall"].append(time.perf_counter() - w0)
    med = {v: {k: statistics.median(x) for k, x in t.items()} for v, t in times.items()}
    base = med["plain PEFT"]
    rows = []
    for name, (_, _, setup) in variants.items():
        m = med[name]
        rows.append(
            {
                "variant": name,
                "step_cpu_s": m["train_cpu"],
                "step_wall_s": m["train_wall"],
                "step_ratio_cpu": m["train_cpu"] / base["train_cpu"],
                "step_ratio_wall": m["train_wall"] / base["train_wall"],
                "infer_tok_s_cpu": tokens / m["infer_cpu"],
                "infer_ratio_cpu": base["infer_cpu"] / m["infer_cpu"],
                "infer_ratio_wall": base["infer_wall"] / m["infer_wall"],
                "setup_s": setup,
            }
        )
    del sessions
    return rows, memory


def resident_bytes(session) -> dict:
    """Bytes of tensors each side holds in a live session."""
    enclave_model = session.enclave.split.enclave_model
    seen, enc = set(), 0
    for p in list(enclave_model.parameters()) + list(enclave_model.buffers()):
        if id(p) not in seen:
            seen.add(id(p))
            enc += p.numel() * p.element_size()
    masks = sum(t.numel() * t.element_size() for t in session.enclave.mask_tensors())
    cloud = 0
    for parts in session.cloud.layers.values():
        for p in parts:
            cloud += p.weight.numel() * p.weight.element_size()
            for t in (p.a, p.b):
                if t is not None:
                    cloud += 3 * t.numel() * t.element_size()  # parameter + AdamW moments
    return {"enclave_model_mb": enc / 2**20, "enclave_masks_mb": masks / 2**20, "untrusted_mb": cloud / 2**20}


def obfuscation_section(models: list[str], masks_list: list[str], layers: int) -> list[dict]:
    """Time the enclave's obfuscation of ``layers`` blocks per model (all blocks have the same shapes)."""
    from p3eft.models import get_spec
    from p3eft.obfuscatune.accounting import meta_split
    from p3eft.obfuscatune.enclave import obfuscate_weight
    from p3eft.obfuscatune.masks import parse_masks
    from p3eft.obfuscatune.split import hidden_size, mask_sides

    rows = []
    secret = b"bench".ljust(32, b".")
    for name in models:
        split = meta_split(get_spec(name).hf_config())
        n_layers = len({g.block for g in split.groups})
        d = hidden_size(split.enclave_model)
        for masks in masks_list:
            fam = parse_masks(masks).with_chunk(d)
            t_total = 0.0
            timed_layers = min(layers, n_layers)
            for g in [g for g in split.groups if g.block < timed_layers]:
                ws = [torch.randn(p.d_in, p.d_out) for p in g.parts]  # stand-in weights (timing only)
                t0 = time.process_time()
                sides = mask_sides("strict", g.role)
                m_in = fam.make(secret, f"{g.layer}/in", g.d_in, torch.float32) if sides.input else None
                for k, (p, w) in enumerate(zip(g.parts, ws, strict=True)):
                    m_out = (
                        fam.make(secret, f"{g.layer}/out{k}", p.d_out, torch.float32)
                        if sides.output
                        else None
                    )
                    obfuscate_weight(w, m_in, m_out)
                t_total += time.process_time() - t0
            per_layer = t_total / timed_layers
            rows.append(
                {
                    "model": name,
                    "masks": masks,
                    "layers": n_layers,
                    "timed_layers": timed_layers,
                    "s_per_layer": per_layer,
                    "total_s": per_layer * n_layers,
                    "untrusted_params_m": split.untrusted_parameters() / 1e6,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write all measurements here")
    ap.add_argument("--model", default="smollm2-135m", help="model for the step-time / throughput section")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5, help="timed rounds (after one warm-up round)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU)"
    )
    ap.add_argument("--context", type=int, default=128, help="context length for the attention arithmetic")
    ap.add_argument("--obf-layers", type=int, default=2, help="blocks timed per model for obfuscation time")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    out: dict = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "args": vars(args),
    }
    sizes = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "smollm2-135m"]

    print(f"\n## 1. Arithmetic per token from the split (context {args.context}; shares of all arithmetic)\n")
    rows = arithmetic_section(sizes, args.context)
    out["arithmetic"] = rows
    print(
        table(
            rows,
            [
                ("model", "model", ""),
                ("mode", "mode", ""),
                ("masks", "masks", ""),
                ("defence", "defence", ""),
                ("enclave_params", "enclave params", ".1%"),
                ("enclave_arith", "enclave arithmetic", ".1%"),
                ("masking", "masking", ".1%"),
                ("mixing", "mixing", ".2%"),
                ("norms", "norms+nonlin", ".2%"),
                ("attention", "attention", ".1%"),
                ("lm_head", "LM head", ".1%"),
                ("mask_vs_acc", "masking / accelerator", ".1%"),
                ("enclave_vs_acc", "enclave / accelerator (model's own work)", ".1%"),
                ("noise_overhead", "accelerator noise rows", ".0%"),
            ],
        )
    )

    if not args.skip_speed:
        print(
            f"\n## 2. Fine-tuning step and inference, {args.model}, batch {args.batch} x {args.seq} tokens, CPU "
            f"(enclave and accelerator share {torch.get_num_threads()} threads)\n"
        )
        speed, memory = speed_section(
            args.model,
            [
                ("orthogonal", "none"),
                ("kron", "none"),
                ("kron", "mix:4"),
                ("kron", "mix:4+fill"),
                ("blockperm:32", "mix:4"),
            ],
            args.batch,
            args.seq,
            args.steps,
        )
        out["speed"] = speed
        out["resident_memory"] = memory
        print(
            table(
                speed,
                [
                    ("variant", "variant", ""),
                    ("step_cpu_s", "train step CPU s", ".3f"),
                    ("step_ratio_cpu", "step / plain (CPU)", ".2f"),
                    ("step_ratio_wall", "step / plain (wall)", ".2f"),
                    ("infer_tok_s_cpu", "inference tok/CPU-s", ".0f"),
                    ("infer_ratio_cpu", "tok/s / plain (CPU)", ".2f"),
                    ("infer_ratio_wall", "tok/s / plain (wall)", ".2f"),
                    ("setup_s", "provision s", ".1f"),
                ],
            )
        )

    print(
        f"\n## 3. Obfuscation CPU time (mask draws + W*), strict mode, fp32, measured on {args.obf_layers} blocks\n"
    )
    obf = obfuscation_section(sizes, ["orthogonal", "kron"], args.obf_layers)
    out["obfuscation"] = obf
    print(
        table(
            obf,
            [
                ("model", "model", ""),
                ("masks", "masks", ""),
                ("untrusted_params_m", "untrusted params (M)", ".1f"),
                ("layers", "blocks", "d"),
                ("s_per_layer", "CPU s / block", ".3f"),
                ("total_s", "total CPU s (x blocks)", ".1f"),
            ],
        )
    )

    out["peak_rss_mb"] = peak_rss_mb()
    print("\n## 4. Memory\n")
    if "resident_memory" in out:
        m = out["resident_memory"]
        print(
            f"{args.model} session (strict/orthogonal/none): enclave model {m['enclave_model_mb']:.1f} MiB + masks "
            f"{m['enclave_masks_mb']:.1f} MiB; untrusted side {m['untrusted_mb']:.1f} MiB (weights + LoRA + AdamW)"
        )
    print(f"peak RSS of this process: {out['peak_rss_mb']:.0f} MiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
