"""The plaintext LoRA reference: fine-tune and evaluate without any protection.

Both schemes are judged against this: same model, same data, same hyper-parameters, same scoring.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from p3eft.data import Task, load_task
from p3eft.errors import P3eftError
from p3eft.models import LoadedModel, load_causal_lm, load_sequence_classifier
from p3eft.outputs import check_writable_dir
from p3eft.tuning.adapters import (
    attach_lora,
    check_adapter_dir,
    load_adapter,
    save_adapter,
    trainable_parameters,
)
from p3eft.tuning.checkpoint import Checkpointer
from p3eft.tuning.config import TrainConfig
from p3eft.tuning.lm_data import (
    StepBatches,
    build_classification_examples,
    build_lm_training_examples,
    collate_classification,
    collate_lm,
)
from p3eft.tuning.loop import train_loop
from p3eft.tuning.scoring import (
    check_scoring_args,
    classification_accuracy,
    meaningful_metrics,
    score_multiple_choice,
)


def load_for_task(model: str, task: Task) -> LoadedModel:
    """A causal LM for multiple-choice tasks, a sequence classifier for classification tasks."""
    if task.kind == "classification":
        return load_sequence_classifier(model, num_labels=task.num_labels)
    loaded = load_causal_lm(model)
    return loaded


def _check_pair(model: str, task_kind: str) -> None:
    from p3eft.models import resolve_spec

    spec = resolve_spec(model)
    if task_kind == "multiple_choice" and spec.family == "bert":
        raise P3eftError(
            f"{spec.name} is a BERT encoder; multiple-choice tasks need a causal LM (e.g. smollm2-135m)"
        )


def _notes(task: Task, loaded: LoadedModel) -> list[str]:
    """Caveats every output repeats: dataset notes (PIQA split) and random weights."""
    notes = [task.note] if task.note else []
    if loaded.weights_random:
        notes.append(
            f"{loaded.spec.name} has random weights here ({loaded.source}): fine for exactness and timing, "
            "meaningless for accuracy"
        )
    return notes


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON atomically-enough for results (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def finetune_plain(
    model: str,
    dataset: str,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """LoRA fine-tune ``model`` on ``dataset``'s train split; write the adapter and ``results.json`` under ``out_dir``."""
    out = check_writable_dir(out_dir)  # before the model loads: a bad --out fails in a second
    task = load_task(dataset, "train", data_dir=data_dir, limit=limit)
    _check_pair(model, task.kind)
    loaded = load_for_task(model, task)
    facts = loaded.describe()  # before LoRA layers are injected into the model
    peft_model = attach_lora(loaded, config)
    pad = loaded.tokenizer.pad_token_id
    if task.kind == "classification":
        items = build_classification_examples(loaded.tokenizer, task.examples, config.max_len)

        def collate(b):
            return collate_classification(b, pad)
    else:
        items = build_lm_training_examples(loaded.tokenizer, task.examples, config.max_len)

        def collate(b):
            return collate_lm(b, pad)

    batches = StepBatches(items, config.batch_size, config.seed, collate)
    peft_model.train()

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return peft_model(**batch).loss

    state = {"model": loaded.spec.name, "dataset": task.name, "limit": limit}
    ckpt = Checkpointer(out, every=config.checkpoint_every, keep=config.keep_checkpoints)
    result = train_loop(
        loss_fn,
        trainable_parameters(peft_model),
        batches,
        config,
        checkpointer=ckpt,
        resume=resume,
        progress=progress,
        state=state,
        stop_after=stop_after,
    )
    peft_model.eval()
    payload: dict[str, Any] = {
        "scheme": "plain",
        **facts,
        "trainable_parameters": sum(p.numel() for p in trainable_parameters(peft_model).values()),
        "train": task.describe(),
        "notes": _notes(task, loaded),
        "config": config.to_dict(),
        "result": result.to_dict(),
    }
    if result.steps >= config.max_steps:
        adapter = save_adapter(
            peft_model,
            out / "adapter",
            {
                "model": loaded.spec.name,
                "dataset": task.name,
                "weights_random": loaded.weights_random,
                "steps": result.steps,
            },
        )
        payload["adapter"] = str(adapter)
    write_json(out / "results.json", payload)
    return payload


def evaluate(
    model: str,
    dataset: str,
    *,
    adapter: str | Path | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``model`` (optionally with a LoRA adapter) on ``dataset``'s eval split; JSON-ready result."""
    check_scoring_args(batch_size, max_length)
    task = load_task(dataset, "eval", data_dir=data_dir, limit=limit)
    _check_pair(model, task.kind)
    if adapter:
        check_adapter_dir(adapter)  # fail fast, before loading the model
    loaded = load_for_task(model, task)
    facts = loaded.describe()
    net = load_adapter(loaded, adapter) if adapter else loaded.model
    net.eval()
    t0 = time.perf_counter()
    if task.kind == "classification":

        def cls_logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return net(input_ids=ids, attention_mask=mask).logits

        metrics = classification_accuracy(
            cls_logits, loaded.tokenizer, task.examples, batch_size=batch_size, progress=progress
        )
    else:

        def lm_logits(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return net(input_ids=ids, attention_mask=mask).logits

        metrics = score_multiple_choice(
            lm_logits,
            loaded.tokenizer,
            task.examples,
            batch_size=batch_size,
            progress=progress,
            max_length=max_length,
        )
    notes = _notes(task, loaded)
    return {
        "scheme": "plain",
        **facts,
        "adapter": str(adapter) if adapter else None,
        "eval": task.describe(),
        "metric": task.metric,
        **meaningful_metrics(task, metrics),
        "seconds": time.perf_counter() - t0,
        "notes": notes,
    }
