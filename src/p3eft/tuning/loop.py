"""A generic, resumable training loop over any ``loss_fn(batch) -> scalar``.

It knows nothing about models: the plain LoRA reference passes ``model(**batch).loss``, ObfuscaTune
passes its split enclave/accelerator forward. What it owns is the optimiser, gradient clipping,
progress, loss history and checkpoints (so resume works the same for every scheme).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from p3eft.errors import P3eftError
from p3eft.tuning.checkpoint import Checkpointer
from p3eft.tuning.config import TrainConfig


@dataclass
class TrainResult:
    """What a run did: steps done (including resumed ones), per-step losses, tokens and time."""

    steps: int
    losses: list[float]
    tokens: int
    seconds: float  # wall time of this process's steps only
    resumed_from: int = 0
    checkpoints: list[str] = field(default_factory=list)
    tokens_this_run: int = 0

    @property
    def tokens_per_second(self) -> float:
        """Throughput of this process's steps (resumed steps excluded)."""
        return self.tokens_this_run / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "losses": self.losses,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            "tokens": self.tokens,
            "seconds_this_run": self.seconds,
            "tokens_per_second": self.tokens_per_second,
            "checkpoints": self.checkpoints,
        }


def _count_tokens(batch: Any) -> int:
    if isinstance(batch, Mapping) and "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return 0


def train_loop(
    loss_fn: Callable[[Any], torch.Tensor],
    params: Mapping[str, torch.nn.Parameter] | Iterable[tuple[str, torch.nn.Parameter]],
    batches: Callable[[int], Any],
    config: TrainConfig,
    *,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    progress: bool = True,
    state: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Run ``config.max_steps`` AdamW steps of ``loss_fn(batches(step))`` over the named ``params``.

    ``batches(step)`` must be a pure function of the step (see :class:`StepBatches`), so resuming
    needs only the step count. ``state`` is extra JSON stored in each checkpoint (model, dataset...);
    on resume its ``resume_key`` and the config's must match the checkpoint's. ``stop_after`` ends
    the process's run early after that many steps *without* a final checkpoint (to simulate a kill
    in tests; checkpoints due before it are still written).
    """
    named = dict(params)
    if not named:
        raise P3eftError("nothing to train: no trainable parameters")
    optimizer = torch.optim.AdamW(named.values(), lr=config.lr, weight_decay=config.weight_decay)
    # A run's randomness (dropout) depends only on its seed, never on what the process did before;
    # a resumed run then replaces these states with the checkpoint's.
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    # JSON round trip so tuples/lists compare equal to what a checkpoint gives back.
    meta = json.loads(json.dumps({"config": config.resume_key(), **(state or {})}, default=str))
    losses: list[float] = []
    tokens = 0
    start = 0
    if checkpointer is not None:
        if resume:
            restored = checkpointer.load_latest(named, optimizer)
            if restored is not None:
                saved_key = {k: restored.get(k) for k in meta}
                if saved_key != meta:
                    diff = sorted(k for k in meta if restored.get(k) != meta[k])
                    raise P3eftError(
                        f"cannot resume: the checkpoint was made with different settings ({', '.join(diff)})"
                    )
                start = int(restored["step"])
                if start > config.max_steps:
                    raise P3eftError(
                        f"the checkpoint is at step {start}, beyond --max-steps {config.max_steps}"
                    )
                losses = list(restored.get("losses", []))
                tokens = int(restored.get("tokens", 0))
        elif checkpointer.exists():
            raise P3eftError(
                f"{checkpointer.root} already holds checkpoints: pass --resume, or choose another --out"
            )
    tokens_before = tokens
    saved: list[str] = []
    t0 = time.perf_counter()
    end = config.max_steps if stop_after is None else min(config.max_steps, start + stop_after)
    bar = tqdm(range(start, end), desc="training", unit="step", initial=0, disable=not progress)
    for step in bar:
        batch = batches(step)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(batch)
        if not torch.isfinite(loss):
            raise P3eftError(
                f"training diverged: loss became {loss.item()} at step {step} (try a lower --lr)"
            )
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(named.values(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        tokens += _count_tokens(batch)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        final = done == config.max_steps
        if checkpointer is not None and checkpointer.due(done, final):
            payload = {**meta, "losses": losses, "tokens": tokens}
            if hasattr(batches, "position"):
                payload["data_position"] = batches.position(done)  # type: ignore[attr-defined]
            saved.append(str(checkpointer.save(done, named, optimizer, payload)))
    seconds = time.perf_counter() - t0
    result = TrainResult(
        steps=end,
        losses=losses,
        tokens=tokens,
        seconds=seconds,
        resumed_from=start,
        checkpoints=saved,
        tokens_this_run=tokens - tokens_before,
    )
    return result
