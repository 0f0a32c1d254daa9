"""The PrivTuner experiment on SST-2 (docs/results/privtuner/): plaintext LoRA, the approximate twin,
and encrypted fine-tuning and inference through the real protocol (ours).

Phases, each written to the JSON as it runs (a long run that is stopped keeps what finished, with
its true sizes):

1. ``plain_twin``: the exact model (plaintext LoRA in torch + peft, float64) and the approximate twin,
   trained by the same minibatch SGD on the same ``train`` SST-2 training examples in the same
   seeded order from the same initial adapter; dev accuracy of both on the first ``dev`` dev
   examples (872 = all), with 95% Wilson intervals and the agreement of their predictions.
2. ``encrypted_train``: the data owner fine-tunes under encryption (in-process model owner, the
   protocol's roles) on the first ``enc_train`` examples of the same schedule; the twin runs the same
   steps from the same initial adapter; per-step losses of both and their difference.
3. ``encrypted_eval``: encrypted inference with the trained, still-encrypted adapter on the first
   ``enc_eval`` dev examples; accuracy and agreement with the twin's predictions (twin trained in
   phase 2 on the same examples, and the twin on the encrypted model's own decrypted parameters),
   in this process or, with ``eval_procs`` > 1, in processes restored from the sealed checkpoint
   (:mod:`p3eft.privtuner.encrypted_eval`); the decrypted adapter is kept as a PEFT folder. Phase 2 then
   runs in a spawned process of its own (:func:`train_in_own_process`), whose memory is gone when
   phase 3's processes start.

The training recipe (ours) is one the encrypted protocol runs as it is: each step averages the
gradients of ``batch`` examples (the data owner sends dL/dlogits / batch per example, the model owner
accumulates the encrypted gradients and applies one SGD update: ``DataOwner.train_step`` on a list),
over ``epochs`` passes through the data, each pass in its own seeded random order.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.errors import P3eftError
from p3eft.privtuner.checkpoint import check_same_run, run_checkpoint
from p3eft.privtuner.config import PrivTunerConfig
from p3eft.privtuner.encrypted_eval import MAX_PROCS
from p3eft.privtuner.roles import MAX_WORKERS
from p3eft.privtuner.standardize import HeadStandardizer

PHASES = ("plain_twin", "encrypted_train", "encrypted_eval")
HOW_RUN = ("eval_procs", "workers")  # options a resumed run may change: how it runs, not what it is
PROCS_NEED_CHECKPOINT = (
    "--eval-procs > 1: each process is restored from the sealed checkpoint of phase 2; set "
    "P3EFT_CHECKPOINT_PASSPHRASE for the whole run"
)
OPTIMIZERS = ("sgd", "adam")


@dataclass
class ExperimentConfig:
    model: str = "minilm-l6"
    layers: int = 2
    max_len: int = 64
    rank: int = 8
    alpha: float = 8.0
    lr: float = 1e-3  # SGD at batch 1 with the standardized head (docs/results/privtuner/sgd_std)
    param_set: str | None = None
    seed: int = 0
    train: int = 1000  # phase 1 training examples (the first ones of SST-2's training file)
    epochs: int = 1  # passes over them, each in its own seeded order
    batch: int = 1  # examples whose gradients one update averages
    optimizer: str = "sgd"  # "sgd": the protocol's encrypted update; "adam": plaintext phases only (ours)
    dev: int = 872  # phase 1 dev examples, for plaintext LoRA and the twin alike (872 = all)
    enc_train: int = 64  # phase 2 encrypted training examples (the schedule's first ones)
    enc_eval: int = 200  # phase 3 encrypted dev examples
    phases: tuple[str, ...] = ("plain_twin", "encrypted_train", "encrypted_eval")
    head_standardize: bool = True  # the classifier's input standardized (p3eft.privtuner.standardize)
    # phase 3's processes (ours): > 1 runs the encrypted dev inferences side by side, each process a
    # data owner restored from the sealed checkpoint (p3eft.privtuner.encrypted_eval); not a setting of
    # the run: a resumed run may change it
    eval_procs: int = 1
    # the model owner's process pool for its plaintext-weight products (p3eft.fhe.parallel.KernelPool),
    # in phases 2 and 3; not a setting of the run either
    workers: int = 1

    def __post_init__(self) -> None:
        for name in ("train", "epochs", "batch", "dev"):
            if getattr(self, name) < 1:
                raise P3eftError(f"--{name} must be at least 1")
        if self.enc_train < 0 or self.enc_eval < 0:
            raise P3eftError("--enc-train and --enc-eval must not be negative")
        if not 1 <= self.eval_procs <= MAX_PROCS:
            raise P3eftError(f"--eval-procs must be from 1 to {MAX_PROCS}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise P3eftError(f"--workers must be from 1 to {MAX_WORKERS}")
        if self.optimizer not in OPTIMIZERS:
            raise P3eftError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        unknown = set(self.phases) - set(PHASES)
        if unknown:
            raise P3eftError(f"unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")


def schedule(n: int, epochs: int, batch: int, seed: int) -> list[list[int]]:
    """The minibatches, as indices into the ``n`` training examples: every epoch a fresh seeded
    permutation cut into consecutive batches of ``batch`` (the last one may be smaller)."""
    out: list[list[int]] = []
    for ep in range(epochs):
        order = np.random.default_rng([seed, 0x55, ep]).permutation(n)
        out += [[int(i) for i in order[s : s + batch]] for s in range(0, n, batch)]
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, float(c - h)), min(1.0, float(c + h)))


def _finite(x: Any) -> Any:
    """NaN and infinities as null: strict JSON has no NaN (a diverged twin's losses are NaN)."""
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _write(path: Path, res: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(res), indent=2, default=str))
    tmp.replace(path)


