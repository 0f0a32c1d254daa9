"""The PrivTuner experiment on SST-2 (docs/results/privtuner/): plaintext LoRA, the approximate twin,
and encrypted fine-tuning and inference through the real protocol (ours).

Phases, each written to the JSON as soon as it finishes (a long run that is stopped keeps what
finished, with its true sizes):

1. ``plain`` and ``twin``: the exact model (plaintext LoRA: every approximation replaced by its
   exact function) and the approximate twin, trained by the same per-example SGD on the same first
   ``train`` SST-2 training examples from the same initial adapter; dev accuracy on ``dev`` examples
   (872 = all).
2. ``encrypted_train``: the data owner fine-tunes under encryption (in-process model owner, the
   protocol's roles) on the first ``enc_train`` training examples; the twin runs the same steps from
   the same initial adapter; per-step losses of both and their difference.
3. ``encrypted_eval``: encrypted inference with the trained, still-encrypted adapter on the first
   ``enc_eval`` dev examples; accuracy and agreement with the twin's predictions (twin trained in
   phase 2 on the same examples).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p3eft.privtuner.config import PrivTunerConfig


@dataclass
class ExperimentConfig:
    model: str = "minilm-l6"
    layers: int = 2
    max_len: int = 64
    rank: int = 8
    alpha: float = 8.0
    lr: float = 0.05
    param_set: str | None = None
    seed: int = 0
    train: int = 1000  # phase 1 training examples
    dev: int = 872  # phase 1 dev examples for plaintext LoRA (872 = all)
    twin_dev: int = 872  # phase 1 dev examples for the twin (its NumPy forward is the slow part)
    enc_train: int = 64  # phase 2 encrypted training examples
    enc_eval: int = 200  # phase 3 encrypted dev examples
    phases: tuple[str, ...] = ("plain_twin", "encrypted_train", "encrypted_eval")


def _write(path: Path, res: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2, default=str))
    tmp.replace(path)


def _accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(preds == labels))


def run(
    ecfg: ExperimentConfig,
    out_json: Path,
    data_dir: str | Path | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    from p3eft.data import load_task
    from p3eft.fhe.costs import machine_info
    from p3eft.privtuner.twin import Twin
    from p3eft.privtuner.wiring import BertBackend, BertCodec, settings

    cfg: PrivTunerConfig = settings(
        model=ecfg.model,
        layers=ecfg.layers,
        max_len=ecfg.max_len,
        rank=ecfg.rank,
        alpha=ecfg.alpha,
        lr=ecfg.lr,
        param_set=ecfg.param_set,
        seed=ecfg.seed,
    )
    res: dict[str, Any] = {
        "config": asdict(ecfg),
        "privtuner_config": cfg.to_dict(),
        "machine": machine_info(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "phases_done": [],
    }
    say("model owner: loading and calibrating")
    backend = BertBackend(cfg, data_dir)
    model = backend.model
    res["calibration"] = {
        "examples": "last 16 sentences of the SST-2 training file (public calibration text, ours)",
        "max_abs_value": backend.calibration.max_abs_value,
        "rounds": backend.calibration.rounds,
        "flags": len(backend.calibration.flags),
    }
    res["weights"] = {"random": bool(model.weights.weights_random), "source": model.weights.source}
    tokens = backend.tokens
    train_task = load_task("sst2", "train", data_dir=data_dir)
    dev_task = load_task("sst2", "eval", data_dir=data_dir)
    init = model.init_params(seed=cfg.seed)
    twin = Twin(model, backend.fns)
    _write(out_json, res)

    if "plain_twin" in ecfg.phases:
        train = [tokens.example(e.text, e.label) for e in train_task.examples[: ecfg.train]]
        dev = [tokens.example(e.text, e.label) for e in dev_task.examples[: ecfg.dev]]
        twin_dev = dev[: ecfg.twin_dev]
        phase: dict[str, Any] = {"train_examples": len(train)}
        runs = (
            ("plain", lambda: plain_lora(cfg, backend, init, train, dev)),
            ("twin", lambda: _twin_run(twin, init, train, twin_dev, cfg.lr)),
        )
        for name, fn in runs:
            t0 = time.perf_counter()
            say(f"phase 1: training the {name} model on {len(train)} examples")
            losses, preds = fn()
            labels = np.array([e.label for e in dev[: len(preds)]])
            phase[name] = {
                "losses": losses,
                "dev_examples": len(preds),
                "dev_accuracy": _accuracy(preds, labels),
                "predictions": preds.tolist(),
                "seconds": time.perf_counter() - t0,
            }
            say(f"phase 1: {name} dev accuracy {phase[name]['dev_accuracy']:.4f}")
            res["plain_twin"] = phase
            _write(out_json, res)
        n = len(phase["twin"]["predictions"])
        phase["agreement_twin_plain"] = float(
            np.mean(np.array(phase["plain"]["predictions"][:n]) == np.array(phase["twin"]["predictions"]))
        )
        phase["plain_dev_accuracy_on_twin_dev"] = _accuracy(
            np.array(phase["plain"]["predictions"][:n]), np.array([e.label for e in dev[:n]])
        )
        phase["range_flags_twin"] = len(twin.flags)
        res["plain_twin"] = phase
        res["phases_done"].append("plain_twin")
        _write(out_json, res)

    if "encrypted_train" in ecfg.phases or "encrypted_eval" in ecfg.phases:
        from p3eft.channel import InProcessChannel
        from p3eft.privtuner import accounting
        from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner

        enc_train = [(e.text, e.label) for e in train_task.examples[: ecfg.enc_train]]
        do = DataOwner(
            InProcessChannel(ModelOwner(backend)), BertCodec, DataOwnerConfig(lr=cfg.lr, seed=cfg.seed)
        )
        phase = {"examples": len(enc_train), "enc_losses": [], "twin_losses": [], "step_costs": []}
        res["encrypted_train"] = phase
        res["key_upload_bytes"] = do.key_upload_bytes
        params = init
        t0 = time.perf_counter()
        for i, (text, label) in enumerate(enc_train):
            before = do.ledger.snapshot()
            loss = do.train_step([(text, label)], keys=[f"train-{i}"])
            phase["step_costs"].append(accounting.diff(do.ledger.snapshot(), before))
            tl, params = twin.step(tokens.example(text, label), params, cfg.lr)
            phase["enc_losses"].append(loss)
            phase["twin_losses"].append(tl)
            phase["steps_done"] = i + 1
            phase["seconds"] = time.perf_counter() - t0
            phase["max_abs_loss_diff"] = float(
                np.max(np.abs(np.subtract(phase["enc_losses"], phase["twin_losses"])))
            )
            say(f"phase 2: step {i + 1}/{len(enc_train)} loss enc {loss:.5f} twin {tl:.5f}")
            _write(out_json, res)
        if phase.get("steps_done") == len(enc_train):
            res["phases_done"].append("encrypted_train")
        _write(out_json, res)

        if "encrypted_eval" in ecfg.phases:
            dev_pairs = [(e.text, e.label) for e in dev_task.examples[: ecfg.enc_eval]]
            ev: dict[str, Any] = {"examples": 0, "predictions": [], "twin_predictions": [], "labels": []}
            res["encrypted_eval"] = ev
            t0 = time.perf_counter()
            for i, (text, label) in enumerate(dev_pairs):
                z = do.logits(text)
                zt = twin.logits(tokens.example(text, label), params)
                ev["predictions"].append(int(np.argmax(z)))
                ev["twin_predictions"].append(int(np.argmax(zt)))
                ev["labels"].append(int(label))
                ev["max_abs_logit_diff"] = max(
                    ev.get("max_abs_logit_diff", 0.0), float(np.max(np.abs(z - zt)))
                )
                ev["examples"] = i + 1
                p, tp, y = (np.array(ev[k]) for k in ("predictions", "twin_predictions", "labels"))
                ev["accuracy"], ev["twin_accuracy"] = _accuracy(p, y), _accuracy(tp, y)
                ev["agreement_with_twin"] = float(np.mean(p == tp))
                ev["seconds"] = time.perf_counter() - t0
                if (i + 1) % 5 == 0 or i + 1 == len(dev_pairs):
                    say(
                        f"phase 3: {i + 1}/{len(dev_pairs)} acc {ev['accuracy']:.3f} agree {ev['agreement_with_twin']:.3f}"
                    )
                    _write(out_json, res)
            if ev["examples"] == len(dev_pairs):
                res["phases_done"].append("encrypted_eval")
        res["totals"] = {k: v for k, v in do.ledger.snapshot().items() if k != "per_method"}
        do.close()
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write(out_json, res)
    return res


def _twin_run(twin: Any, init: dict[str, np.ndarray], train: list, dev: list, lr: float):
    params, losses = twin.train(train, init, lr)
    return losses, twin.predict(dev, params)


def plain_lora(cfg: PrivTunerConfig, backend: Any, init: dict[str, np.ndarray], train: list, dev: list):
    """Plaintext LoRA in torch + peft (float64): the same initial adapter and head, the same
    per-example SGD on the same examples as the twin; the reference the twin is compared with."""
    import torch

    from p3eft.privtuner.adapter import peft_names
    from p3eft.privtuner.export import peft_model_with
    from p3eft.privtuner.wiring import export_base

    model = peft_model_with(
        export_base(cfg).double(), peft_names(backend.model.plain_params(init)), cfg.lora_rank, cfg.lora_alpha
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr)
    losses = []
    model.eval()  # no dropout: the twin has none (gradients flow in eval mode all the same)
    for ex in train:
        ids = torch.as_tensor(ex.ids[: ex.length])[None, :]
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([ex.label]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    preds = []
    with torch.no_grad():
        for ex in dev:
            ids = torch.as_tensor(ex.ids[: ex.length])[None, :]
            preds.append(int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.argmax()))
    return losses, np.array(preds)


def plot(res: dict[str, Any], png: Path) -> None:
    """Loss curves (plain, twin, encrypted vs twin) and dev accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    pt = res.get("plain_twin")
    if pt:
        for name in ("plain", "twin"):
            ls = np.array(pt[name]["losses"])
            w = max(1, len(ls) // 50)
            axes[0].plot(np.convolve(ls, np.ones(w) / w, mode="valid"), label=f"{name} (moving mean {w})")
        axes[0].set_title(f"phase 1: training loss, {pt['train_examples']} examples")
        axes[0].set_xlabel("step (one example)")
        axes[0].legend()
    et = res.get("encrypted_train")
    if et and et.get("enc_losses"):
        axes[1].plot(et["twin_losses"], "o-", label="twin", ms=3)
        axes[1].plot(et["enc_losses"], "x--", label="encrypted", ms=4)
        axes[1].set_title(f"phase 2: loss per step, {len(et['enc_losses'])} encrypted steps")
        axes[1].set_xlabel("step (one example)")
        axes[1].legend()
    bars, names = [], []
    if pt:
        bars += [pt["plain"]["dev_accuracy"], pt["twin"]["dev_accuracy"]]
        names += [
            f"plain LoRA\n({pt['plain']['dev_examples']} dev)",
            f"twin\n({pt['twin']['dev_examples']} dev)",
        ]
    ev = res.get("encrypted_eval")
    if ev and ev.get("examples"):
        bars += [ev["twin_accuracy"], ev["accuracy"]]
        names += [f"twin, phase 2\n({ev['examples']} dev)", f"encrypted\n({ev['examples']} dev)"]
    if bars:
        axes[2].bar(names, bars, color=["C0", "C1", "C2", "C3"][: len(bars)])
        axes[2].set_ylim(0.4, 1.0)
        axes[2].set_title("SST-2 dev accuracy")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def markdown(res: dict[str, Any], json_name: str, png_name: str) -> str:
    """A short report of what ran, with its true sizes, and of what did not."""
    c = res["config"]
    lines = [
        "# PrivTuner on SST-2: plaintext LoRA, the approximate twin, encrypted fine-tuning",
        "",
        f"Model `{c['model']}` cut to its first {c['layers']} layers (weights: "
        f"{'RANDOM' if res['weights']['random'] else 'real'}, {res['weights']['source']}), LoRA rank {c['rank']} "
        f"(alpha {c['alpha']}) on query and value of every layer plus the classifier head, {c['max_len']} tokens, "
        f"per-example SGD with lr {c['lr']}. Data: {json_name}; figure: {png_name}. "
        f"Started {res['started']}, finished {res.get('finished', '(not finished)')}; machine: "
        f"{res['machine'].get('cpu_model')}, {res['machine'].get('cores')} cores (shared with other work).",
        "",
    ]
    pt = res.get("plain_twin")
    if pt:
        p, t = pt["plain"], pt.get("twin")
        lines += [
            "## Phase 1: plaintext LoRA and the approximate twin, same data",
            "",
            f"Both trained on the first {pt['train_examples']} SST-2 training examples from the same initial adapter.",
            "",
            "| model | dev examples | dev accuracy | training seconds |",
            "|---|---|---|---|",
            f"| plaintext LoRA (torch + peft, float64) | {p['dev_examples']} | {p['dev_accuracy']:.4f} | {p['seconds']:.0f} |",
        ]
        if t:
            lines += [
                f"| approximate twin | {t['dev_examples']} | {t['dev_accuracy']:.4f} | {t['seconds']:.0f} |",
                "",
                f"On the {t['dev_examples']} dev examples the twin saw, plaintext LoRA scores "
                f"{pt['plain_dev_accuracy_on_twin_dev']:.4f} and the two agree on {pt['agreement_twin_plain']:.4f} "
                f"of the predictions; the twin raised {pt['range_flags_twin']} range flags.",
            ]
        lines.append("")
    et = res.get("encrypted_train")
    if et:
        lines += [
            "## Phase 2: encrypted fine-tuning through the protocol",
            "",
            f"{et.get('steps_done', 0)} of {et['examples']} encrypted SGD steps ran (one example each) in "
            f"{et.get('seconds', 0):.0f} s; largest |encrypted loss - twin loss| per step: "
            f"{et.get('max_abs_loss_diff', float('nan')):.2e}.",
            "",
        ]
    ev = res.get("encrypted_eval")
    if ev and ev.get("examples"):
        lines += [
            "## Phase 3: encrypted inference with the still-encrypted adapter",
            "",
            f"{ev['examples']} dev examples: encrypted accuracy {ev['accuracy']:.4f}, twin {ev['twin_accuracy']:.4f}, "
            f"agreement {ev['agreement_with_twin']:.4f}, largest logit difference {ev['max_abs_logit_diff']:.2e}.",
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
    """``python -m p3eft.privtuner.experiment --out DIR [--train N --dev N --enc-train N --enc-eval N]``."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="PrivTuner SST-2 experiment (writes JSON + PNG into --out)")
    ap.add_argument("--out", type=Path, required=True)
    for f in ExperimentConfig.__dataclass_fields__.values():
        if f.name == "phases":
            ap.add_argument("--phases", default=",".join(f.default))
        elif f.type in ("int", "float", "str", "str | None"):
            kind = {"int": int, "float": float}.get(f.type, str)
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    a = ap.parse_args(argv)
    kw = {k: getattr(a, k) for k in ExperimentConfig.__dataclass_fields__ if k != "phases"}
    ecfg = ExperimentConfig(**kw, phases=tuple(a.phases.split(",")))
    a.out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    res = run(ecfg, a.out / "privtuner_sst2.json", say=say)
    plot(res, a.out / "privtuner_sst2.png")
    (a.out / "privtuner_sst2.md").write_text(markdown(res, "privtuner_sst2.json", "privtuner_sst2.png"))


if __name__ == "__main__":
    main()
