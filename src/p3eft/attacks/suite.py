"""Run the attacks over modes, mask kinds and defences; write the JSON and the Markdown table.

One victim per (mode, masks, defence, delta): the same public model, the same proprietary fine-tune
per delta, the same data-owner traffic (prompts from a public dataset's eval split, one training
batch from its train split). The unigram prior of the baseline guesser comes from the dataset's
*train* split (public text the victim's prompts are not drawn from).
"""

from __future__ import annotations

import gc
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from p3eft.attacks import covariance, gradients, static_mask, structured, subspace, tokens, weights
from p3eft.attacks.victim import Traffic, VictimConfig, first_blocks, proprietary_model, run_victim
from p3eft.errors import P3eftError
from p3eft.obfuscatune.enclave import DEFAULT_DEFENCE, DEFAULT_MASKS, DEFAULT_MODE
from p3eft.obfuscatune.masks import parse_masks
from p3eft.obfuscatune.mixing import parse_defence
from p3eft.obfuscatune.split import mask_sides

ATTACKS = ("tokens", "qkv", "weights", "structure", "static", "subspace", "covariance", "gradients")
WEIGHT_ATTACKS = ("weights", "structure")  # the ones further deltas run (the weights change with delta)
# ours: the goals of the default configuration (issue "ObfuscaTune under attack")
GOALS = {"token_margin": 0.05, "weight_rho": 0.05, "enclave_vs_accelerator_gpt2_xl": 0.10}
# ours: an attacker discards a weight estimate farther from the public weight than this (relative):
# a fine-tune is a small change, so such an estimate is known to be garbage and W_pub is kept (rho 0)
PLAUSIBLE_DELTA = 0.25


@dataclass
class SuiteConfig:
    model: str = "smollm2-135m"
    modes: list[str] = field(default_factory=lambda: ["strict", "paper"])
    masks: list[str] = field(
        default_factory=lambda: ["orthogonal", "cond:100", "naive", "kron", "blockperm:32"]
    )
    defences: list[str] = field(
        default_factory=lambda: list(dict.fromkeys(["none", "mix:4", DEFAULT_DEFENCE]))
    )
    deltas: list[float] = field(default_factory=lambda: [0.01, 0.1])
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    paper_masks: list[str] | None = None  # None: the same mask kinds as strict mode
    # subspace attack: known calls (single prompts, in order; None: all but a quarter), solve every n-th
    subspace_known: int | None = None
    subspace_every: int = 4
    dataset: str = "sciq"
    prompts: int = 32
    batch_size: int = 8
    max_len: int = 64
    prior_texts: int = 2000
    data_dir: str | None = None
    seed: int = 0

    def validate(self) -> None:
        for m in self.masks:
            parse_masks(m)
        for d in self.defences:
            parse_defence(d)
        for m in self.modes:
            mask_sides(m, "attn_in")
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad:
            raise P3eftError(f"unknown attack(s) {bad}: use {', '.join(ATTACKS)}")
        if not self.deltas or any(not 0 < d < 1 for d in self.deltas):
            raise P3eftError("deltas must be in (0, 1)")
        if self.subspace_every < 1 or (self.subspace_known is not None and self.subspace_known < 1):
            raise P3eftError("subspace: known calls and the solve interval must be >= 1")
        if self.prompts < 1 or self.batch_size < 1 or self.max_len < 4:
            raise P3eftError("need at least one prompt, batch size >= 1 and max_len >= 4")

    def configurations(self) -> list[tuple[str, str, str]]:
        """Every (mode, masks, defence); the default first (a partial run already answers the goals).
        ``paper_masks`` (if set) limits paper mode to those mask kinds (ours: to fit a shared CPU)."""
        combos = [
            (mo, ma, de)
            for mo in self.modes
            for ma in (self.paper_masks or self.masks if mo == "paper" else self.masks)
            for de in self.defences
        ]
        default = (DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE)
        return [default] + [c for c in combos if c != default]


