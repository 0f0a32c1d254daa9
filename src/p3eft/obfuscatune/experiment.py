"""The paper's two tables on our data.

Table 1: test accuracy after LoRA fine-tuning for *Unprotected* (plain PEFT, the foundation's loop),
*ObfuscaTune* (the default configuration: structured masks and row mixing; ``masks``/``defence`` choose
another) and *naive* random masks (Gaussian, numeric inverse). All three start
from the same LoRA initialisation (the plain one, imported into obfuscated coordinates) and see the
same batches; AdamW runs on the untrusted side in obfuscated coordinates, where it is not equivalent to
plain AdamW (its per-coordinate scaling does not commute with a rotation; SGD would), so small
differences are expected (ours: noted in every result).

Table 2: condition-number sweep (cond:K for each K, and naive): max |logit difference| against the
plain model on a batch of real text, and test accuracy with the Unprotected run's adapter imported
through masks of that condition number (ours: inference-time sweep, one fine-tuning per dataset).
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from p3eft.data import load_task
from p3eft.errors import P3eftError
from p3eft.models import load_causal_lm
from p3eft.obfuscatune import driver
from p3eft.obfuscatune.enclave import DEFAULT_DEFENCE, DEFAULT_MASKS, EnclaveSettings
from p3eft.obfuscatune.session import session_from_model
from p3eft.tuning import (
    StepBatches,
    TrainConfig,
    attach_lora,
    build_lm_training_examples,
    collate_lm,
    score_multiple_choice,
    train_loop,
    trainable_parameters,
)

TABLE1_COLUMNS = ("unprotected", "obfuscatune", "naive")
# what a Table-1 column merged from another run must share with the results it joins
_SAME_TRAINING = (
    "limit",
    "eval_limit",
    "max_steps",
    "lr",
    "batch_size",
    "max_len",
    "mode",
    "seed",
    "defence",
)


@dataclass
class ExperimentConfig:
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    datasets: list[str] = field(default_factory=lambda: ["webqs", "obqa", "piqa", "sciq"])
    limit: int | None = 300
    eval_limit: int | None = 100
    max_steps: int = 20
    lr: float = 3e-5
    batch_size: int = 8
    max_len: int = 128
    mode: str = "strict"
    kappas: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0, 1000.0])
    data_dir: str | None = None
    seed: int = 0
    sweep_datasets: list[str] | None = None  # Table-2 accuracy only on these (None: all); errors are global
    masks: str = DEFAULT_MASKS  # Table 1's ObfuscaTune column
    defence: str = DEFAULT_DEFENCE  # every obfuscated run (Table 1 and 2)
    cloud_device: str | None = None  # where the untrusted side computes (None: cuda if present, else cpu)
    # Which tables to run. Table 2 needs only the Unprotected run's adapter, so ``[2]`` skips Table 1's
    # two obfuscated fine-tunings (ours: lets a long sweep run on its own and be merged afterwards).
    tables: list[int] = field(default_factory=lambda: [1, 2])
    # Table 1's columns to run (ours: one column can be re-measured, e.g. under new default masks, and
    # merged into full results; without "unprotected" only its seeded initial adapter is built)
    columns: list[str] = field(default_factory=lambda: list(TABLE1_COLUMNS))


def _train_config(cfg: ExperimentConfig) -> TrainConfig:
    return TrainConfig(
        lr=cfg.lr, batch_size=cfg.batch_size, max_steps=cfg.max_steps, max_len=cfg.max_len, seed=cfg.seed
    )


def _pad(tok) -> int:
    return int(tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0))


def _lora_copy(loaded, tcfg: TrainConfig) -> tuple[Any, dict]:
    """A copy of the model with fresh LoRA adapters (seeded by ``tcfg.seed``) and their initial values:
    every Table-1 run starts from these."""
    from peft import get_peft_model_state_dict

    work = copy.copy(loaded)
    work.model = copy.deepcopy(loaded.model)
    peft_model = attach_lora(work, tcfg)
    return peft_model, {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def _plain_run(loaded, train_task, eval_task, tcfg: TrainConfig, progress: bool) -> tuple[dict, Any, dict]:
    """Unprotected: the foundation's PEFT LoRA reference on a copy of the model."""
    from peft import get_peft_model_state_dict

    peft_model, init = _lora_copy(loaded, tcfg)
    items = build_lm_training_examples(loaded.tokenizer, train_task.examples, tcfg.max_len)
    pad = _pad(loaded.tokenizer)
    batches = StepBatches(items, tcfg.batch_size, tcfg.seed, lambda b: collate_lm(b, pad))
    peft_model.train()
    t0 = time.perf_counter()
    result = train_loop(
        lambda b: peft_model(**b).loss, trainable_parameters(peft_model), batches, tcfg, progress=progress
    )
    train_s = time.perf_counter() - t0
    peft_model.eval()

    def logits_fn(ids, mask):
        return peft_model(input_ids=ids, attention_mask=mask).logits

    t0 = time.perf_counter()
    metrics = score_multiple_choice(
        logits_fn, loaded.tokenizer, eval_task.examples, progress=progress, pad_token_id=pad
    )
    final = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    rec = {
        "train": {"losses": result.losses, "seconds": train_s},
        "eval": metrics,
        "eval_seconds": time.perf_counter() - t0,
    }
    return rec, init, final


