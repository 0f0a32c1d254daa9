"""ObfuscaTune's parties as real processes on 127.0.0.1 (tiny GPT-2, real OpenBookQA text).

* end to end: the model owner uploads from its own process, the data owner fine-tunes a few steps
  and evaluates through the attested enclave; losses, accuracy and the exported adapter equal the
  in-process run bit for bit;
* faults: ``kill -9`` of the cloud and then of the enclave mid-run, both restarted; the run resumes
  from the sealed checkpoints and ends with exactly the uninterrupted adapter;
* attestation binds the configuration: an enclave started with weaker settings is refused by the
  model owner's and the data owner's default policy, and what the data owner records is what the
  enclave attested, not its own flags; an evaluation with an adapter never touches a training job.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import torch
import transformers

from p3eft.data import load_task
from p3eft.obfuscatune import driver
from p3eft.obfuscatune.enclave import EnclaveSettings
from p3eft.obfuscatune.net.connect import open_enclave
from p3eft.obfuscatune.run import data_owner_tokenizer
from p3eft.obfuscatune.session import session_from_model
from p3eft.runtime.launch import PartyGroup, cloud_argv, enclave_argv, p3eft_argv, write_seed_file
from p3eft.runtime.pki import init_keys
from p3eft.tuning import TrainConfig

SEED = bytes(range(32))
LORA = {"lora_r": 4, "lora_alpha": 8.0, "lora_dropout": 0.05, "dtype": "float32"}
CONFIG = dict(lr=2e-3, rank=4, alpha=8.0, dropout=0.05, batch_size=2, max_len=40, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny GPT-2 folder with the real GPT-2 tokenizer, dev keys and a slice of OpenBookQA."""
    from p3eft.models import sources

    d = tmp_path_factory.mktemp("obfnet")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1
    )
    model = transformers.GPT2LMHeadModel(cfg).eval()
    folder = d / "tiny-gpt2"
    model.save_pretrained(folder)
    tok_dir = sources.gpt2_tokenizer_dir()
    for f in tok_dir.iterdir():
        shutil.copy(f, folder / f.name)
    init_keys(d / "certs")
    write_seed_file(d / "seed.hex", SEED)
    return {
        "dir": d,
        "model": model,
        "folder": folder,
        "certs": d / "certs",
        "tokenizer": data_owner_tokenizer(str(folder)),
        "train": load_task("obqa", "train", limit=12),
        "eval": load_task("obqa", "eval", limit=3),
    }


def _in_process(world, steps: int) -> dict:
    s = session_from_model(world["model"], EnclaveSettings(**LORA, session_seed=SEED), name="tiny-gpt2")
    cfg = TrainConfig(max_steps=steps, **CONFIG)
    res = driver.finetune(s.enclave_channel, world["tokenizer"], world["train"], cfg, progress=False)
    ev = driver.evaluate(s.enclave_channel, world["tokenizer"], world["eval"], progress=False)
    return {"losses": res["losses"], "eval": ev, "adapter": s.enclave_channel.call("export_adapter")}


@pytest.fixture(scope="module")
def reference(world):
    return _in_process(world, steps=5)


PINNED = ["--expect", "seed=pinned"]  # the tests pin the seed to compare with in-process runs


def _upload(world, enclave, *extra: str) -> subprocess.CompletedProcess:
    argv = ["model-owner", "upload", "--model", str(world["folder"]), "--enclave", enclave.url]
    argv += ["--certs", str(world["certs"] / "model-owner"), *extra]
    return subprocess.run(p3eft_argv(*argv), capture_output=True, text=True, timeout=120)


def _start(world, group: PartyGroup, name: str, k: int, settings: dict | None = None, upload: bool = True):
    certs, cport, eport = world["certs"], _free_port(), _free_port()
    cloud = group.start("cloud", cloud_argv(certs / "cloud", port=cport))
    enclave = group.start(
        "enclave",
        enclave_argv(
            certs / "enclave",
            cloud.url,
            world["dir"] / name / "state",
            checkpoint_every=k,
            settings=LORA if settings is None else settings,
            session_seed_file=world["dir"] / "seed.hex",
            port=eport,
        ),
    )
    if upload:
        up = _upload(world, enclave, *PINNED)
        assert up.returncode == 0, up.stderr
        assert "provisioned tiny-gpt2" in up.stdout and "mode=strict" in up.stdout
    return cloud, enclave


