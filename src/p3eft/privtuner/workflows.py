"""The PrivTuner commands as library calls: verify, finetune, evaluate, bench (the CLI only parses/prints).

Each runs the real protocol (:mod:`p3eft.privtuner.roles`) with the encrypted BERT
(:mod:`p3eft.privtuner.wiring`); the approximate twin (:class:`p3eft.privtuner.twin.Twin`) is the
reference wherever a result is checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.errors import P3eftError
from p3eft.privtuner import accounting
from p3eft.privtuner.checkpoint import CheckpointDir, check_same_run
from p3eft.privtuner.config import PRIVTUNER_PARAM_SETS, PrivTunerConfig
from p3eft.privtuner.export import export_adapter, exported_meta, load_exported
from p3eft.privtuner.protocol import EndPolicy
from p3eft.privtuner.roles import DataOwnerConfig
from p3eft.privtuner.run import Progress, TrainRecord, batches, data_owner, evaluate, train

TOLERANCE = 1e-2  # issue 10: encrypted vs twin, logits and adapter after one step


def _bar(enabled: bool, desc: str) -> tuple[Progress | None, Callable[[], None]]:
    """A tqdm progress callback ``(done, total, message)`` and its closer."""
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    state: dict[str, Any] = {}

    def cb(done: int, total: int, msg: str) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="ex")
        bar = state["bar"]
        bar.update(done - bar.n)
        if msg:
            bar.set_postfix_str(msg)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    return cb, close


def _sst2(split: str, limit: int | None, data_dir: str | Path | None) -> list[tuple[str, int]]:
    from p3eft.data import load_task

    task = load_task("sst2", split, data_dir=data_dir, limit=limit)
    return [(e.text, int(e.label)) for e in task.examples]


def _model_info(cfg: PrivTunerConfig, backend: Any | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": cfg.model,
        "layers": cfg.layers,
        "max_len": cfg.max_len,
        "lora_rank": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "param_set": cfg.param_set,
    }
    if backend is not None:
        w = backend.model.weights
        info.update(hidden=w.hidden, weights_random=bool(w.weights_random), source=w.source)
    return info


def _totals(ledger: accounting.Ledger) -> dict[str, Any]:
    snap = ledger.snapshot()
    return {k: v for k, v in snap.items() if k != "per_method"}


# --- verify ------------------------------------------------------------------------------------------------


def verify(cfg: PrivTunerConfig, data_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """One encrypted forward pass and one encrypted SGD step on two real SST-2 training examples,
    against the approximate twin; with the transcript audit of the whole run."""
    from p3eft.privtuner.adapter import peft_names
    from p3eft.privtuner.calibration import check_ranges
    from p3eft.privtuner.twin import Twin
    from p3eft.privtuner.wiring import BertBackend, BertCodec

    t0 = time.perf_counter()
    pairs = _sst2("train", 2, data_dir)
    say = _say(progress)
    say(f"model owner: loading {cfg.model} ({cfg.layers} layers) and calibrating")
    backend = BertBackend(cfg, data_dir)
    twin = Twin(backend.model, backend.fns)
    init = backend.initial_params(seed=cfg.seed)
    with data_owner(BertCodec, DataOwnerConfig(lr=cfg.lr), backend, audit=True) as (do, aud):
        assert aud is not None
        examples = [do.codec.example(t, y) for t, y in pairs]
        say("one encrypted training step (forward, encrypted dL/dlogits, backward, update) on 2 examples")
        t_step = time.perf_counter()
        before = do.ledger.snapshot()
        losses = do.train_step(pairs)
        step_cost = accounting.diff(do.ledger.snapshot(), before)
        step_s = time.perf_counter() - t_step
        enc_logits = np.array(do.last_step_logits)
        say("data owner: decrypting the adapter after the step")
        enc_adapter = do.decrypt_adapter()
        ledger = do.ledger
    # the twin: same initial adapter, same examples, same SGD step (gradient averaged over the batch)
    twin_logits, grads, twin_losses = [], [], []
    for ex in examples:
        loss, z, g = twin.gradients(ex, init)
        twin_logits.append(z)
        twin_losses.append(loss)
        grads.append(g)
    mean_grad = {k: sum(g[k] for g in grads) / len(grads) for k in grads[0]}
    after = Twin.sgd(init, mean_grad, cfg.lr)
    twin_after = peft_names(backend.plain_params(after))
    logit_diff = float(np.max(np.abs(enc_logits - np.array(twin_logits))))
    exported_diff = _max_diff(enc_adapter, twin_after)
    # the parameters as trained (what the ciphertexts hold): with a standardized head, its weights in
    # standardized coordinates; the exported plain head multiplies their error by 1/std (ours)
    hs = backend.fns.head_std
    trained_enc = dict(enc_adapter)
    if hs is not None:
        trained_enc["classifier.weight"], trained_enc["classifier.bias"] = hs.to_standardized(
            enc_adapter["classifier.weight"], enc_adapter["classifier.bias"]
        )
    step_diff = _max_diff(trained_enc, peft_names(backend.model.plain_params(after)))
    verdict = aud.summary()
    flags = check_ranges(twin, examples, init)
    res = {
        "model": _model_info(cfg, backend),
        "examples": [{"text": t, "label": y} for t, y in pairs],
        "logits_encrypted": enc_logits.tolist(),
        "logits_twin": [z.tolist() for z in twin_logits],
        "loss_encrypted": losses,
        "loss_twin": float(np.mean(twin_losses)),
        "logit_max_abs_diff": logit_diff,
        "step_max_abs_diff": step_diff,
        "step_max_abs_diff_exported": exported_diff,
        "head_standardized": hs is not None,
        "tolerance": TOLERANCE,
        "model_owner_saw_plaintext": verdict["model_owner_saw_plaintext"],
        "audit": verdict,
        "range_flags": [f.__dict__ for f in flags],
        "seconds": time.perf_counter() - t0,
        "step_seconds": step_s,
        "refresh_round_trips": step_cost["refresh_round_trips"],
        "bytes_up": step_cost["bytes_up"],
        "bytes_down": step_cost["bytes_down"],
        "step_cost": step_cost,
        "session_totals": _totals(ledger),
        "key_upload_bytes": do.key_upload_bytes,
        "calibration": {
            "max_abs_value": backend.calibration.max_abs_value,
            "rounds": backend.calibration.rounds,
        },
    }
    res["pass"] = bool(
        logit_diff <= TOLERANCE and step_diff <= TOLERANCE and not res["model_owner_saw_plaintext"]
    )
    return res


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """max |a - b| over ``b``'s tensors (a missing one is an error: a KeyError)."""
    return max(float(np.max(np.abs(np.asarray(a[k]) - b[k]))) for k in b)