def dataset_traffic(tokenizer, cfg: SuiteConfig) -> tuple[Traffic, list[list[int]]]:
    """Prompts (eval contexts, cut to max_len), one training batch (train: context + answer, loss on
    the answer) and the public prior text (other train contexts)."""
    from p3eft.data import load_task
    from p3eft.tuning import build_lm_training_examples, collate_lm

    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0))
    ev = load_task(cfg.dataset, "eval", data_dir=cfg.data_dir, limit=cfg.prompts, seed=cfg.seed)
    tr = load_task(
        cfg.dataset, "train", data_dir=cfg.data_dir, limit=cfg.batch_size + cfg.prior_texts, seed=cfg.seed
    )
    prompts = [
        tokenizer(e.context, add_special_tokens=False)["input_ids"][: cfg.max_len] for e in ev.examples
    ]
    prompts = [p for p in prompts if p]
    infer = []
    for i in range(0, len(prompts), cfg.batch_size):
        chunk = [{"input_ids": p, "labels": p} for p in prompts[i : i + cfg.batch_size]]
        b = collate_lm(chunk, pad)
        infer.append({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]})
    train_items = build_lm_training_examples(tokenizer, tr.examples[: cfg.batch_size], cfg.max_len)
    train = collate_lm(train_items, pad)
    prior = [
        tokenizer(e.context, add_special_tokens=False)["input_ids"] for e in tr.examples[cfg.batch_size :]
    ]
    return Traffic(infer, train), prior


def single_prompt_traffic(traffic: Traffic) -> Traffic:
    """Every inference prompt as its own call, cut to its real tokens: short calls, whose sent rows span
    less than the width (what the subspace attack needs; a user scoring one prompt at a time sends these)."""
    calls = []
    for b in traffic.infer:
        for ids, m in zip(b["input_ids"], b["attention_mask"], strict=True):
            ids = ids[m.bool()].unsqueeze(0)
            calls.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return Traffic(calls)


def _weight_summary(per_part: dict[str, float]) -> dict[str, float]:
    vals = list(per_part.values())
    return {"mean": sum(vals) / len(vals), "max": max(vals), "min": min(vals), "per_part": per_part}


def attack_victim(victim, prior: torch.Tensor, cands: torch.Tensor, attacks: list[str]) -> dict[str, Any]:
    """Every requested attack against one recorded victim."""
    out: dict[str, Any] = {}
    guesses = None
    if "tokens" in attacks or "weights" in attacks or "structure" in attacks:
        res = tokens.gram_attack(victim, prior, cands)
        guesses = res.pop("guesses")
        if "tokens" in attacks:
            out["tokens"] = res
    if "qkv" in attacks:
        out["qkv"] = tokens.qkv_attack(victim, prior, cands)
    if "weights" in attacks:
        alone = weights.weights_alone(victim, plausible=PLAUSIBLE_DELTA)
        known = weights.known_plaintext_weights(victim, guesses, plausible=PLAUSIBLE_DELTA)
        out["weights"] = {
            "alone": _weight_summary(alone),
            "with_activations": _weight_summary(known),
            "known_plaintext": weights.rows_needed(victim),
        }
    if "structure" in attacks:
        out["structure"] = structured.structure_attack(victim, guesses, plausible=PLAUSIBLE_DELTA)
    if "static" in attacks:
        out["static"] = static_mask.static_mask_attack(victim, cands)
    if "covariance" in attacks:
        out["covariance"] = covariance.covariance_attack(victim, prior, cands)
    if "gradients" in attacks:
        out["gradients"] = gradients.loss_span_attack(victim)
    return out


def _accounting(mode: str, masks: str, defence: str, rows_per_call: int) -> dict[str, float]:
    """GPT2-XL's arithmetic split under one configuration, for calls of ``rows_per_call`` rows (span
    filling's cost depends on it)."""
    from p3eft.models import loading
    from p3eft.obfuscatune.accounting import model_accounting

    cfg = loading.resolve_spec("gpt2-xl").hf_config()
    a = model_accounting(cfg, mode=mode, masks=masks, defence=defence, rows_per_call=rows_per_call)[
        "arithmetic"
    ]
    return {
        "enclave_share_of_arithmetic_gpt2_xl": a["enclave_share"],
        "enclave_vs_accelerator_gpt2_xl": a["enclave_vs_useful_accelerator"],
        "accelerator_noise_overhead": a["accelerator_noise_overhead"],
        "rows_per_call": rows_per_call,
    }