def _data_owner(world, enclave, **kw):
    return open_enclave(enclave.url, world["certs"] / "data-owner", "seed=pinned", **kw)


def _assert_same_adapter(a: dict, b: dict) -> None:
    assert a["config"] == b["config"]
    assert a["tensors"].keys() == b["tensors"].keys()
    for key in a["tensors"]:
        assert torch.equal(a["tensors"][key], b["tensors"][key]), key


def test_networked_run_equals_in_process(world, reference, tmp_path):
    """End to end, and (issue 14.2) an evaluation with another adapter, as `obfuscatune evaluate
    --enclave --adapter` runs it, goes to a job of its own: the training job's adapter is unchanged."""
    from p3eft.obfuscatune import run
    from p3eft.obfuscatune.export import save_exported_adapter

    with PartyGroup(world["dir"] / "e2e") as group:
        _, enclave = _start(world, group, "e2e", k=2)
        ch = _data_owner(world, enclave)
        cfg = TrainConfig(max_steps=5, **CONFIG)
        res = driver.finetune(ch, world["tokenizer"], world["train"], cfg, progress=False)
        ev = driver.evaluate(ch, world["tokenizer"], world["eval"], progress=False)
        adapter = ch.call("export_adapter")
        assert ch.call("info")["weights_random"] is False  # the model owner's weights, as uploaded
        other = {k: torch.randn_like(t) for k, t in adapter["tensors"].items()}
        folder = save_exported_adapter({"config": adapter["config"], "tensors": other}, tmp_path / "other")
        with_adapter = run.evaluate(
            str(world["folder"]), "obqa", EnclaveSettings(), adapter=folder, limit=3, enclave_url=enclave.url,
            certs=world["certs"] / "data-owner", progress=False, expect="seed=pinned",
        )  # fmt: skip
        after = ch.call("export_adapter")
        ch.close()
    assert res["losses"] == reference["losses"]
    for key in ("acc", "acc_norm", "exact_match", "n"):
        assert ev[key] == reference["eval"][key], key
    _assert_same_adapter(adapter, reference["adapter"])
    _assert_same_adapter(after, reference["adapter"])  # the evaluation did not touch the training job
    assert with_adapter["adapter"] == str(folder) and with_adapter["attested"]["lora_r"] == LORA["lora_r"]


def test_mask_refresh_from_the_model_owner_process(world):
    """`model-owner upload --refresh` makes the live enclave draw a new mask epoch; the trained
    adapter carries over (up to float32 rounding through the masks) and the new epoch is sealed."""
    with PartyGroup(world["dir"] / "refresh") as group:
        _, enclave = _start(world, group, "refresh", k=100)
        ch = _data_owner(world, enclave)
        cfg = TrainConfig(max_steps=2, **CONFIG)
        driver.finetune(ch, world["tokenizer"], world["train"], cfg, progress=False)
        before = ch.call("export_adapter")
        up = _upload(world, enclave, "--refresh", *PINNED)
        assert up.returncode == 0, up.stderr
        after = ch.call("export_adapter")
        status = ch.call("runtime_status")
        jobs = world["dir"] / "refresh" / "state" / "jobs"
        assert len(list(jobs.glob("*/checkpoint.sealed"))) == 1  # this job's seal
        ch.close()  # ends the job, and its seal with it
        assert list(jobs.glob("*/checkpoint.sealed")) == []
    assert status["checkpoint_calls"] == status["calls"]  # sealed right after the refresh
    for key, t in before["tensors"].items():
        assert torch.allclose(after["tensors"][key], t, atol=1e-5), key