def _say(progress: bool) -> Callable[[str], None]:
    import sys

    return (
        (lambda msg: print(f"[privtuner] {msg}", file=sys.stderr, flush=True))
        if progress
        else (lambda _m: None)
    )


# --- finetune / evaluate ---------------------------------------------------------------------------------


def finetune(
    cfg: PrivTunerConfig,
    out: Path,
    limit: int,
    epochs: int = 1,
    eval_limit: int = 0,
    policy: EndPolicy = EndPolicy.EXPORT,
    data_dir: str | Path | None = None,
    server: str | None = None,
    certs: str | Path | None = None,
    progress: bool = True,
    checkpoint: CheckpointDir | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Encrypted fine-tuning (batch 1, SGD) on the first ``limit`` SST-2 training examples.

    With ``checkpoint`` the data owner keeps a sealed checkpoint after every step
    (:mod:`p3eft.privtuner.checkpoint`); ``resume`` continues the run it holds (same settings, new
    session, next step)."""
    from p3eft.privtuner.wiring import BertBackend, BertCodec, export_base

    if resume and checkpoint is None:
        raise P3eftError("--resume needs a checkpoint folder")
    if checkpoint is not None:
        checkpoint.check_start(resume)
    saved = checkpoint.load() if resume and checkpoint is not None else None
    train_set = _sst2("train", limit, data_dir)
    dev = _sst2("eval", eval_limit, data_dir) if eval_limit else []
    backend = None if server else BertBackend(cfg, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"model": _model_info(cfg, backend), "policy": policy.value, "server": server}
    keys = saved.keys if saved is not None else None
    state_key = checkpoint.in_process_state_key() if checkpoint is not None and backend is not None else None
    with data_owner(
        BertCodec,
        DataOwnerConfig(lr=cfg.lr),
        backend,
        server,
        certs,
        keys=keys,
        state_key=state_key,
        end_policy=policy,
    ) as (do, _):
        if policy is EndPolicy.EXPORT and do.setup.end_policy is EndPolicy.ENCRYPTED:
            raise P3eftError(
                "this model owner keeps the adapter encrypted (its end policy is 'encrypted'): "
                "run with --end encrypted"
            )
        res["model"].update({k: do.setup.model["config"][k] for k in ("model", "layers", "max_len")})
        run_id = {
            "model": do.setup.model["config"],
            "train_examples": len(train_set),
            "epochs": epochs,
            "seed": cfg.seed,
            "lr": cfg.lr,
            "batch": 1,
        }
        record = TrainRecord()
        if saved is not None:
            check_same_run(saved.run, run_id)
            do.restore(saved.state)
            record = TrainRecord(**saved.progress)
            res["resumed_after_step"] = len(record.losses)
        after_step = None
        if checkpoint is not None:
            store = checkpoint

            def after_step(rec: TrainRecord) -> None:
                store.save(do.key_material(), do.checkpoint(), run_id, rec.to_dict())

        cb, close = _bar(progress, "encrypted training")
        try:
            rec = train(do, batches(train_set, 1, epochs, cfg.seed), cb, record, after_step)
        finally:
            close()
        res["train"] = {"examples": len(train_set), "epochs": epochs, **rec.to_dict()}
        if dev:
            cb, close = _bar(progress, "encrypted inference")
            try:
                res["eval"] = {"split": "dev", **evaluate(do, dev, cb)}
            finally:
                close()
        if policy is EndPolicy.EXPORT:
            adapter = do.decrypt_adapter()
            meta = {"config": do.setup.model["config"], "dataset": "sst2", "train_examples": len(train_set)}
            folder = export_adapter(
                export_base(do.setup.model), adapter, out / "adapter", cfg.lora_rank, cfg.lora_alpha, meta
            )
            res["adapter"] = str(folder)
        res["totals"] = _totals(do.ledger)
        res["key_upload_bytes"] = do.key_upload_bytes
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    return res


def evaluate_encrypted(
    cfg: PrivTunerConfig,
    limit: int,
    train_limit: int = 0,
    data_dir: str | Path | None = None,
    server: str | None = None,
    certs: str | Path | None = None,
    progress: bool = True,
    checkpoint: CheckpointDir | None = None,
) -> dict[str, Any]:
    """Two-party inference with an encrypted adapter: the one a ``finetune`` run left in
    ``checkpoint`` (its keys, and its adapter restored into a new session), or the new session's own
    after ``train_limit`` encrypted steps."""
    from p3eft.privtuner.wiring import BertBackend, BertCodec

    if checkpoint is not None and train_limit:
        raise P3eftError("--checkpoint evaluates a trained adapter: it takes no --train-limit")
    saved = checkpoint.load() if checkpoint is not None else None
    dev = _sst2("eval", limit, data_dir)
    backend = None if server else BertBackend(cfg, data_dir)
    res: dict[str, Any] = {"model": _model_info(cfg, backend), "server": server}
    kept = {}
    if saved is not None:
        kept = {"keys": saved.keys}
        if backend is not None:  # in process: the model owner that issued the checkpoint, restarted
            policy = EndPolicy.ENCRYPTED if "sealed" in saved.state else EndPolicy.EXPORT
            kept.update(state_key=checkpoint.in_process_state_key(), end_policy=policy)
    with data_owner(BertCodec, DataOwnerConfig(lr=cfg.lr), backend, server, certs, **kept) as (do, _):
        if saved is not None:
            check_same_run(saved.run.get("model", {}), do.setup.model["config"])  # the adapter's model
            do.restore(saved.state)
            res["checkpoint"] = {"steps": len(saved.progress.get("losses", [])), "run": saved.run}
        if train_limit:
            cb, close = _bar(progress, "encrypted training")
            try:
                rec = train(do, batches(_sst2("train", train_limit, data_dir), 1, 1, cfg.seed), cb)
            finally:
                close()
            res["train"] = {"examples": train_limit, **rec.to_dict()}
        cb, close = _bar(progress, "encrypted inference")
        try:
            res["eval"] = {"split": "dev", **evaluate(do, dev, cb)}
        finally:
            close()
        res["totals"] = _totals(do.ledger)
    return res


def evaluate_exported(
    folder: Path, limit: int, data_dir: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Plaintext evaluation of an exported adapter, loaded with plain peft."""
    import torch

    from p3eft.privtuner.wiring import Tokens, export_base

    meta = exported_meta(folder)
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise P3eftError(f"{folder}: the export has no model configuration")
    model = load_exported(export_base({"config": cfg}), folder)
    vocab = int(model.config.vocab_size)
    tokens = Tokens(
        cfg["model"], vocab, int(model.config.pad_token_id or 0), int(cfg["max_len"]), int(cfg["max_len"])
    )
    dev = _sst2("eval", limit, data_dir)
    preds, logits = [], []
    t0 = time.perf_counter()
    cb, close = _bar(progress, "plaintext inference")
    try:
        with torch.no_grad():
            for i, (text, _) in enumerate(dev):
                ex = tokens.example(text)
                ids = torch.as_tensor(ex.ids[: ex.length])[None, :]
                z = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].double().numpy()
                logits.append(z.tolist())
                preds.append(int(np.argmax(z)))
                if cb:
                    cb(i + 1, len(dev), "")
    finally:
        close()
    correct = sum(int(p == y) for p, (_, y) in zip(preds, dev, strict=True))
    return {
        "adapter": str(folder),
        "model": cfg,
        "eval": {
            "split": "dev",
            "examples": len(dev),
            "accuracy": correct / len(dev),
            "predictions": preds,
            "logits": logits,
            "seconds": time.perf_counter() - t0,
        },
    }