def compare(phase: dict[str, Any]) -> dict[str, Any]:
    """Twin against plaintext LoRA from the stored losses and predictions: prediction agreement,
    accuracy gap, per-example loss differences up to the twin's first non-finite loss (null in the
    JSON: a value left its approximation's range and the arithmetic diverged)."""
    p, t = phase["plain"], phase["twin"]
    pp, tp = np.array(p["predictions"]), np.array(t["predictions"])
    tl = np.array([np.nan if v is None else v for v in t["losses"]], dtype=float)
    pl = np.array(p["losses"], dtype=float)[: len(tl)]
    bad = np.flatnonzero(~np.isfinite(tl))
    first_bad = int(bad[0]) if bad.size else None
    upto = len(tl) if first_bad is None else first_bad
    diff = np.abs(pl[:upto] - tl[:upto])
    windows = [
        {"examples": [a, min(a + 64, upto)], "max": float(diff[a : a + 64].max())} for a in range(0, upto, 64)
    ]
    return {
        "agreement_twin_plain": float(np.mean(pp == tp)),
        "accuracy_gap_twin_minus_plain": t["dev_accuracy"] - p["dev_accuracy"],
        "twin_first_nonfinite_loss": first_bad,
        "loss_examples_compared": upto,
        "loss_max_abs_diff": float(diff.max()) if upto else None,
        "loss_mean_abs_diff": float(diff.mean()) if upto else None,
        "loss_max_abs_diff_per_64": windows,
    }


def _accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(preds == labels))