def test_kill_cloud_then_enclave_resumes_to_the_same_adapter(world, reference):
    with PartyGroup(world["dir"] / "faults") as group:
        cloud, enclave = _start(world, group, "faults", k=2)
        ch = _data_owner(world, enclave)

        def chaos(done: int) -> None:
            if done == 3:  # after step 3 (checkpoint at 2): kill -9 the cloud, restart it
                cloud.kill()
                cloud.start()
            if done == 4:  # after step 4 (checkpoint at 4): kill -9 the enclave, restart it
                enclave.kill()
                enclave.start()

        cfg = TrainConfig(max_steps=5, **CONFIG)
        res = driver.finetune(ch, world["tokenizer"], world["train"], cfg, progress=False, on_step=chaos)
        status = ch.call("runtime_status")
        adapter = ch.call("export_adapter")
        ch.close()
    assert ch.recoveries == 2 and status["restores"] >= 1
    assert res["losses"] == reference["losses"]
    _assert_same_adapter(adapter, reference["adapter"])


def test_attestation_binds_the_configuration_and_the_user_sees_it(world, tmp_path):
    """Item 1 and issue 14.2: an enclave started with --settings mode=paper, masks=naive is refused by
    the model owner's and the data owner's default policy; accepted only when the policy asks for it,
    and then the data owner's results record what the enclave attested, not its own flags."""
    from p3eft.errors import SecurityError
    from p3eft.obfuscatune import run

    weak = {**LORA, "mode": "paper", "masks": "naive", "lora_r": 2}
    with PartyGroup(world["dir"] / "weak") as group:
        _, enclave = _start(world, group, "weak", k=2, settings=weak, upload=False)
        up = _upload(world, enclave, *PINNED)
        assert up.returncode == 2 and "runs with mode=paper, the policy expects strict" in up.stderr
        with pytest.raises(SecurityError, match="mode=paper, the policy expects strict"):
            _data_owner(world, enclave)
        with pytest.raises(SecurityError, match="seed=pinned, the policy expects random"):
            open_enclave(enclave.url, world["certs"] / "data-owner", "mode=paper,masks=naive")
        weak_expect = "seed=pinned,mode=paper,masks=naive"
        up = _upload(world, enclave, "--expect", weak_expect)
        assert up.returncode == 0, up.stderr
        cfg = TrainConfig(max_steps=1, out_dir=str(tmp_path / "run"), **CONFIG)  # rank 4 asked for
        res = run.finetune(
            str(world["folder"]), "obqa", tmp_path / "run", cfg, EnclaveSettings(), limit=4,
            enclave_url=enclave.url, certs=world["certs"] / "data-owner", progress=False, expect=weak_expect,
        )  # fmt: skip
    assert res["attested"]["mode"] == "paper" and res["attested"]["masks"] == "naive"
    assert res["attested"]["seed"] == "pinned"
    assert res["config"]["rank"] == 2  # the enclave's, not the 4 the data owner passed


def test_cli_refuses_flags_the_enclave_sets(world, capsys):
    """Issue 14.2: with --enclave, --rank/--alpha/--dropout/--mode/--masks/--dtype cannot apply and are
    refused; --enclave without --certs is one clear line, not a TypeError."""
    from p3eft.cli.main import main

    base = ["obfuscatune", "finetune", "--out", str(world["dir"] / "x"), "--model", str(world["folder"])]
    base += ["--enclave", "127.0.0.1:1", "--certs", str(world["certs"] / "data-owner")]
    owned = [
        ("--rank", "4"),
        ("--alpha", "8"),
        ("--dropout", "0.1"),
        ("--mode", "paper"),
        ("--masks", "naive"),
    ]
    owned += [("--dtype", "float64"), ("--defence", "none")]
    for flag, value in owned:
        assert main([*base, flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag} cannot apply with --enclave" in err[0]
    ev = ["obfuscatune", "evaluate", "--model", str(world["folder"]), "--enclave", "127.0.0.1:1"]
    assert main([*ev, "--limit", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --certs" in err[0]