# --- bench -------------------------------------------------------------------------------------------------


def bench(
    model: str,
    layers: int,
    max_len: int,
    rank: int,
    alpha: float,
    param_sets: list[str] | None,
    repeats: int,
    seed: int = 0,
    data_dir: str | Path | None = None,
    progress: bool = True,
    command: str = "p3eft privtuner bench",
    workers: int = 1,
    rotation_keys: str = "exact",
) -> dict[str, Any]:
    """The step-cost file for every parameter set (see :mod:`p3eft.privtuner.bench`); ``workers`` > 1
    gives the model owner a kernel pool of that many processes; ``rotation_keys`` is the data owner's
    Galois key policy (:mod:`p3eft.fhe.galois`)."""
    from p3eft.privtuner.bench import BenchCase, step_cost_file, table
    from p3eft.privtuner.encrypted import ChainTooShallowError
    from p3eft.privtuner.wiring import BertBackend, BertCodec, settings

    names = param_sets or list(PRIVTUNER_PARAM_SETS)
    say = _say(progress)
    cases, info, excluded = [], {}, {}
    for name in names:
        cfg = settings(
            model=model,
            layers=layers,
            max_len=max_len,
            rank=rank,
            alpha=alpha,
            param_set=name,
            seed=seed,
            rotation_keys=rotation_keys,
        )
        say(f"{name}: loading {model} and calibrating")
        try:
            backend = BertBackend(cfg, data_dir)
        except ChainTooShallowError as err:
            if param_sets:  # named by the user: their error, said in one line
                raise
            say(f"{name}: skipped: {err}")
            excluded[name] = str(err)
            continue
        info = {
            "name": model,
            "layers": layers,
            "max_len": max_len,
            "hidden": backend.model.weights.hidden,
            "lora_rank": rank,
        }
        cases.append(BenchCase(name, backend, BertCodec, workers))
    if not cases:
        raise P3eftError(f"no parameter set can run {model}: " + "; ".join(excluded.values()))
    examples = _sst2("train", max(2, repeats), data_dir)
    costs = step_cost_file(cases, info, examples, repeats, command, progress=say)
    if excluded:  # the default sets this model cannot run, and why
        costs["excluded_param_sets"] = excluded
    return {"costs": costs, "table": table(costs)}