def run(
    ecfg: ExperimentConfig,
    out_json: Path,
    data_dir: str | Path | None = None,
    say: Callable[[str], None] = print,
    resume: bool = False,
) -> dict[str, Any]:
    """Run the configured phases, writing ``out_json`` as they go. With the passphrase set
    (:data:`~p3eft.privtuner.checkpoint.PASSPHRASE_ENV`) the encrypted training keeps a sealed
    checkpoint after every update in ``checkpoint/`` beside ``out_json``; ``resume`` continues a run
    from ``out_json`` and that checkpoint: finished phases are kept, the encrypted training goes on
    after its last checkpointed update, the encrypted evaluation after its last written example."""
    from p3eft.data import load_task
    from p3eft.fhe.costs import machine_info
    from p3eft.privtuner.twin import Twin
    from p3eft.privtuner.wiring import BertBackend, settings

    cfg: PrivTunerConfig = settings(
        model=ecfg.model,
        layers=ecfg.layers,
        max_len=ecfg.max_len,
        rank=ecfg.rank,
        alpha=ecfg.alpha,
        lr=ecfg.lr,
        param_set=ecfg.param_set,
        seed=ecfg.seed,
        head_standardize=ecfg.head_standardize,
    )
    checkpoint = run_checkpoint(out_json.parent / "checkpoint", resume)
    if checkpoint is None and ecfg.eval_procs > 1 and "encrypted_eval" in ecfg.phases:
        raise P3eftError(PROCS_NEED_CHECKPOINT)  # now, not after hours of phase 2 without checkpoints
    res: dict[str, Any] = {
        "config": asdict(ecfg),
        "privtuner_config": cfg.to_dict(),
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "phases_done": [],
    }
    if resume:
        res = _resumed(out_json, res)
    say("model owner: loading and calibrating")
    backend = BertBackend(cfg, data_dir)
    model = backend.model
    res["calibration"] = {
        "examples": "last 16 sentences of the SST-2 training file (public calibration text, ours)",
        "max_abs_value": backend.calibration.max_abs_value,
        "head_std": None if backend.fns.head_std is None else backend.fns.head_std.describe(),
        "rounds": backend.calibration.rounds,
        "flags": len(backend.calibration.flags),
    }
    res["weights"] = {"random": bool(model.weights.weights_random), "source": model.weights.source}
    tokens = backend.tokens
    train_task = load_task("sst2", "train", data_dir=data_dir)
    dev_task = load_task("sst2", "eval", data_dir=data_dir)
    init = backend.initial_params(seed=cfg.seed)
    twin = Twin(model, backend.fns)
    _write(out_json, res)

    train_all = train_task.examples[: ecfg.train]
    steps = schedule(len(train_all), ecfg.epochs, ecfg.batch, ecfg.seed)
    if "plain_twin" in ecfg.phases and "plain_twin" not in res["phases_done"]:
        train = [tokens.example(e.text, e.label) for e in train_all]
        dev = [tokens.example(e.text, e.label) for e in dev_task.examples[: ecfg.dev]]
        labels = np.array([e.label for e in dev])
        phase: dict[str, Any] = {
            "train_examples": len(train),
            "train_label_balance": float(np.mean([e.label for e in train])),
            "epochs": ecfg.epochs,
            "batch": ecfg.batch,
            "updates": len(steps),
            "dev_examples": len(dev),
            "dev_label_balance": float(np.mean(labels)),
            "optimizer": ecfg.optimizer,
        }
        res["plain_twin"] = phase

        def partial(name: str) -> Callable[[list[float]], None]:
            def note(losses: list[float]) -> None:
                phase[name] = {"losses": list(losses), "examples_done": len(losses), "finished": False}
                _write(out_json, res)

            return note

        opt = ecfg.optimizer
        # each model standardizes its head by its own features on the calibration text: the twin (and the
        # encrypted path) by the approximate twin's, plaintext LoRA by the exact model's (ours; the
        # approximations shift the pooled features by about one spread, so one set of constants
        # would not standardize both)
        hs = plain_standardizer(backend, data_dir)
        init_plain = model.reparametrize_head(init, backend.fns.head_std, hs)
        if hs is not None:
            res["calibration"]["head_std_plain"] = hs.describe()
        flag_log: list[int] = []  # the twin's range flags so far, after each training update
        runs = [
            ("plain", lambda: plain_lora(cfg, backend, init_plain, train, dev, steps, opt, head_std=hs)),
            (
                "twin",
                lambda: twin_run(
                    twin,
                    init,
                    train,
                    dev,
                    steps,
                    cfg.lr,
                    partial("twin"),
                    say,
                    optimizer=opt,
                    flags_log=flag_log,
                ),
            ),
        ]
        if opt != "sgd":  # the protocol's update on the same schedule, plaintext LoRA only (cheap)
            runs.insert(
                1,
                (
                    "plain_sgd",
                    lambda: plain_lora(cfg, backend, init_plain, train, dev, steps, "sgd", head_std=hs),
                ),
            )
        for name, fn in runs:
            t0, c0 = time.perf_counter(), time.process_time()
            say(f"phase 1: training the {name} model: {len(steps)} updates over {len(train)} examples")
            losses, preds = fn()
            k = int(np.sum(preds == labels))
            phase[name] = {
                "losses": losses,
                "dev_examples": len(preds),
                "dev_correct": k,
                "dev_accuracy": k / len(preds),
                "dev_accuracy_wilson95": wilson(k, len(preds)),
                "predicted_positive": float(np.mean(preds)),
                "predictions": preds.tolist(),
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0,
                "finished": True,
            }
            say(f"phase 1: {name} dev accuracy {phase[name]['dev_accuracy']:.4f} on {len(preds)}")
            _write(out_json, res)
        phase.update(compare(phase))
        phase["range_flags_twin"] = len(twin.flags)
        phase["range_flags_twin_training"] = flag_log[-1] if flag_log else 0
        phase["twin_first_flagged_update"] = next((i for i, n in enumerate(flag_log) if n), None)
        phase["range_flag_sites"] = sorted({f.site for f in twin.flags})
        # above 1: some value outgrew the refresh bound calibrated at the initial adapter, and a refresh
        # of it would hide it with lambda - log2(ratio) bits (an upper bound over every operation)
        phase["twin_max_value_over_refresh_bound"] = twin.bound_ratio
        res["phases_done"].append("plain_twin")
        _write(out_json, res)

    if "encrypted_train" in ecfg.phases or "encrypted_eval" in ecfg.phases:
        from p3eft.privtuner import accounting
        from p3eft.privtuner.encrypted_eval import in_process_data_owner

        enc_steps = _first_examples(steps, ecfg.enc_train)
        n_enc = sum(len(b) for b in enc_steps)
        saved = checkpoint.load() if checkpoint is not None and checkpoint.exists() else None
        run_id = {"experiment": _run_settings(ecfg) | {"phases": None}, "enc_steps": enc_steps}
        if saved is not None:
            check_same_run(saved.run, run_id)
        params = init
        phase = {
            "update": "sgd",  # the protocol's update, whatever phase 1's optimizer
            "examples": n_enc,
            "updates": len(enc_steps),
            "batch": ecfg.batch,
            "enc_losses": [],
            "twin_losses": [],
            "step_costs": [],
        }
        if saved is not None:
            params = _twin_params(saved.progress)
            phase = saved.progress["phase"]
            say(f"phase 2: resumed after step {phase.get('steps_done', 0)} of {len(enc_steps)}")
        res["encrypted_train"] = phase
        train_left = "encrypted_train" in ecfg.phases and phase.get("steps_done", 0) < len(enc_steps)
        if train_left and ecfg.eval_procs > 1 and "encrypted_eval" in ecfg.phases:
            saved = None
            say("phase 2: in a process of its own (phase 3's processes will need its memory)")
            train_in_own_process(ecfg, out_json, data_dir)
            trained = json.loads(out_json.read_text())
            for key in ("encrypted_train", "phases_done", "key_upload_bytes", "totals"):
                if key in trained:
                    res[key] = trained[key]
            phase = res["encrypted_train"]
            params = _twin_params(checkpoint.load().progress)
            train_left = False
        do = None  # this process's own data owner: to train, and to evaluate without helper processes
        if train_left or ("encrypted_eval" in ecfg.phases and ecfg.eval_procs == 1):
            state_key = None if checkpoint is None else checkpoint.in_process_state_key()
            do = in_process_data_owner(cfg, backend, state_key, ecfg.workers, saved)  # ``saved``: loaded once
            res["key_upload_bytes"] = do.key_upload_bytes
        saved = None  # its keys (GBs at N=16384) live on in ``do`` if needed, else in phase 3's processes
        t0, c0 = time.perf_counter() - phase.get("seconds", 0.0), time.process_time()
        c_before = phase.get("cpu_seconds_this_process", 0.0)
        if train_left:
            for i in range(phase.get("steps_done", 0), len(enc_steps)):
                idx = enc_steps[i]
                batch = [(train_all[j].text, train_all[j].label) for j in idx]
                before = do.ledger.snapshot()
                loss = do.train_step(batch, keys=[f"train-{j}" for j in idx])
                phase["step_costs"].append(accounting.diff(do.ledger.snapshot(), before))
                tls, params = twin_update(twin, [tokens.example(t, y) for t, y in batch], params, cfg.lr)
                tl = float(np.mean(tls))
                phase["enc_losses"].append(loss)
                phase["twin_losses"].append(tl)
                phase["steps_done"] = i + 1
                phase["seconds"] = time.perf_counter() - t0
                phase["cpu_seconds_this_process"] = c_before + time.process_time() - c0
                phase["max_abs_loss_diff"] = float(
                    np.max(np.abs(np.subtract(phase["enc_losses"], phase["twin_losses"])))
                )
                if checkpoint is not None:
                    progress = {"phase": phase, "twin_params": {k: v.tolist() for k, v in params.items()}}
                    checkpoint.save(do.key_material(), do.checkpoint(), run_id, progress)
                say(f"phase 2: step {i + 1}/{len(enc_steps)} loss enc {loss:.5f} twin {tl:.5f}")
                _write(out_json, res)
        if phase.get("steps_done") == len(enc_steps) and "encrypted_train" not in res["phases_done"]:
            res["phases_done"].append("encrypted_train")
        _write(out_json, res)
        if do is not None and ecfg.eval_procs > 1:  # phase 3's processes restore from the checkpoint
            res["totals"] = _totals(do)
            do.close()
            do = None

        if "encrypted_eval" in ecfg.phases:
            encrypted_dev_eval(ecfg, cfg, res, out_json, do, checkpoint, backend, twin, params, say, data_dir)
        if do is not None:
            res["totals"] = _totals(do)
            do.close()
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write(out_json, res)
    return res


