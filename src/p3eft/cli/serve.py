"""`p3eft serve cloud|enclave|privtuner-model-owner`: run one party as its own process (thin: parse, call the runtime)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from p3eft.cli import options as opt
from p3eft.cli import privtuner as pt

app = typer.Typer(no_args_is_help=True)

_CERTS = typer.Option(
    ..., "--certs", help="This party's own key folder from `p3eft keys init` (DIR/<party>)."
)
_HOST = typer.Option("127.0.0.1", "--host", help="Address to bind.")
_PORT = typer.Option(0, "--port", min=0, max=65535, help="Port to bind (0: a free one, announced on stdout).")
_READY = typer.Option(None, "--ready-file", help="Write {party,pid,port,url} as JSON here once serving.")
_MAXMB = typer.Option(256, "--max-message-mb", min=1, help="Largest payload accepted, in MiB.")


@app.callback()
def _follow_parent() -> None:
    # Before any model loads: a party started by a supervisor dies with it (runtime.launch).
    from p3eft.runtime.launch import follow_parent

    follow_parent()


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )


@app.command("cloud")
def cloud(
    certs: Path = _CERTS,
    host: str = _HOST,
    port: int = _PORT,
    ready_file: Path | None = _READY,
    max_message_mb: int = _MAXMB,
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if present)."),
    factory: str | None = typer.Option(
        None, "--factory", help="Role factory MODULE:NAME (default ObfuscaTune)."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log at INFO level (what the party serves; never payloads or keys)."
    ),
) -> None:
    """Serve the untrusted cloud: only obfuscated weights and masked tensors reach it."""
    from p3eft.obfuscatune.net.roles import CLOUD_FACTORY
    from p3eft.runtime.launch import run_cloud

    _logging(verbose)
    kwargs = {"device": device} if factory is None else {}
    run_cloud(certs, factory or CLOUD_FACTORY, host, port, ready_file, max_message_mb * 2**20, kwargs)


@app.command("enclave")
def enclave(
    certs: Path = _CERTS,
    cloud_url: str = typer.Option(..., "--cloud", help="HOST:PORT of `p3eft serve cloud`."),
    state_dir: Path = typer.Option(..., "--state-dir", help="Where sealed model and checkpoints live."),
    checkpoint_every: int = typer.Option(1, "--checkpoint-every", help="Seal a checkpoint every K steps."),
    host: str = _HOST,
    port: int = _PORT,
    ready_file: Path | None = _READY,
    max_message_mb: int = _MAXMB,
    settings: str = typer.Option(
        "{}", "--settings", help="JSON of enclave settings (mode, masks, lora_r...)."
    ),
    factory: str | None = typer.Option(
        None, "--factory", help="Role factory MODULE:NAME (default ObfuscaTune)."
    ),
    session_seed_file: str | None = typer.Option(
        None,
        "--session-seed-file",
        help="File (or - for stdin) holding 64 hex digits that pin the mask seed; reproducibility checks "
        "only (the quote then says seed=pinned). Never on the command line, which every local user can read.",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log at INFO level (what the party serves; never payloads or keys)."
    ),
) -> None:
    """Serve the enclave (simulated TEE): attests, holds the masks, seals its checkpoints."""
    from p3eft.errors import P3eftError
    from p3eft.obfuscatune.net.roles import ENCLAVE_FACTORY
    from p3eft.runtime.launch import check_session_seed, run_enclave

    _logging(verbose)
    try:
        role_kwargs = json.loads(settings)
    except json.JSONDecodeError as err:
        raise P3eftError(f"--settings is not JSON: {err}") from err
    if not isinstance(role_kwargs, dict):
        raise P3eftError("--settings must be a JSON object")
    seed = None
    if session_seed_file is not None:
        if session_seed_file == "-":
            text = sys.stdin.readline()
        else:
            path = Path(session_seed_file)
            if not path.is_file():
                raise P3eftError(f"--session-seed-file {path} not found")
            text = path.read_text()
        try:
            seed = bytes.fromhex(text.strip())
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise P3eftError("--session-seed-file must hold 64 hex digits (32 bytes)")
        check_session_seed(seed)
    run_enclave(
        certs,
        cloud_url,
        state_dir,
        factory or ENCLAVE_FACTORY,
        host,
        port,
        ready_file,
        checkpoint_every,
        max_message_mb * 2**20,
        role_kwargs,
        session_seed=seed,
    )


@app.command("privtuner-model-owner")
def privtuner_model_owner(
    certs: Path = _CERTS,
    host: str = _HOST,
    port: int = _PORT,
    ready_file: Path | None = _READY,
    max_message_mb: int = typer.Option(
        1024, "--max-message-mb", min=1, help="Largest payload accepted, in MiB."
    ),
    model: str = pt.MODEL,  # the model flags of `p3eft privtuner`, with their ranges
    layers: int = pt.LAYERS,
    max_len: int = pt.MAX_LEN,
    rank: int = pt.RANK,
    alpha: float = pt.ALPHA,
    param_set: str | None = pt.PARAM_SET,
    seed: int = opt.option(0, "--seed", help="Seed of the adapter's initialisation."),
    head_standardize: bool = pt.HEAD_STD,
    rotation_keys: str = pt.ROTATION_KEYS,
    factory: str | None = typer.Option(
        None, "--factory", help="Backend factory MODULE:NAME or FILE.py:NAME (default: the encrypted BERT)."
    ),
    idle_timeout: float = typer.Option(
        3600.0, "--idle-timeout", help="Close a session whose data owner is silent this many seconds."
    ),
    state_key: Path | None = typer.Option(
        None,
        "--state-key",
        help="Key file that signs data owners' checkpoints (created if absent); keep it to accept them "
        "after a restart.",
    ),
    end_policy: str = typer.Option(
        "export",
        "--end-policy",
        help="export: data owners may decrypt the trained adapter; encrypted: the adapter is never handed "
        "out (checkpoints sealed under the state key), inference stays two-party.",
    ),
    workers: int = opt.WORKERS,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Log at INFO level (what the party serves; never payloads or keys)."
    ),
) -> None:
    """Serve PrivTuner's model owner: one encrypted session per connecting data owner."""
    if not idle_timeout > 0:
        raise typer.BadParameter(f"must be positive, got {idle_timeout}", param_hint="--idle-timeout")
    if end_policy not in ("export", "encrypted"):
        raise typer.BadParameter(f"export or encrypted, not {end_policy!r}", param_hint="--end-policy")
    from p3eft.privtuner.checkpoint import model_owner_state_key

    key = None if state_key is None else model_owner_state_key(state_key)
    from p3eft.privtuner.net import run_model_owner

    _logging(verbose)
    if factory is not None:
        from p3eft.runtime.launch import load_factory

        backend = load_factory(factory)()
    else:
        from p3eft.privtuner.wiring import build_backend, settings

        backend = build_backend(
            settings(
                model=model,
                layers=layers,
                max_len=max_len,
                rank=rank,
                alpha=alpha,
                param_set=param_set,
                seed=seed,
                head_standardize=head_standardize,
                rotation_keys=rotation_keys,
            )
        )
    run_model_owner(
        backend,
        certs,
        host,
        port,
        ready_file,
        max_message_mb * 2**20,
        idle_timeout,
        key,
        end_policy,
        workers,
    )
