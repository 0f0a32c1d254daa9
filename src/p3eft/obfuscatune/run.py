"""What the ``p3eft obfuscatune`` commands do (the CLI only parses and prints).

In-process runs build the trio here; with ``enclave_url`` the data owner talks to a networked enclave
through :func:`p3eft.obfuscatune.net.connect.open_enclave` (its own attested job on the enclave) and
this process holds no model at all; the configuration then comes from the enclave's quote.
Checkpoints are the enclave's *sealed* state, stored by the same module as the plain reference's
(:mod:`p3eft.tuning.checkpoint`: atomic step folders, ``LATEST``, raw bytes and JSON, nothing
unpickled). For in-process runs the simulated enclave's sealing key stands in for the platform's
(ours): one key per user, ``$P3EFT_SEALING_KEY`` or ``~/.config/p3eft/enclave-sealing.key`` (mode
0600), never inside a run folder, so whoever holds a run folder holds only ciphertext, as with a real
TEE whose key never leaves the platform.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from p3eft.channel import Channel
from p3eft.data import load_task
from p3eft.errors import MissingResourceError, P3eftError
from p3eft.obfuscatune import driver
from p3eft.obfuscatune.enclave import EnclaveSettings
from p3eft.obfuscatune.export import save_exported_adapter
from p3eft.outputs import check_writable_dir
from p3eft.tuning import LoraSettings, TrainConfig
from p3eft.tuning.adapters import ADAPTER_META
from p3eft.tuning.checkpoint import CheckpointStore, load_state_files, save_state_files
from p3eft.tuning.scoring import check_scoring_args, meaningful_metrics

SEALING_KEY_FILE = "enclave-sealing.key"
SEALING_KEY_ENV = "P3EFT_SEALING_KEY"


def open_remote_enclave(url: str, certs: str | Path | None, expect: Any = None) -> Channel:
    """A channel to a networked enclave, in a job of its own, verified against ``expect``."""
    from p3eft.obfuscatune.net.connect import open_enclave

    return open_enclave(url, certs, expect)


def data_owner_tokenizer(model: str) -> Any:
    """The tokenizer alone (the data owner holds no model weights when the enclave is remote)."""
    from p3eft.models import load_tokenizer

    return load_tokenizer(model)


def sealing_key_path() -> Path:
    """Where the simulated platform's sealing key lives: apart from every run folder (ours)."""
    env = os.environ.get(SEALING_KEY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".config" / "p3eft" / SEALING_KEY_FILE


def _sealing_key() -> bytes:
    """The simulated platform sealing key, created (mode 0600) on first use."""
    path = sealing_key_path()
    if path.is_file():
        key = path.read_bytes()
        if len(key) != 32:
            raise P3eftError(f"{path} is not a 32-byte sealing key")
        return key
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile
        return _sealing_key()
    except OSError as err:
        raise P3eftError(
            f"cannot create the sealing key {path} ({err.strerror}); set {SEALING_KEY_ENV}"
        ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    return _sealing_key()


def _store(out: Path, keep: int = 2) -> CheckpointStore:
    store = CheckpointStore(out, keep)
    if (store.root).is_dir() and any(store.root.glob("*/enclave_state.pt")):
        raise P3eftError(
            f"{store.root} holds checkpoints of an older p3eft (pickled enclave_state.pt); they are not "
            "loaded because unpickling runs code: start a new --out"
        )
    return store


def _save_checkpoint(channel: Channel, out: Path, step: int, keep: int) -> Path:
    state = channel.call("state")
    return _store(out, keep).write(step, lambda tmp: save_state_files(tmp, state))


def _latest_checkpoint(out: Path) -> tuple[int, dict] | None:
    folder = _store(out).latest()
    if folder is None:
        return None
    return CheckpointStore.step_of(folder), load_state_files(folder)


def finetune(
    model: str,
    dataset: str,
    out: str | Path,
    config: TrainConfig,
    settings: EnclaveSettings,
    *,
    optimizer: str = "adamw",
    limit: int | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
    enclave_url: str | None = None,
    certs: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    expect: Any = None,
) -> dict[str, Any]:
    """Obfuscated LoRA fine-tuning; writes ``adapter/`` (plain PEFT), checkpoints and ``results.json``."""
    out = check_writable_dir(out)
    task = load_task(dataset, "train", data_dir=data_dir, limit=limit)
    latest = _latest_checkpoint(out)
    if latest is not None and not resume:
        raise P3eftError(f"{out} already holds checkpoints: pass --resume, or choose another --out")
    restore = latest[1] if (resume and latest) else None
    start = int(restore["step"]) if restore else 0
    attested: dict | None = None
    if enclave_url:
        from p3eft.obfuscatune.net.connect import attested_config, effective_train_config

        channel = open_remote_enclave(enclave_url, certs, expect)
        attested = attested_config(channel)
        config = effective_train_config(channel, config)  # the enclave's LoRA settings apply
        tokenizer = data_owner_tokenizer(model)
        if restore is not None:
            channel.call("load_state", state=restore)
    else:
        from p3eft.obfuscatune.session import in_process_session

        settings = replace(settings.with_lora(config.lora), sealing_key=_sealing_key())
        session = in_process_session(model, settings, restore=restore)
        channel, tokenizer = session.enclave_channel, session.loaded.tokenizer
    every = config.checkpoint_every
    stop = config.max_steps if stop_after is None else min(config.max_steps, start + stop_after)

    def on_step(done: int) -> None:
        if (every and done % every == 0) or done == config.max_steps:
            _save_checkpoint(channel, out, done, config.keep_checkpoints)

    run_cfg = replace(config, max_steps=stop)
    result = driver.finetune(
        channel,
        tokenizer,
        task,
        run_cfg,
        optimizer=optimizer,
        progress=progress,
        start_step=start,
        on_step=on_step,
    )
    info = channel.call("info")
    payload: dict[str, Any] = {
        "scheme": "obfuscatune",
        "model": model,
        "weights_random": info.get("weights_random"),
        "enclave": info,
        "train": task.describe(),
        "notes": [n for n in [task.note] if n],
        "config": config.to_dict(),
        "optimizer": optimizer,
        "result": result,
    }
    if attested is not None:
        payload["attested"] = attested
    if stop >= config.max_steps:
        export = channel.call("export_adapter")
        adapter = save_exported_adapter(
            export,
            out / "adapter",
            meta={
                "model": _model_name(model),
                "dataset": task.name,
                "weights_random": info.get("weights_random"),
                "steps": config.max_steps,
                "mode": info["settings"]["mode"],
                "masks": info["settings"]["masks"],
            },
        )
        payload["adapter"] = str(adapter)
    if enclave_url:
        channel.close()  # ends this run's job on the enclave
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    return payload


def read_adapter_tensors(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of a PEFT adapter folder, validated by the foundation's checks."""
    from safetensors.torch import load_file

    from p3eft.tuning import check_adapter_dir

    cfg = check_adapter_dir(folder)
    return cfg, load_file(str(Path(folder) / "adapter_model.safetensors"))


def evaluate(
    model: str,
    dataset: str,
    settings: EnclaveSettings,
    *,
    adapter: str | Path | None = None,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    enclave_url: str | None = None,
    certs: str | Path | None = None,
    progress: bool = True,
    expect: Any = None,
) -> dict[str, Any]:
    """Score ``model`` (optionally with a plain PEFT adapter, imported into obfuscated coordinates)."""
    check_scoring_args(batch_size, max_length)
    task = load_task(dataset, "eval", data_dir=data_dir, limit=limit)
    tensors = None
    if adapter is not None:
        cfg, tensors = read_adapter_tensors(adapter)
        settings = settings.with_lora(LoraSettings.from_peft(cfg))
    attested: dict | None = None
    if enclave_url:
        from p3eft.obfuscatune.net.connect import attested_config

        # a job of its own: importing an adapter never touches another job's training state
        channel = open_remote_enclave(enclave_url, certs, expect)
        attested = attested_config(channel)
        if tensors is not None and int(cfg["r"]) != int(attested.get("lora_r", -1)):
            channel.close()
            raise P3eftError(
                f"the adapter has rank {cfg['r']}, the enclave is configured for rank {attested.get('lora_r')}"
            )
        tokenizer = data_owner_tokenizer(model)
    else:
        from p3eft.obfuscatune.session import in_process_session

        session = in_process_session(model, settings)
        channel, tokenizer = session.enclave_channel, session.loaded.tokenizer
    if tensors is not None:
        channel.call("import_adapter", tensors=tensors)
    metrics = driver.evaluate(
        channel, tokenizer, task, batch_size=batch_size, max_length=max_length, progress=progress
    )
    info = channel.call("info")
    if enclave_url:
        channel.close()
    notes = [n for n in [task.note] if n]
    if info.get("weights_random"):
        notes.append(f"{model} has random weights here: accuracy is meaningless")
    return {
        "scheme": "obfuscatune",
        "model": model,
        "weights_random": info.get("weights_random"),
        "enclave": info,
        "adapter": str(adapter) if adapter else None,
        **({"attested": attested} if attested is not None else {}),
        "eval": task.describe(),
        "metric": task.metric,
        **meaningful_metrics(task, metrics),
        "notes": notes,
    }


def export(run_dir: str | Path, out: str | Path) -> Path:
    """The PEFT adapter of an in-process run, in plain coordinates, written to ``out``.

    When finetune already wrote ``adapter/`` for the run's latest checkpoint it is copied (no model
    is loaded); only a run stopped before its end is re-exported from its sealed checkpoint, which
    needs the model re-provisioned under the checkpoint's masks.
    """
    run_dir, out = Path(run_dir), Path(out)
    results = run_dir / "results.json"
    latest = _latest_checkpoint(run_dir)
    if latest is None or not results.is_file():
        raise MissingResourceError(
            f"{run_dir} has no ObfuscaTune checkpoint (checkpoints/LATEST, results.json)"
        )
    step, state = latest
    written = run_dir / "adapter"
    if _adapter_step(written) == step:
        if out.resolve() == written.resolve():
            return written
        check_writable_dir(out.parent, "--out's folder")
        if out.exists():
            raise P3eftError(f"--out {out} exists already; choose a new folder")
        shutil.copytree(written, out)
        return out
    meta = json.loads(results.read_text())
    s = meta["enclave"]["settings"]
    cfg = meta["config"]
    lora = LoraSettings(r=cfg["rank"], alpha=cfg["alpha"], dropout=cfg["dropout"])
    settings = EnclaveSettings(
        mode=s["mode"], masks=s["masks"], dtype=s["dtype"], sealing_key=_sealing_key()
    ).with_lora(lora)
    from p3eft.obfuscatune.session import in_process_session

    session = in_process_session(meta["model"], settings, restore=state)
    return save_exported_adapter(
        session.enclave_channel.call("export_adapter"),
        out,
        meta={"model": _model_name(meta["model"]), "steps": step},
    )


def _model_name(model: str) -> str:
    """The name adapters record (a folder's name for a local model), as the plain loader checks it."""
    from p3eft.models.loading import resolve_spec

    return resolve_spec(model).name


def _adapter_step(folder: Path) -> int | None:
    """The step count recorded in an adapter folder written by finetune, if any."""
    try:
        return int(json.loads((folder / ADAPTER_META).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verification_batch(tokenizer, n: int = 8, data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """One batch of real text: OpenBookQA questions with their gold answers."""
    task = load_task("obqa", "eval", data_dir=data_dir, limit=n)
    texts = [ex.context + ex.continuation(ex.label) for ex in task.examples]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    if enc["input_ids"].numel() == 0:
        raise P3eftError(
            "the model's tokenizer turned real text into no tokens (is its tokenizer folder complete?)"
        )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def verify(
    model: str,
    *,
    mode: str = "strict",
    data_dir: str | Path | None = None,
    masks: tuple[str, ...] = ("orthogonal", "naive"),
    progress: bool = True,
) -> dict[str, Any]:
    """Plain vs obfuscated logits on one batch of real text (fp32), and the split's parameter shares.

    One session is built per entry of ``masks`` (each provisions the whole model, the slow part), and
    only those: ``naive`` is the baseline the orthogonal masks are compared with.
    """
    from tqdm.auto import tqdm

    from p3eft.models import load_causal_lm
    from p3eft.obfuscatune.session import session_from_model

    loaded = load_causal_lm(model, dtype=torch.float32, allow_random=True)
    batch = verification_batch(loaded.tokenizer, data_dir=data_dir)
    with torch.no_grad():
        ref = loaded.model(**batch).logits
    valid = batch["attention_mask"].bool()
    diffs: dict[str, float] = {}
    seconds: dict[str, float] = {}
    info: dict[str, Any] = {}
    if not masks:
        raise P3eftError("--masks needs at least one mask family")
    bar = tqdm(masks, desc="verify: sessions", unit="session", disable=not progress)
    for name in bar:
        bar.set_postfix_str(f"masks {name}")
        t0 = time.perf_counter()
        s = session_from_model(
            loaded.model,
            EnclaveSettings(mode=mode, masks=name),
            name=loaded.spec.name,
            weights_random=loaded.weights_random,
        )
        logits = s.enclave_channel.call("logits", **batch)
        diffs[name] = float((logits - ref)[valid].abs().max())
        seconds[name] = time.perf_counter() - t0
        if not info:
            info = s.enclave_channel.call("info")
        del s
    first = masks[0]
    compare = {}
    if "naive" in diffs and first != "naive":
        compare = {
            "naive_max_abs_logit_diff": diffs["naive"],
            "naive_over_first": diffs["naive"] / max(diffs[first], 1e-30),
        }
    return {
        "model": loaded.spec.name,
        "weights_random": loaded.weights_random,
        "source": loaded.source,
        "mode": mode,
        "dtype": "float32",
        "tokens": int(batch["attention_mask"].sum()),
        "masks": first,
        "max_abs_logit_diff": diffs[first],
        **compare,
        "max_abs_logit_diff_by_masks": diffs,
        "logit_scale": float(ref[valid].abs().max()),
        "enclave_param_share": info["enclave_param_share"],
        "untrusted_param_share": info["untrusted_param_share"],
        "enclave_parameters": info["enclave_parameters"],
        "untrusted_parameters": info["untrusted_parameters"],
        "seconds_by_masks": seconds,
    }


def info(model: str, *, masks: str = "orthogonal", **accounting: Any) -> dict[str, Any]:
    """Parameter and arithmetic accounting from the model's split, built on the meta device.

    ``accounting``: the keyword arguments of
    :func:`~p3eft.obfuscatune.accounting.model_accounting` (``mode``, ``context``, ``defence``,
    ``rows_per_call``, ``head_share``)."""
    from p3eft.models import loading
    from p3eft.obfuscatune.accounting import model_accounting
    from p3eft.obfuscatune.masks import parse_masks

    spec = loading.resolve_spec(model)
    cfg = spec.hf_config()
    acc = model_accounting(cfg, masks=masks, **accounting)
    d = int(getattr(cfg, "n_embd", None) or cfg.hidden_size)
    acc["model"] = spec.name
    acc["mask_randomness_per_width_d"] = parse_masks(masks).randomness(d)
    return acc