def encrypted_dev_eval(
    ecfg: ExperimentConfig,
    cfg: PrivTunerConfig,
    res: dict[str, Any],
    out_json: Path,
    do: Any,
    checkpoint: Any,
    backend: Any,
    twin: Any,
    params: dict[str, np.ndarray],
    say: Callable[[str], None],
    data_dir: str | Path | None,
) -> None:
    """Phase 3: encrypted inference of the first ``enc_eval`` dev sentences with the adapter phase 2
    trained, by this process's data owner ``do`` or (``eval_procs`` > 1) by processes restored from
    ``checkpoint``; written after every sentence, in dev order, so ``--resume`` goes on after the last."""
    from p3eft.data import load_task
    from p3eft.privtuner import encrypted_eval as ee

    tokens = backend.tokens
    dev_pairs = [
        (e.text, e.label) for e in load_task("sst2", "eval", data_dir=data_dir).examples[: ecfg.enc_eval]
    ]
    ev: dict[str, Any] = res.get("encrypted_eval") or {
        "examples": 0,
        "predictions": [],
        "twin_predictions": [],
        "labels": [],
    }
    res["encrypted_eval"] = ev
    todo = [(i, text) for i, (text, _) in enumerate(dev_pairs)][ev["examples"] :]
    if ecfg.eval_procs == 1:
        source = ee.in_this_process(do, todo)
    elif not todo:
        source = iter(())
    else:
        if checkpoint is None or not checkpoint.exists():
            raise P3eftError(PROCS_NEED_CHECKPOINT)
        say(f"phase 3: {len(todo)} dev sentences over {ecfg.eval_procs} processes")
        source = ee.in_processes(cfg, checkpoint.folder, todo, ecfg.eval_procs, data_dir)
    same_logits = ev.setdefault("twin_same_params_logits", [])
    costs = ev.setdefault("costs", [])
    same: dict[str, np.ndarray] | None = None
    t0 = time.perf_counter() - ev.get("seconds", 0.0)
    for item in ee.in_index_order(source, ev["examples"]):
        if isinstance(item, ee.Adapter):
            # the reference that isolates inference error (ours): the twin on the encrypted model's own
            # parameters, which the data owner decrypts (it holds the key; the experiment runs the export
            # policy) and keeps as a PEFT folder. The twin trained beside it differs by the trainings'
            # divergence too.
            same = backend.params_from_export(item.named)
            meta = {
                "config": {k: v for k, v in cfg.to_dict().items() if k != "extra"},
                "dataset": "sst2",
                "train_examples": res["encrypted_train"]["examples"],
                "trained": "under encryption (phase 2 of the experiment), decrypted by the data owner",
            }
            folder = ee.export_once(out_json.parent / "adapter", item.named, cfg, meta)
            ev["adapter"] = folder.name
            for text, label in dev_pairs[len(same_logits) : ev["examples"]]:  # examples done before
                same_logits.append(twin.logits(tokens.example(text, label), same).tolist())
            continue
        if same is None:
            raise P3eftError("phase 3: an inference arrived before the adapter")
        i = item.index
        text, label = dev_pairs[i]
        ex = tokens.example(text, label)
        z = np.asarray(item.logits)
        zt = twin.logits(ex, params)
        ev["predictions"].append(int(np.argmax(z)))
        ev["twin_predictions"].append(int(np.argmax(zt)))
        ev["labels"].append(int(label))
        ev.setdefault("logits", []).append(z.tolist())
        same_logits.append(twin.logits(ex, same).tolist())
        costs.append(item.costs)
        ev["max_abs_logit_diff"] = max(ev.get("max_abs_logit_diff", 0.0), float(np.max(np.abs(z - zt))))
        ev["examples"] = i + 1
        p, tp, y = (np.array(ev[k]) for k in ("predictions", "twin_predictions", "labels"))
        ev["accuracy"], ev["twin_accuracy"] = _accuracy(p, y), _accuracy(tp, y)
        ev["agreement_with_twin"] = float(np.mean(p == tp))
        ev.update(same_params_agreement(ev))
        ev["mean_costs"] = ee.summary_costs(costs)
        ev["procs"] = ecfg.eval_procs
        ev["seconds"] = time.perf_counter() - t0
        if (i + 1) % 5 == 0 or i + 1 == len(dev_pairs):
            say(
                f"phase 3: {i + 1}/{len(dev_pairs)} acc {ev['accuracy']:.3f} agree {ev['agreement_with_twin']:.3f}"
            )
        _write(out_json, res)
    if ev["examples"] == len(dev_pairs) and "encrypted_eval" not in res["phases_done"]:
        res["phases_done"].append("encrypted_eval")
    _write(out_json, res)


def train_in_own_process(ecfg: ExperimentConfig, out_json: Path, data_dir: str | Path | None) -> None:
    """Phase 2 of this run in a spawned process of its own, which resumes it from ``out_json`` and
    the sealed checkpoint, trains to the end and exits (ours). Why: after minilm-l6's phase 2 the
    process that ran it still held 8.9 GB resident with its data owner closed (SEAL's memory pool, we
    take it, keeps what it allocated until the process ends), and phase 3's processes, started beside
    it, were killed for memory on a 23 GB machine. Its progress goes to stderr; a failure is one error."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    only_train = replace(ecfg, phases=("encrypted_train",))
    args = (only_train, str(out_json), None if data_dir is None else str(data_dir), send)
    # not daemonic: with --workers > 1 it starts the model owner's process pool
    child = ctx.Process(target=_train_child, args=args, name="p3eft-phase-2")
    child.start()
    send.close()
    try:
        child.join()
    finally:
        if child.is_alive():
            child.terminate()
            child.join(timeout=30)
    message = child_failure(receive, child.exitcode)
    if message is not None:
        raise P3eftError(message)


def child_failure(receive: Any, exitcode: int | None) -> str | None:
    """What went wrong in phase 2's process, from its pipe and its exit code (None: nothing). A
    process killed by a signal (the OOM killer) sent nothing and closed its end: the pipe polls
    readable and reading it hits EOF, which is the exit code's to explain, not an error of its own."""
    try:
        message = receive.recv() if receive.poll() else None
    except EOFError:
        message = None
    if message is None and exitcode != 0:
        killed = exitcode is not None and exitcode < 0
        how = f"was killed (signal {-exitcode}; for memory?)" if killed else f"failed (exit code {exitcode})"
        message = f"phase 2's process {how}"
    return message


def _train_child(ecfg: ExperimentConfig, out_json: str, data_dir: str | None, send: Any) -> None:
    from p3eft.fhe.parallel import start_parent_watch

    start_parent_watch()  # a killed experiment leaves no phase 2 behind
    try:
        run(ecfg, Path(out_json), data_dir, say=say_stderr, resume=True)
    except P3eftError as err:
        send.send(str(err))
        raise SystemExit(2) from None
    send.send(None)


