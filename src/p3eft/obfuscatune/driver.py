"""The data owner's side: fine-tune and evaluate through a channel to an enclave, and nothing else.

These functions never touch a model or a mask; the same code drives an in-process enclave
(:func:`p3eft.obfuscatune.session.in_process_session`) or a networked one.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from tqdm.auto import tqdm

from p3eft.channel import Channel
from p3eft.data import Task
from p3eft.errors import P3eftError
from p3eft.tuning import (
    StepBatches,
    TrainConfig,
    build_lm_training_examples,
    collate_lm,
    score_multiple_choice,
)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad or 0)


def finetune(
    enclave: Channel,
    tokenizer,
    task: Task,
    config: TrainConfig,
    *,
    optimizer: str = "adamw",
    progress: bool = True,
    start_step: int = 0,
    on_step=None,
) -> dict[str, Any]:
    """LoRA fine-tuning through the enclave: batches are the plain reference's (same order, same
    collation); the optimizer runs on the untrusted side in obfuscated coordinates."""
    if task.kind != "multiple_choice":
        raise P3eftError(
            f"ObfuscaTune fine-tunes causal LMs on multiple-choice tasks, not {task.kind} ({task.name})"
        )
    items = build_lm_training_examples(tokenizer, task.examples, config.max_len)
    pad = _pad_id(tokenizer)
    batches = StepBatches(items, config.batch_size, config.seed, lambda b: collate_lm(b, pad))
    enclave.call(
        "configure_training",
        optimizer=optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        max_grad_norm=float(config.grad_clip or 0.0),
    )
    losses, tokens = [], 0
    t0 = time.perf_counter()
    bar = tqdm(
        range(start_step, config.max_steps), desc="obfuscated training", unit="step", disable=not progress
    )
    for step in bar:
        batch = batches(step)
        out = enclave.call("train_step", **batch)
        if not torch.isfinite(torch.tensor(out["loss"])):
            raise FloatingPointError(f"loss became {out['loss']} at step {step}")
        losses.append(float(out["loss"]))
        tokens += int(batch["attention_mask"].sum())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step is not None:
            on_step(step + 1)
    seconds = time.perf_counter() - t0
    return {
        "steps": config.max_steps,
        "resumed_from": start_step,
        "losses": losses,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "tokens": tokens,
        "seconds_this_run": seconds,
        "tokens_per_second": tokens / seconds if seconds > 0 else float("nan"),
    }


def evaluate(
    enclave: Channel,
    tokenizer,
    task: Task,
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
) -> dict[str, Any]:
    """Multiple-choice scoring with the foundation's scorer, logits coming from the enclave."""
    if task.kind != "multiple_choice":
        raise P3eftError(
            f"ObfuscaTune evaluates causal LMs on multiple-choice tasks, not {task.kind} ({task.name})"
        )

    def selected_logits_fn(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return enclave.call("continuation_logits", input_ids=ids, attention_mask=mask, positions=positions)

    t0 = time.perf_counter()
    metrics = score_multiple_choice(
        None,
        tokenizer,
        task.examples,
        batch_size=batch_size,
        max_length=max_length,
        progress=progress,
        pad_token_id=_pad_id(tokenizer),
        selected_logits_fn=selected_logits_fn,
    )
    metrics["seconds"] = time.perf_counter() - t0
    return metrics


def generate(enclave: Channel, tokenizer, prompt: str, max_new_tokens: int = 16) -> str:
    """Greedy continuation of ``prompt`` through the enclave."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    out = enclave.call(
        "generate", input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens
    )
    return tokenizer.decode(out[0], skip_special_tokens=True)