def _session(loaded, settings, cloud_device: str | None = None):
    return session_from_model(
        loaded.model,
        settings,
        name=loaded.spec.name,
        weights_random=loaded.weights_random,
        cloud_device=cloud_device,
    )


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (Wilson 1927); (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _annotate_intervals(records: list[dict]) -> None:
    """Add ``<metric>_ci95`` (Wilson, over the record's n_eval questions) to every evaluation."""
    for r in records:
        runs = list(r["table1"].values()) + list(r["table2"].values())
        for run in runs:
            ev = run.get("eval") if run else None
            if ev and r["metric"] in ev:
                ev[f"{r['metric']}_ci95"] = list(
                    wilson_interval(float(ev[r["metric"]]) * r["n_eval"], r["n_eval"])
                )


def _obf_run(ch, tokenizer, init, train_task, eval_task, tcfg, progress) -> dict:
    """One Table-1 run on a live session: adapters reset to the plain initialisation, fresh optimizer."""
    ch.call("import_adapter", tensors=init)
    t0 = time.perf_counter()
    train = driver.finetune(ch, tokenizer, train_task, tcfg, optimizer="adamw", progress=progress)
    train_s = time.perf_counter() - t0
    metrics = driver.evaluate(ch, tokenizer, eval_task, progress=progress)
    return {
        "train": {"losses": train["losses"], "seconds": train_s},
        "eval": metrics,
        "eval_seconds": metrics["seconds"],
    }


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run both tables; write ``results.json``, ``tables.md`` and ``obfuscatune.png`` under ``out``.

    Sessions (mask draws + obfuscation) do not depend on the dataset, so each mask setting is
    provisioned once per model and reused across datasets (adapters and optimizer reset per run).
    """
    from p3eft.obfuscatune.run import verification_batch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tcfg = _train_config(cfg)
    records: list[dict[str, Any]] = []
    for model_name in cfg.models:
        loaded = load_causal_lm(model_name, dtype=torch.float32, allow_random=True)
        tok = loaded.tokenizer
        batch = verification_batch(tok, data_dir=cfg.data_dir)
        valid = batch["attention_mask"].bool()
        with torch.no_grad():
            ref = loaded.model(**batch).logits
        tasks, adapters, recs = {}, {}, {}
        for ds in cfg.datasets:
            train_task = load_task(ds, "train", data_dir=cfg.data_dir, limit=cfg.limit, seed=cfg.seed)
            eval_task = load_task(ds, "eval", data_dir=cfg.data_dir, limit=cfg.eval_limit, seed=cfg.seed)
            tasks[ds] = (train_task, eval_task)
            if 2 in cfg.tables or "unprotected" in cfg.columns:
                plain, init, final = _plain_run(loaded, train_task, eval_task, tcfg, progress)
                table1 = {"unprotected": plain}
            else:  # only obfuscated columns: the same seeded initial adapter, no plain fine-tuning
                (_, init), final, table1 = _lora_copy(loaded, tcfg), None, {}
            adapters[ds] = (init, final)
            recs[ds] = dict(
                model=model_name,
                dataset=ds,
                metric=eval_task.metric,
                weights_random=loaded.weights_random,
                n_train=len(train_task.examples),
                n_eval=len(eval_task.examples),
                notes=[n for n in (train_task.note, eval_task.note) if n],
                table1=table1,
                table2={},
            )
        # this model's records, filled in place by the runs below (each write shows them as they are)
        records = [r for r in records if r["model"] != model_name] + list(recs.values())
        columns = [(c, m) for c, m in (("obfuscatune", cfg.masks), ("naive", "naive")) if c in cfg.columns]
        for label, masks in columns if 1 in cfg.tables else ():
            settings = EnclaveSettings(
                mode=cfg.mode, masks=masks, defence=cfg.defence, lora_dropout=tcfg.dropout
            )
            s = _session(loaded, settings, cfg.cloud_device)
            for ds in cfg.datasets:
                train_task, eval_task = tasks[ds]
                recs[ds]["table1"][label] = _obf_run(
                    s.enclave_channel, tok, adapters[ds][0], train_task, eval_task, tcfg, progress
                )
                _write(out, cfg, records, time.perf_counter() - t_start)
            del s
        for spec in [f"cond:{k:g}" for k in cfg.kappas] + ["naive"] if 2 in cfg.tables else []:
            s = _session(
                loaded, EnclaveSettings(mode=cfg.mode, masks=spec, defence=cfg.defence), cfg.cloud_device
            )
            ch = s.enclave_channel
            err = float((ch.call("logits", **batch) - ref)[valid].abs().max())
            for ds in [d for d in cfg.datasets if cfg.sweep_datasets is None or d in cfg.sweep_datasets]:
                ch.call("import_adapter", tensors=adapters[ds][1])
                metrics = driver.evaluate(ch, tok, tasks[ds][1], progress=progress)
                recs[ds]["table2"][spec] = {"max_abs_logit_diff": err, "eval": metrics}
            del s
            _write(out, cfg, records, time.perf_counter() - t_start)
    return _write(out, cfg, records, time.perf_counter() - t_start)


def _acc(rec: dict | None, metric: str) -> float:
    return float(rec["eval"][metric]) if rec else float("nan")


def _fmt(value: float, spec: str) -> str:
    return "–" if value != value else format(value, spec)


def _acc_ci(rec: dict | None, metric: str, n: int) -> str:
    """``0.500 [0.43, 0.57]``: accuracy and its 95% Wilson interval."""
    acc = _acc(rec, metric)
    if acc != acc:
        return "–"
    lo, hi = wilson_interval(acc * n, n)
    return f"{acc:.3f} [{lo:.2f}, {hi:.2f}]"


def _markdown(records: list[dict], cfg: ExperimentConfig, wall: float) -> str:
    lines = [
        "## Table 1: test accuracy (Unprotected / ObfuscaTune / naive random masks), 95% Wilson intervals",
        "",
        f"| model | dataset | metric | n train | n eval | Unprotected | ObfuscaTune ({cfg.masks}, {cfg.defence})"
        " | naive random |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        t = r["table1"]
        m = r["metric"]
        cells = " | ".join(_acc_ci(t.get(k), m, r["n_eval"]) for k in ("unprotected", "obfuscatune", "naive"))
        weights = " (RANDOM weights)" if r["weights_random"] else ""
        lines.append(
            f"| {r['model']}{weights} | {r['dataset']} | {m} | {r['n_train']} | {r['n_eval']} | {cells} |"
        )
    specs = list(dict.fromkeys(s for r in records for s in r["table2"]))
    lines += [
        "",
        "## Table 2: condition-number sweep (fp32; max |logit diff| on real text / test accuracy [95% Wilson])",
        "",
        "| model | dataset | " + " | ".join(specs) + " |",
        "|---|---|" + "---|" * len(specs),
    ]
    for r in [r for r in records if r["table2"]]:
        cells = [
            f"{r['table2'][s]['max_abs_logit_diff']:.2e} / {_acc_ci(r['table2'][s], r['metric'], r['n_eval'])}"
            if s in r["table2"]
            else "–"
            for s in specs
        ]
        lines.append(f"| {r['model']} | {r['dataset']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Settings: mode {cfg.mode}, defence {cfg.defence}, {cfg.max_steps} steps, batch {cfg.batch_size},"
        f" lr {cfg.lr}, max_len {cfg.max_len}, LoRA r16/alpha32/dropout0.05, AdamW, untrusted side on"
        f" {cfg.cloud_device or 'the default device'}"
        + (f"; wall time {wall / 60:.1f} min." if wall > 0 else "."),
    ]
    notes = sorted({n for r in records for n in r["notes"]})
    lines += [f"Note: {n}" for n in notes]
    provenance = [(r, t, p) for r in records for t, p in sorted(r.get("provenance", {}).items())]
    if provenance:
        lines += ["", "## Provenance (where a row was measured apart from the settings above)", ""]
        lines += [
            f"- {r['dataset']}, {table.replace('table', 'Table ')}: {_provenance(r, p)}"
            for r, table, p in provenance
        ]
    missing = missing_runs(records, cfg)
    if missing:
        lines += ["", "Not measured: " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def _provenance(rec: dict, p: dict) -> str:
    """A provenance line; a merged sweep also names its own Unprotected run's accuracy and wall time."""
    text = p["text"]
    if p.get("masks") and p["masks"] not in TABLE1_COLUMNS:
        text += f" (masks {p['masks']})"
    if "unprotected_eval" in p:
        acc = _acc({"eval": p["unprotected_eval"]}, rec["metric"])
        text += f" (its own Unprotected adapter scored {acc:.3f}"
        text += f"; {p['wall_seconds'] / 60:.0f} min)" if p.get("wall_seconds") else ")"
    return text


def missing_runs(records: list[dict], cfg: ExperimentConfig) -> list[str]:
    """The configured runs that have no result, e.g. ``obqa: cond:1000`` (for partial or merged results)."""
    wanted2 = [f"cond:{k:g}" for k in cfg.kappas] + ["naive"]
    out = []
    wanted1 = cfg.columns if 1 in cfg.tables else TABLE1_COLUMNS
    for r in records:
        gaps = [k for k in wanted1 if k not in r["table1"]]
        if cfg.sweep_datasets is None or r["dataset"] in cfg.sweep_datasets:
            gaps += [s for s in wanted2 if s not in r["table2"]]
        if gaps:
            out.append(f"{r['dataset']}: " + ", ".join(gaps))
    return out


def _matching_record(by_key: dict[tuple[str, str], dict], upd: dict[str, Any], what: str) -> dict:
    """The base record of ``upd``'s model and dataset, measured on the same data sizes and metric."""
    key = (upd["model"], upd["dataset"])
    if key not in by_key:
        raise P3eftError(f"no {key[0]}/{key[1]} record in the base results to merge {what} into")
    rec = by_key[key]
    if (rec["n_train"], rec["n_eval"], rec["metric"]) != (upd["n_train"], upd["n_eval"], upd["metric"]):
        raise P3eftError(f"{key[1]}: {what} used other data sizes or metric than the base results")
    return rec


def merge_sweep(base: dict[str, Any], update: dict[str, Any], text: str) -> dict[str, Any]:
    """Put ``update``'s Table 2 (a sweep-only run, ``tables=[2]``) into ``base``'s matching records.

    A dataset's whole Table 2 is replaced, never mixed with another run's entries: each sweep imports
    the adapter of its own Unprotected run, so rows from two runs would rest on two adapters. That
    run's Unprotected accuracy is kept beside the sweep (``provenance.table2.unprotected_eval``) so a
    reader can compare it with Table 1's (ours).
    """
    merged = copy.deepcopy(base)
    by_key = {(r["model"], r["dataset"]): r for r in merged["records"]}
    for upd in update["records"]:
        if not upd["table2"]:
            continue
        rec = _matching_record(by_key, upd, "the sweep")
        rec["table2"] = copy.deepcopy(upd["table2"])
        rec.setdefault("provenance", {})["table2"] = {
            "text": text,
            "machine": update.get("machine"),
            "cloud_device": update["config"].get("cloud_device"),
            "wall_seconds": update.get("wall_seconds"),
            "unprotected_eval": upd["table1"]["unprotected"]["eval"],
        }
    return merged


def merge_table1(base: dict[str, Any], update: dict[str, Any], text: str) -> dict[str, Any]:
    """Put the Table-1 columns an ``update`` run measured (``columns``) into ``base``'s matching records.

    The update must share the training settings (data sizes, steps, lr, batch, length, mode, seed,
    defence). When it measured the ObfuscaTune column under other masks, it must cover every record that
    has that column, and the results' masks become the update's: one table never mixes two mask
    settings in one column (ours, as :func:`merge_sweep` never mixes two sweeps).
    """
    merged = copy.deepcopy(base)
    bcfg, ucfg = merged["config"], update["config"]
    diff = [k for k in _SAME_TRAINING if bcfg.get(k) != ucfg.get(k)]
    if diff:
        raise P3eftError(f"the Table-1 run used other settings than the base results: {', '.join(diff)}")
    by_key = {(r["model"], r["dataset"]): r for r in merged["records"]}
    covered = set()
    for upd in update["records"]:
        cols = {k: v for k, v in upd["table1"].items() if k in ucfg.get("columns", TABLE1_COLUMNS)}
        if not cols:
            continue
        rec = _matching_record(by_key, upd, "the Table-1 run")
        covered.add((upd["model"], upd["dataset"]))
        for col, run in cols.items():
            rec["table1"][col] = copy.deepcopy(run)
            rec.setdefault("provenance", {})[f"table1 {col}"] = {
                "text": text,
                "masks": ucfg.get("masks") if col == "obfuscatune" else col,
                "machine": update.get("machine"),
                "wall_seconds": update.get("wall_seconds"),
            }
    if ucfg.get("masks") != bcfg.get("masks") and "obfuscatune" in ucfg.get("columns", TABLE1_COLUMNS):
        left = [k[1] for k, r in by_key.items() if "obfuscatune" in r["table1"] and k not in covered]
        if left:
            raise P3eftError(
                f"the Table-1 run's masks ({ucfg.get('masks')}) differ from the results' ({bcfg.get('masks')})"
                f" and it does not cover {', '.join(left)}: one column would mix two mask settings"
            )
        bcfg["masks"] = ucfg["masks"]
    return merged


def write_results(out: str | Path, payload: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``results.json``, ``tables.md`` and the plot of a results payload (e.g. after a merge)."""
    cfg = ExperimentConfig(**payload["config"])
    extra = {k: v for k, v in payload.items() if k not in ("config", "records", "markdown", "wall_seconds")}
    return _write(Path(out), cfg, payload["records"], payload.get("wall_seconds", 0.0), extra)


def _plot(records: list[dict], path: Path, obfuscated: str = "default") -> None:
    """The three panels; ``obfuscated``: Table 1's ObfuscaTune settings as the legend names them (the
    run's, not whatever the default is when the figure is redrawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    labels = [f"{r['dataset']}\n({r['metric']})" for r in records]
    x = np.arange(len(records))
    for k, (key, name) in enumerate(
        (
            ("unprotected", "Unprotected"),
            ("obfuscatune", f"ObfuscaTune ({obfuscated})"),
            ("naive", "naive random"),
        )
    ):
        vals = [_acc(r["table1"].get(key), r["metric"]) for r in records]
        axes[0].bar(x + (k - 1) * 0.27, vals, width=0.27, label=name)
    axes[0].set_xticks(x, labels)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("Table 1: accuracy after LoRA fine-tuning")
    axes[0].legend(fontsize=8)
    specs = list(dict.fromkeys(s for r in records for s in r["table2"]))
    xs = np.arange(len(specs))
    nan = float("nan")
    for r in [r for r in records if r["table2"]]:  # one line each: merged runs drew their own masks
        errs = [r["table2"].get(s, {}).get("max_abs_logit_diff", nan) for s in specs]
        axes[1].semilogy(xs, errs, "o-", label=r["dataset"])
        axes[2].plot(xs, [_acc(r["table2"].get(s), r["metric"]) for s in specs], "o-", label=r["dataset"])
    for ax, title in (
        (axes[1], "Table 2: max |logit diff| vs plain (fp32)"),
        (axes[2], "Table 2: test accuracy"),
    ):
        ax.set_xticks(xs, [s.replace("cond:", "κ=") for s in specs])
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[2].set_ylabel("test accuracy")
    model = ", ".join(sorted({r["model"] for r in records}))
    fig.suptitle(f"ObfuscaTune on {model}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write(
    out: Path, cfg: ExperimentConfig, records: list[dict], wall: float, extra: dict | None = None
) -> dict[str, Any]:
    _annotate_intervals(records)
    md = _markdown(records, cfg, wall)
    missing = missing_runs(records, cfg)
    payload = {
        "config": asdict(cfg),
        "wall_seconds": wall,
        "machine": {
            "cpus": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        **(extra or {}),
        "complete": not missing,
        "missing": missing,
        "records": records,
        "markdown": md,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / "tables.md").write_text(md)
    if records:
        _plot(records, out / "obfuscatune.png", f"{cfg.masks}, {cfg.defence}")
    return payload