def say_stderr(msg: str) -> None:
    """The experiment's progress line: time-stamped, on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _twin_params(progress: dict[str, Any]) -> dict[str, np.ndarray]:
    """The twin's adapter as phase 2's checkpoint keeps it (beside the encrypted one)."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in progress["twin_params"].items()}


def _totals(do: Any) -> dict[str, Any]:
    return {k: v for k, v in do.ledger.snapshot().items() if k != "per_method"}


def _run_settings(ecfg: ExperimentConfig) -> dict[str, Any]:
    """The settings that make a run what it is (a resume must keep them); not how it is run."""
    return {k: v for k, v in asdict(ecfg).items() if k not in HOW_RUN}


def same_params_agreement(ev: dict[str, Any]) -> dict[str, Any]:
    """Phase 3 against the twin on the encrypted model's own (decrypted) parameters: the agreement of
    their predictions, and the largest logit difference where the encrypted logits were kept (runs
    before 2026-12-01 kept only the predictions of their first examples)."""
    p = np.array(ev["predictions"])
    same = np.array(ev["twin_same_params_logits"])[: len(p)]
    out: dict[str, Any] = {
        "twin_same_params_predictions": [int(i) for i in np.argmax(same, axis=1)],
        "agreement_with_twin_same_params": float(np.mean(p == np.argmax(same, axis=1))),
    }
    kept = ev.get("logits", [])
    if kept:
        z = np.array(kept)
        out["max_abs_logit_diff_same_params"] = float(np.max(np.abs(z - same[len(p) - len(z) :])))
        out["logit_diff_same_params_examples"] = len(z)
    return out


def _resumed(out_json: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The results of the run being resumed (its finished phases kept), checked to be this run's."""
    if not out_json.is_file():
        raise P3eftError(f"--resume: {out_json} does not exist")
    old = json.loads(out_json.read_text())
    ignore = dict.fromkeys(("phases", *HOW_RUN))  # how the run is run, not what it is
    if json.loads(json.dumps(fresh["config"])) | ignore != old.get("config", {}) | ignore:
        raise P3eftError(f"--resume: {out_json} is of a run with other settings")
    old["config"] = fresh["config"]
    old.setdefault("resumed", []).append(fresh["started"])
    return old


def _first_examples(steps: list[list[int]], n: int) -> list[list[int]]:
    """The schedule's first ``n`` examples, still grouped in its minibatches (the last one cut)."""
    out, left = [], n
    for b in steps:
        if left <= 0:
            break
        out.append(b[:left])
        left -= len(out[-1])
    return out


ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


class TwinAdam:
    """Adam (Kingma & Ba 2015, torch.optim.Adam's update, no weight decay) on the twin's logical
    matrices, elementwise; a plaintext-only recipe (ours): the protocol's encrypted update is SGD.

    Elementwise Adam on the logical matrices equals Adam on the model's parameters because every
    copy of a replicated parameter entry receives the same gradient (the tests check it against torch)."""

    def __init__(self, lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def __call__(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        b1, b2 = ADAM_BETAS
        self.t += 1
        out = dict(params)
        for k, g in grads.items():
            m = self.m[k] = b1 * self.m.get(k, 0.0) + (1 - b1) * g
            v = self.v[k] = b2 * self.v.get(k, 0.0) + (1 - b2) * g * g
            denom = np.sqrt(v) / np.sqrt(1 - b2**self.t) + ADAM_EPS
            out[k] = params[k] - (self.lr / (1 - b1**self.t)) * m / denom
        return out


def twin_gradients(twin: Any, batch: list, params: dict[str, np.ndarray]) -> tuple[list[float], dict]:
    """The examples' losses and the mean gradient of ``batch``: what the protocol's ``train_step`` on a
    list accumulates (dL/dlogits / len(batch) per example, encrypted gradients summed)."""
    losses, total = [], None
    for ex in batch:
        loss, _, grads = twin.gradients(ex, params)
        losses.append(loss)
        g = {k: v / len(batch) for k, v in grads.items()}
        total = g if total is None else {k: total[k] + g[k] for k in total}
    assert total is not None
    return losses, total


def twin_update(
    twin: Any, batch: list, params: dict[str, np.ndarray], lr: float
) -> tuple[list[float], dict[str, np.ndarray]]:
    """One SGD update of the twin on the mean gradient of ``batch`` (the protocol's update); returns
    the examples' losses and the new parameters."""
    from p3eft.privtuner.twin import Twin

    losses, grads = twin_gradients(twin, batch, params)
    return losses, Twin.sgd(params, grads, lr)


def twin_run(
    twin: Any,
    init: dict[str, np.ndarray],
    train: list,
    dev: list,
    steps: list[list[int]],
    lr: float,
    note: Callable[[list[float]], None] | None = None,
    say: Callable[[str], None] | None = None,
    every: int = 25,
    optimizer: str = "sgd",
    flags_log: list[int] | None = None,
) -> tuple[list[float], np.ndarray]:
    """The approximate twin trained on ``steps`` (minibatches of indices into ``train``) with SGD (the
    protocol's update) or Adam (plaintext only); returns the per-example losses in schedule order and
    the dev predictions. ``note`` gets the losses so far every ``every`` updates (the JSON is written
    as the long run goes); ``flags_log`` gets the twin's range-flag count after every update (where
    the adapter first left the calibrated ranges)."""
    from p3eft.privtuner.twin import Twin

    if optimizer not in OPTIMIZERS:
        raise P3eftError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    update = TwinAdam(lr) if optimizer == "adam" else (lambda p, g: Twin.sgd(p, g, lr))
    params, losses = init, []
    t0 = time.perf_counter()
    for i, idx in enumerate(steps):
        ls, grads = twin_gradients(twin, [train[j] for j in idx], params)
        params = update(params, grads)
        losses += ls
        if flags_log is not None:
            flags_log.append(len(twin.flags))
        if (i + 1) % every == 0 or i + 1 == len(steps):
            if note is not None:
                note(losses)
            if say is not None:
                rate = (time.perf_counter() - t0) / len(losses)
                say(
                    f"phase 1: twin update {i + 1}/{len(steps)}, mean loss of the last {every} updates "
                    f"{np.mean(losses[-every * len(idx) :]):.4f}, {rate:.2f} s/example"
                )
    return losses, twin.predict(dev, params)


def plain_lora(
    cfg: PrivTunerConfig,
    backend: Any,
    init: dict[str, np.ndarray],
    train: list,
    dev: list,
    steps: list[list[int]] | None = None,
    optimizer: str = "sgd",
    float32: bool = False,
    head_std: HeadStandardizer | None = None,
):
    """Plaintext LoRA in torch + peft (float64): the same initial adapter and head, the same
    minibatch updates (SGD, or Adam with torch's defaults) on the same schedule as the twin
    (``steps``: minibatches of indices into ``train``; default one example per update, in order); the
    reference the twin is compared with. Returns the per-example losses in schedule order and the dev
    predictions. ``float32`` only for quick recipe sweeps (benchmarks/privtuner_sst2_recipes.py).

    ``head_std``: the session's head standardization (``init`` is laid out for it); the classifier then
    trains in the same standardized coordinates as the twin (:func:`standardize_classifier`)."""
    import torch

    from p3eft.privtuner.adapter import peft_names
    from p3eft.privtuner.export import peft_model_with
    from p3eft.privtuner.wiring import export_base

    model = peft_model_with(
        export_base(cfg).float() if float32 else export_base(cfg).double(),
        # the head as laid out in ``init``: standardized coordinates when ``head_std`` is given
        peft_names(backend.model.plain_params(init)),
        cfg.lora_rank,
        cfg.lora_alpha,
    )
    if head_std is not None:
        standardize_classifier(model, head_std)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer not in OPTIMIZERS:
        raise P3eftError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr)
    losses = []
    model.eval()  # no dropout: the twin has none (gradients flow in eval mode all the same)
    for idx in steps if steps is not None else [[i] for i in range(len(train))]:
        opt.zero_grad()
        for j in idx:
            ex = train[j]
            ids = torch.as_tensor(ex.ids[: ex.length])[None, :]
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([ex.label]))
            (out.loss / len(idx)).backward()  # the mean gradient of the batch
            losses.append(out.loss.item())
        opt.step()
    preds = []
    with torch.no_grad():
        for ex in dev:
            ids = torch.as_tensor(ex.ids[: ex.length])[None, :]
            preds.append(int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.argmax()))
    return losses, np.array(preds)