def _headline(rec: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one configuration that the table and the goals use."""
    h: dict[str, Any] = {"mode": rec["mode"], "masks": rec["masks"], "defence": rec["defence"]}
    first = rec["by_delta"][next(iter(rec["by_delta"]))]  # the first delta ran every attack
    tok = [first.get("tokens"), first.get("qkv")]
    tok = [t for t in tok if t]
    if tok:
        best = max(tok, key=lambda t: t["token_recovery"])
        h["token_recovery"] = best["token_recovery"]
        h["token_recovery_gram"] = first["tokens"]["token_recovery"] if first.get("tokens") else None
        h["token_recovery_qkv"] = first["qkv"]["token_recovery"] if first.get("qkv") else None
        h["unigram_baseline"] = best["unigram_baseline"]
        h["bag_recall"] = max(t["bag_recall"] for t in tok)
        h["bag_unigram_baseline"] = best["bag_unigram_baseline"]
    rhos = []
    if "weights" in first:
        for d, r in rec["by_delta"].items():
            h[f"weight_rho_alone@{d}"] = r["weights"]["alone"]["max"]
            h[f"weight_rho_activations@{d}"] = r["weights"]["with_activations"]["max"]
            rhos += [r["weights"]["alone"]["max"], r["weights"]["with_activations"]["max"]]
        kp = first["weights"]["known_plaintext"]
        h["known_rows_needed"] = kp["rows_needed"]
        h["known_rows_available"] = kp["rows_available"]
    if first.get("structure", {}).get("applicable"):
        for d, r in rec["by_delta"].items():
            h[f"structure_rho@{d}"] = max(r["structure"]["rho"].values())
            h[f"structure_support_min@{d}"] = r["structure"]["support_recovery"]["min"]
            h[f"structure_support_mean@{d}"] = r["structure"]["support_recovery"]["mean"]
            h[f"structure_mask_error_max@{d}"] = r["structure"]["mask_error"]["max"]
            rhos.append(h[f"structure_rho@{d}"])
    if rhos:
        h["weight_rho"] = max(rhos)
    if first.get("static"):
        st = first["static"]
        h["static_target"] = st["target"]
        h["static_rows_needed"] = st["aligned"]["rows_needed"]
        h["static_rows_available"] = st["aligned"]["rows_available"]
        h["static_calls_needed"] = st["matched"]["calls_needed"] if st["matched"]["applicable"] else None
        h["static_calls_available"] = st["matched"]["calls"] if st["matched"]["applicable"] else None
    if first.get("subspace", {}).get("applicable"):
        sub = first["subspace"]
        h["subspace_known_calls"] = sub["known_calls"]
        h["subspace_known_rows"] = sub["known_rows"]
        h["subspace_informative_calls"] = sub["informative_known_calls"]
        h["subspace_calls_needed"] = sub["calls_needed"]
        h["subspace_rows_needed"] = sub["rows_needed"]
        h["subspace_distinct_needed"] = sub["distinct_tokens_needed"]
        h["subspace_mask_error"] = sub["mask_error"]
        if sub["decoded"] is not None:
            h["subspace_bag_recall"] = sub["decoded"]["bag_recall"]
            h["subspace_bag_baseline"] = sub["decoded"]["bag_unigram_baseline"]
    if first.get("gradients"):
        h["loss_span_accuracy"] = first["gradients"]["loss_span_accuracy"]
        h["loss_span_baseline"] = first["gradients"]["majority_baseline"]
    h.update(rec["accounting"])
    return h


def _goals(h: dict[str, Any]) -> dict[str, bool | None]:
    def ok(cond):
        return None if cond is None else bool(cond)

    tok = h.get("token_recovery")
    return {
        "tokens": ok(None if tok is None else tok <= h["unigram_baseline"] + GOALS["token_margin"]),
        "bag": ok(
            None if tok is None else h["bag_recall"] <= h["bag_unigram_baseline"] + GOALS["token_margin"]
        ),
        "weights": ok(None if "weight_rho" not in h else h["weight_rho"] <= GOALS["weight_rho"]),
        "loss_span": ok(
            None
            if "loss_span_accuracy" not in h
            else h["loss_span_accuracy"] <= h["loss_span_baseline"] + GOALS["token_margin"]
        ),
        "tokens_known_plaintext": ok(
            True  # no call gave an equation: the attacker has no mask estimate to read later calls with
            if h.get("subspace_informative_calls") == 0
            else None
            if "subspace_bag_recall" not in h
            else h["subspace_bag_recall"] <= h["subspace_bag_baseline"] + GOALS["token_margin"]
        ),
        "enclave_cost": h["enclave_vs_accelerator_gpt2_xl"] <= GOALS["enclave_vs_accelerator_gpt2_xl"],
    }


def run_suite(
    cfg: SuiteConfig,
    *,
    progress: bool = True,
    on_record=None,
    loaded=None,
    traffic: Traffic | None = None,
    prior_text: list[list[int]] | None = None,
) -> dict[str, Any]:
    """Run every configuration and attack; return the JSON-ready result. ``on_record(partial)`` is
    called after each configuration with the result so far (long runs write as they go). ``loaded``
    (a :class:`~p3eft.models.LoadedModel`), ``traffic`` and ``prior_text`` replace the registry model and
    the dataset (tests)."""
    cfg.validate()
    t0 = time.perf_counter()
    if loaded is None:
        from p3eft.models import load_causal_lm

        loaded = load_causal_lm(cfg.model, dtype=torch.float32, allow_random=True)
    public = loaded.model
    if traffic is None or prior_text is None:
        traffic, prior_text = dataset_traffic(loaded.tokenizer, cfg)
    prior = tokens.unigram_prior(prior_text, int(public.config.vocab_size))
    cands = tokens.candidate_table(public)
    # the first delta's victim runs the full model; further deltas only run the weight attacks on block 0,
    # so their fine-tune is drawn on the model cut to block 0 (block 0's weights draw the generator first:
    # the same weights as on the full model)
    weight_attacks = any(a in WEIGHT_ATTACKS for a in cfg.attacks)
    props = {
        d: proprietary_model(public if i == 0 else first_blocks(public), d, cfg.seed)
        for i, d in enumerate(cfg.deltas)
        if i == 0 or weight_attacks
    }
    block0_prop = (
        proprietary_model(first_blocks(public), cfg.deltas[0], cfg.seed)
        if "subspace" in cfg.attacks
        else None
    )
    records = []
    combos = cfg.configurations()
    bar = tqdm(total=len(combos) * len(cfg.deltas), desc="attacks", disable=not progress)
    for mode, masks, defence in combos:
        rec: dict[str, Any] = {"mode": mode, "masks": masks, "defence": defence, "by_delta": {}}
        for i, delta in enumerate(cfg.deltas):
            bar.set_postfix_str(f"{mode}/{masks}/{defence} delta={delta}")
            vc = VictimConfig(mode, masks, defence, delta, cfg.seed)
            t1 = time.perf_counter()
            # ours, to fit a shared CPU: further deltas only change the weights, so they run the weight
            # attacks on the first inference batch alone (tokens and gradients do not depend on delta)
            light = [a for a in cfg.attacks if a in WEIGHT_ATTACKS] if i > 0 else None
            if light == []:
                continue
            main = [a for a in (light or cfg.attacks) if a != "subspace"]
            res = {}
            if not main:
                pass
            elif light:  # block 0 only: the same crossings from a model cut to its first block
                victim = run_victim(
                    first_blocks(public),
                    Traffic(traffic.infer[:1]),
                    vc,
                    proprietary=props[delta],
                )
            else:
                victim = run_victim(public, traffic, vc, proprietary=props[delta])
            if main:
                res = attack_victim(victim, prior, cands, main)
                del victim
            if "subspace" in cfg.attacks and i == 0:  # its own victim: block 0, one prompt per call
                short = single_prompt_traffic(traffic)
                sv = run_victim(first_blocks(public), short, vc, proprietary=block0_prop)
                n = len(short.calls())
                known = cfg.subspace_known if cfg.subspace_known is not None else n - max(1, n // 4)
                res["subspace"] = subspace.subspace_attack(
                    sv,
                    cands,
                    known_calls=known,
                    every=cfg.subspace_every,
                    prior=prior,
                    on_point=(
                        (
                            lambda e: tqdm.write(
                                f"subspace: {e['calls']} known calls, {e['rows']} rows,"
                                f" {e['distinct_tokens']} distinct tokens: mask error {_num(e['mask_error'], '.2e')}",
                                file=sys.stderr,  # unbuffered: a long run shows each estimate at once
                            )
                        )
                        if progress
                        else None
                    ),
                )
                del sv
            res["seconds"] = time.perf_counter() - t1
            rec["by_delta"][str(delta)] = res
            gc.collect()
            bar.update(1)
        rec["accounting"] = _accounting(mode, masks, defence, cfg.batch_size * cfg.max_len)
        rec["headline"] = _headline(rec)
        rec["goals"] = _goals(rec["headline"])
        records.append(rec)
        if on_record is not None:
            on_record(_result(cfg, loaded, traffic, records, time.perf_counter() - t0))
    bar.close()
    return _result(cfg, loaded, traffic, records, time.perf_counter() - t0)


def _result(cfg: SuiteConfig, loaded, traffic: Traffic, records: list[dict], wall: float) -> dict[str, Any]:
    default = next(
        (
            r
            for r in records
            if (r["mode"], r["masks"], r["defence"]) == (DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE)
        ),
        None,
    )
    return {
        "model": loaded.spec.name,
        "weights_random": loaded.weights_random,
        "config": asdict(cfg),
        "rows_per_call": [int(c["input_ids"].numel()) for c in traffic.calls()],
        "real_positions": int(sum(int(c["attention_mask"].sum()) for c in traffic.calls())),
        "default": None if default is None else {**default["headline"], "goals": default["goals"]},
        "complete": len(records) == len(cfg.configurations()),
        "goal_thresholds": GOALS,
        "results": records,
        "wall_seconds": wall,
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
    }


def _subspace_cell(h: dict[str, Any]) -> str:
    """' | known rows to 1e-3 (calls) / bag recall of the later calls (prior)', or why not."""
    if "subspace_known_calls" not in h:
        return " | –"
    if not h["subspace_informative_calls"]:
        return " | no equations (every call spans the width)"
    need = h["subspace_rows_needed"]
    rows = (
        f"> {h['subspace_known_rows']} ({h['subspace_known_calls']})"
        if need is None
        else f"{need} ({h['subspace_calls_needed']})"
    )
    recall = (
        f"{_pct(h['subspace_bag_recall'])} ({_pct(h['subspace_bag_baseline'])})"
        if "subspace_bag_recall" in h
        else "–"
    )
    return f" | {rows} / {recall}"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v, spec=".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    """The measured table: one row per (mode, masks, defence), one column per attack."""
    deltas = result["config"]["deltas"]
    sub_col = any("subspace_known_calls" in r["headline"] for r in result["results"])
    lines = [
        f"# ObfuscaTune under attack: {result['model']}"
        + (" (RANDOM weights)" if result["weights_random"] else ""),
        "",
        "Token recovery: best of the Gram/Procrustes attack on block 0's masked input and the clear-Q attack,"
        " as position accuracy (unigram-prior baseline in brackets); bag recall ignores positions (its"
        " baseline: as many guesses from the prior). rho = 1 - ||W_rec - W|| / ||W_pub - W|| (max over"
        " block 0's linears; weights alone / weights + activations). Known rows: rows of known plaintext"
        " after which a fitted input mask predicts masked rows to 1%. Structure: blockperm and kron masks,"
        " rho of the structured recovery (block support + per-block Procrustes; Kronecker labels from the"
        " spectrum + nearest Kronecker product) (max over block 0's linears; in brackets the lowest / mean,"
        " over the masks fitted, of the structure recovered: share of masked coordinates with their exact"
        " support, share of Kronecker label partitions). Static mask: known rows"
        " (in order) until the fitted input mask of block 0 is within 1e-3 of the true one / calls until a"
        " mask fitted on norm-matched rows of known text (row order unknown) is."
        + (
            " Subspace: the same prompts sent one per call; known rows (calls) until the input mask"
            " estimated from the spans of the rows received (subspace membership of known rows, any row"
            " order and mixing) is within 1e-3 up to scale, then the bag recall of the later calls' tokens"
            " read by span membership (unigram-prior baseline in brackets)."
            if sub_col
            else ""
        )
        + " Loss span: accuracy of reading which"
        " positions carry the loss (majority baseline in brackets). Enclave / accelerator: GPT2-XL"
        " arithmetic per token from the split (meta device), against the model's own linear work.",
        "",
        "| mode | masks | defence | tokens (prior) | bag recall (prior) | "
        + " | ".join(f"rho δ={d} alone / +act" for d in deltas)
        + " | known rows | "
        + " | ".join(f"structure rho δ={d}" for d in deltas)
        + " | static mask: rows / calls"
        + (" | subspace: known rows (calls) / later bag recall (prior)" if sub_col else "")
        + " | loss span (majority) | enclave / accel. GPT2-XL | goals met |",
        "|---|---|---|---|---|"
        + "---|" * len(deltas)
        + "---|"
        + "---|" * len(deltas)
        + ("---|" if sub_col else "")
        + "---|---|---|---|",
    ]
    for r in result["results"]:
        h = r["headline"]
        rhos = " | ".join(
            f"{_num(h.get(f'weight_rho_alone@{d}'))} / {_num(h.get(f'weight_rho_activations@{d}'))}"
            for d in deltas
        )
        rows = h.get("known_rows_needed")
        rows_s = (
            "–"
            if "known_rows_available" not in h
            else (f"> {h['known_rows_available']}" if rows is None else str(rows))
        )
        if any(f"structure_rho@{d}" in h for d in deltas):
            structure = " | ".join(
                f"{_num(h.get(f'structure_rho@{d}'))} ({_pct(h.get(f'structure_support_min@{d}'))} / "
                f"{_pct(h.get(f'structure_support_mean@{d}'))})"
                for d in deltas
            )
        else:
            structure = " | ".join("–" for _ in deltas)
        static = "–"
        if "static_rows_available" in h:
            rows_st = h["static_rows_needed"]
            calls_st = h["static_calls_needed"]
            static = (
                (f"> {h['static_rows_available']}" if rows_st is None else str(rows_st))
                + " / "
                + (
                    "–"
                    if h["static_calls_available"] is None
                    else (f"> {h['static_calls_available']}" if calls_st is None else str(calls_st))
                )
            )
        met = [k for k, v in r["goals"].items() if v]
        missed = [k for k, v in r["goals"].items() if v is False]
        goals = "all" if not missed else "missed: " + ", ".join(missed)
        default = (
            " **(default)**"
            if (r["mode"], r["masks"], r["defence"]) == (DEFAULT_MODE, DEFAULT_MASKS, DEFAULT_DEFENCE)
            else ""
        )
        lines.append(
            f"| {r['mode']}{default} | {r['masks']} | {r['defence']} | {_pct(h.get('token_recovery'))} ({_pct(h.get('unigram_baseline'))})"
            f" | {_pct(h.get('bag_recall'))} ({_pct(h.get('bag_unigram_baseline'))}) | {rhos} | {rows_s}"
            f" | {structure} | {static}{_subspace_cell(h) if sub_col else ''}"
            f" | {_pct(h.get('loss_span_accuracy'))} ({_pct(h.get('loss_span_baseline'))})"
            f" | {_pct(h['enclave_vs_accelerator_gpt2_xl'])} | {goals if met or missed else '–'} |"
        )
    d = result["default"]
    if not result.get("complete", True):
        lines += ["", f"PARTIAL: {len(result['results'])} configurations so far."]
    if d is None:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Default ({d['mode']}, {d['masks']}, {d['defence']}): token recovery {_pct(d.get('token_recovery'))}"
        f" vs unigram prior {_pct(d.get('unigram_baseline'))}; weight rho {_num(d.get('weight_rho'))};"
        f" enclave arithmetic {_pct(d['enclave_share_of_arithmetic_gpt2_xl'])} of all GPT2-XL arithmetic"
        f" ({_pct(d['enclave_vs_accelerator_gpt2_xl'])} of the accelerator's useful work; the accelerator"
        f" does {_pct(d['accelerator_noise_overhead'])} more for the random rows; calls of"
        f" {d.get('rows_per_call', '?')} rows).",
        f"Traffic: {len(result['rows_per_call'])} calls, {result['real_positions']} real token positions;"
        f" wall time {result['wall_seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], json_path: Path | None, report_dir: Path | None) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2, default=str))
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "attacks.md").write_text(markdown(result))