def exact_standardizer(model: Any, tokens: Any, data_dir: str | Path | None = None) -> HeadStandardizer:
    """Plaintext LoRA's own head standardization: the exact model's pooled features on the model owner's
    calibration text (the encrypted path's comes from the approximate twin's, in calibration)."""
    from p3eft.privtuner.calibration import pooled_features
    from p3eft.privtuner.twin import Twin
    from p3eft.privtuner.wiring import calibration_examples

    examples = calibration_examples(model, tokens, data_dir=data_dir)
    return HeadStandardizer.from_features(
        pooled_features(Twin(model, exact=True), examples, model.init_params())
    )


def plain_standardizer(backend: Any, data_dir: str | Path | None = None) -> HeadStandardizer | None:
    """:func:`exact_standardizer` for a backend whose head is standardized, else ``None``."""
    if backend.fns.head_std is None:
        return None
    return exact_standardizer(backend.model, backend.tokens, data_dir)


def standardize_classifier(model: Any, head_std: HeadStandardizer) -> None:
    """Feed a peft classification model's head (x - mean) * inv_std instead of x (a forward pre-hook):
    with the head's weights in ``head_std``'s standardized coordinates, the function is the plain
    model's and SGD moves the standardized parameters, as the twin's and the encrypted path's do."""
    import torch

    wrapper = next(mod for name, mod in model.named_modules() if name.endswith("classifier"))
    dtype = next(wrapper.parameters()).dtype
    mean = torch.as_tensor(head_std.mean, dtype=dtype)
    inv = torch.as_tensor(head_std.inv_std, dtype=dtype)
    wrapper.register_forward_pre_hook(lambda mod, args: ((args[0] - mean) * inv, *args[1:]))


def plot(res: dict[str, Any], png: Path) -> None:
    """Loss curves (plain, twin, encrypted vs twin) and dev accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    pt = res.get("plain_twin")
    if pt:
        for name in ("plain", "plain_sgd", "twin"):
            if not pt.get(name, {}).get("losses"):
                continue
            ls = np.array([np.nan if v is None else v for v in pt[name]["losses"]], dtype=float)
            w = max(1, len(ls) // 40)
            axes[0].plot(np.convolve(ls, np.ones(w) / w, mode="valid"), label=f"{name} (moving mean {w})")
        axes[0].set_title(f"phase 1: training loss, {pt['train_examples']} examples, batch {pt['batch']}")
        axes[0].set_xlabel("example (schedule order)")
        axes[0].legend()
    else:
        _not_run(axes[0], "phase 1 (plaintext LoRA and twin) not run")
    et = res.get("encrypted_train")
    if et and et.get("enc_losses"):
        updates = np.arange(1, len(et["enc_losses"]) + 1)
        axes[1].plot(updates[: len(et["twin_losses"])], et["twin_losses"], "o-", label="twin", ms=3)
        axes[1].plot(updates, et["enc_losses"], "x--", label="encrypted", ms=4)
        planned = et.get("updates", len(updates))
        axes[1].set_title(f"phase 2: loss per update, {len(updates)} of {planned} encrypted updates")
        axes[1].set_xlabel(f"update ({et.get('batch', 1)} example(s) each)")
        axes[1].set_xticks(updates)
        axes[1].legend()
    else:
        _not_run(axes[1], "phase 2 (encrypted training) not run")
    bars, names, errs = [], [], []
    for key, label in (("plain", "plain LoRA"), ("plain_sgd", "plain LoRA, SGD"), ("twin", "twin")):
        r = (pt or {}).get(key, {})
        if r.get("finished"):
            lo, hi = r["dev_accuracy_wilson95"]
            bars.append(r["dev_accuracy"])
            errs.append((r["dev_accuracy"] - lo, hi - r["dev_accuracy"]))
            opt = (pt or {}).get("optimizer", "sgd") if key != "plain_sgd" else "sgd"
            names.append(f"{label if key == 'plain_sgd' else f'{label}, {opt}'}\n({r['dev_examples']} dev)")
    ev = res.get("encrypted_eval")
    if ev and ev.get("examples"):
        bars += [ev["twin_accuracy"], ev["accuracy"]]
        errs += [(0.0, 0.0), (0.0, 0.0)]
        names += [f"twin, phase 2\n({ev['examples']} dev)", f"encrypted\n({ev['examples']} dev)"]
    if bars:
        yerr = np.array(errs).T
        axes[2].bar(names, bars, yerr=yerr, capsize=4, color=["C0", "C1", "C2", "C3", "C4"][: len(bars)])
        axes[2].axhline(0.5, color="grey", lw=0.8, ls=":")
        axes[2].set_ylim(0.4, 1.0)
        axes[2].set_title("SST-2 dev accuracy (95% Wilson)")
    else:
        _not_run(axes[2], "no dev accuracy measured")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def _not_run(ax: Any, text: str) -> None:
    """A panel that says what did not run instead of empty axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()


def _optimizer_text(c: dict[str, Any]) -> str:
    if c.get("optimizer", "sgd") == "sgd":
        return "SGD (the update the encrypted protocol runs)"
    return (
        "Adam (torch's update and defaults; plaintext phases only, the encrypted protocol runs SGD: "
        "Adam's elementwise square root and division of encrypted moments are not implemented)"
    )


def markdown(res: dict[str, Any], json_name: str, png_name: str) -> str:
    """A short report of what ran, with its true sizes, and of what did not."""
    c = res["config"]
    lines = [
        "# PrivTuner on SST-2: plaintext LoRA, the approximate twin, encrypted fine-tuning",
        "",
        f"Model `{c['model']}` cut to its first {c['layers']} layers (weights: "
        f"{'RANDOM' if res['weights']['random'] else 'real'}, {res['weights']['source']}), LoRA rank {c['rank']} "
        f"(alpha {c['alpha']}) on query and value of every layer plus the classifier head (pooler on the "
        f"first token, frozen), {c['max_len']} tokens; {_optimizer_text(c)} with lr {c['lr']}, each update averaging the "
        f"gradients of {c['batch']} example(s), {c['epochs']} epoch(s) over the first {c['train']} SST-2 "
        f"training examples, each epoch in its own seeded order (seed {c['seed']}). Data: {json_name}; "
        f"figure: {png_name}. Started {res['started']}, finished {res.get('finished', '(not finished)')}; "
        f"machine: {res['machine'].get('cpu_model')}, {res['machine'].get('cores')} cores (shared with other "
        "work, so wall seconds are inflated; CPU seconds are this process's).",
        "",
    ]
    if res.get("resumed"):
        lines += [f"Resumed (`--resume`) at {', '.join(res['resumed'])}.", ""]
    if res.get("phase1_from"):  # a run that took its finished phase 1 from an earlier run's JSON
        lines += [f"Phase 1 is taken from {res['phase1_from']}.", ""]
    pt = res.get("plain_twin")
    if pt:
        lines += [
            "## Phase 1: plaintext LoRA and the approximate twin, same data",
            "",
            f"Both trained from the same initial adapter on the same {pt['train_examples']} examples "
            f"(positive share {pt['train_label_balance']:.3f}) in the same order: {pt['updates']} updates. "
            f"Dev set: the first {pt['dev_examples']} SST-2 dev examples (positive share "
            f"{pt['dev_label_balance']:.3f})."
            + (
                " Each model's classifier input is standardized by its own pooled features on the model "
                "owner's calibration sentences (ours): plaintext LoRA by the exact model's, the twin by the "
                "approximate twin's (as the encrypted path). Both start as the same function, but their SGD "
                "steps differ, so compare their accuracies, not their losses step by step."
                if res.get("calibration", {}).get("head_std")
                else ""
            ),
            "",
            "| model | dev examples | dev accuracy (95% Wilson) | predicted positive | wall s | CPU s |",
            "|---|---|---|---|---|---|",
        ]
        names = (
            ("plain", f"plaintext LoRA (torch + peft, float64), {pt.get('optimizer', 'sgd')}"),
            ("plain_sgd", "plaintext LoRA, sgd (the protocol's update), same schedule"),
            ("twin", f"approximate twin, {pt.get('optimizer', 'sgd')}"),
        )
        for key, label in names:
            r = pt.get(key)
            if r and r.get("finished"):
                lo, hi = r["dev_accuracy_wilson95"]
                lines.append(
                    f"| {label} | {r['dev_examples']} | {r['dev_accuracy']:.4f} [{lo:.4f}, {hi:.4f}] | "
                    f"{r['predicted_positive']:.3f} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} |"
                )
            elif r:
                lines.append(
                    f"| {label} | not finished ({r.get('examples_done', 0)} training examples) | | | | |"
                )
        if "agreement_twin_plain" in pt:
            fb, n = pt.get("twin_first_nonfinite_loss"), pt.get("loss_examples_compared")
            losses = (
                f"their per-example training losses differ by at most {pt['loss_max_abs_diff']:.2e} (mean "
                f"{pt['loss_mean_abs_diff']:.2e}) over {n} examples"
                if pt.get("loss_max_abs_diff") is not None
                else "no training loss to compare"
            )
            windows = ", ".join(
                f"{w['examples'][0]}-{w['examples'][1]}: {w['max']:.1e}"
                for w in pt.get("loss_max_abs_diff_per_64", [])
            )
            lines += [
                "",
                f"The twin and plaintext LoRA agree on {pt['agreement_twin_plain']:.4f} of the dev predictions; "
                f"twin minus plaintext accuracy {100 * pt['accuracy_gap_twin_minus_plain']:+.2f} points; {losses}"
                + (f" (largest difference per 64 examples: {windows})" if windows else "")
                + (
                    f". **The twin's loss is not finite from training example {fb} on** (schedule order, "
                    "0-based): a value left its approximation's range and the arithmetic diverged; its later "
                    "updates and its dev predictions are those of a diverged model"
                    if fb is not None
                    else ""
                )
                + f". The twin raised {pt['range_flags_twin']} range flags"
                + (
                    f" ({pt['range_flags_twin_training']} in training, the first in update "
                    f"{pt['twin_first_flagged_update']}, 0-based)"
                    if pt.get("twin_first_flagged_update") is not None
                    else ""
                )
                + (f" (sites: {', '.join(pt['range_flag_sites'])})" if pt["range_flag_sites"] else "")
                + "."
                + (
                    f" The largest |value| / calibrated refresh bound in the twin's run was "
                    f"{pt['twin_max_value_over_refresh_bound']:.3g} (over every operation; above 1, a refresh of "
                    "that value hides it with lambda - log2 of that ratio bits)."
                    if pt.get("twin_max_value_over_refresh_bound") is not None
                    else ""
                ),
            ]
        lines.append("")
    et = res.get("encrypted_train")
    if et:
        lines += [
            "## Phase 2: encrypted fine-tuning through the protocol",
            "",
            f"{et.get('steps_done', 0)} of {et.get('updates', et['examples'])} encrypted SGD updates ran "
            f"({et.get('batch', 1)} example(s) each, {et['examples']} examples in all) in "
            f"{et.get('seconds', 0):.0f} s; largest |encrypted loss - twin loss| per update: "
            f"{et.get('max_abs_loss_diff', float('nan')):.2e}.",
            "",
            "| update | encrypted loss | twin loss | difference |",
            "|---|---|---|---|",
            *(
                f"| {i + 1} | {e:.5f} | {t:.5f} | {e - t:+.1e} |"
                for i, (e, t) in enumerate(
                    zip(et.get("enc_losses", []), et.get("twin_losses", []), strict=False)
                )
            ),
            "",
        ]
    ev = res.get("encrypted_eval")
    if ev and ev.get("examples"):
        lines += [
            "## Phase 3: encrypted inference with the still-encrypted adapter",
            "",
            f"{ev['examples']} dev examples: encrypted accuracy {ev['accuracy']:.4f}, twin {ev['twin_accuracy']:.4f}, "
            f"agreement {ev['agreement_with_twin']:.4f}, largest logit difference {ev['max_abs_logit_diff']:.2e}"
            " (the twin trained beside the encrypted run: the trainings' divergence plus inference error).",
            "",
        ]
        if "agreement_with_twin_same_params" in ev:
            diff = ev.get("max_abs_logit_diff_same_params")
            lines += [
                "Against the twin on the encrypted model's own decrypted parameters (inference error only):"
                f" agreement {ev['agreement_with_twin_same_params']:.4f}"
                + (
                    ""
                    if diff is None
                    else f", largest logit difference {diff:.2e} over the {ev['logit_diff_same_params_examples']}"
                    " examples whose encrypted logits were kept"
                )
                + ".",
                "",
            ]
        mc = ev.get("mean_costs")
        if mc:
            lines += [
                f"Per encrypted inference (mean over the {len(ev['costs'])} with costs kept; "
                f"{ev.get('procs', 1)} process(es) side by side): model owner {mc['server_cpu_s']:.1f} s CPU / "
                f"{mc['server_wall_s']:.1f} s wall, data owner {mc['device_cpu_s']:.1f} s CPU, "
                f"{mc['bytes_up'] / 1e6:.1f} MB up, {mc['bytes_down'] / 1e6:.1f} MB down, "
                f"{mc['refresh_round_trips']:.0f} refresh round trips.",
                "",
            ]
        if ev.get("adapter"):
            lines += [
                f"The adapter phase 2 trained, decrypted by the data owner (export policy): `{ev['adapter']}/`"
                " (a PEFT folder; it reloads with `peft.PeftModel.from_pretrained`).",
                "",
            ]
    missing = [p for p in ("plain_twin", "encrypted_train", "encrypted_eval") if p not in res["phases_done"]]
    if missing:
        lines += [
            "## Not run or not finished",
            "",
            "Phases " + ", ".join(missing) + " did not run to their configured sizes in this run "
            "(see the JSON for what ran).",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m p3eft.privtuner.experiment --out DIR [--train N --epochs E --batch B --lr LR --dev N
    --enc-train N --enc-eval N --phases plain_twin,... --resume]``; a bad option is one line on stderr,
    exit 2."""
    import argparse

    ap = argparse.ArgumentParser(description="PrivTuner SST-2 experiment (writes JSON + PNG into --out)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--report",
        action="store_true",
        help="only re-derive the comparison from --out's privtuner_sst2.json and rewrite its .md and .png",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (same settings) from its JSON and its sealed checkpoint",
    )
    for f in ExperimentConfig.__dataclass_fields__.values():
        if f.name == "phases":
            ap.add_argument("--phases", default=",".join(f.default))
        elif f.type == "bool":
            ap.add_argument(
                f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=f.default
            )
        elif f.type in ("int", "float", "str", "str | None"):
            kind = {"int": int, "float": float}.get(f.type, str)
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    a = ap.parse_args(argv)
    if a.report:
        path = a.out / "privtuner_sst2.json"
        if not path.is_file():
            print(f"error: {path} does not exist", file=sys.stderr)
            raise SystemExit(2)
        res = json.loads(path.read_text())
        pt = res.get("plain_twin", {})
        if pt.get("plain", {}).get("finished") and pt.get("twin", {}).get("finished"):
            pt.update(compare(pt))
        _write(path, res)
        plot(res, a.out / "privtuner_sst2.png")
        (a.out / "privtuner_sst2.md").write_text(markdown(res, "privtuner_sst2.json", "privtuner_sst2.png"))
        return
    kw = {k: getattr(a, k) for k in ExperimentConfig.__dataclass_fields__ if k != "phases"}
    try:
        ecfg = ExperimentConfig(**kw, phases=tuple(p for p in a.phases.split(",") if p))
    except P3eftError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        res = run(ecfg, a.out / "privtuner_sst2.json", say=say_stderr, resume=a.resume)
    except P3eftError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    plot(res, a.out / "privtuner_sst2.png")
    (a.out / "privtuner_sst2.md").write_text(markdown(res, "privtuner_sst2.json", "privtuner_sst2.png"))


if __name__ == "__main__":
    main()
