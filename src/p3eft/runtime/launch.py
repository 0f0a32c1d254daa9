"""Running parties as processes: serve loops, ready files, and a supervisor for child processes.

A party server binds port 0 (the OS picks a free port, so there is no race between choosing and
binding) and then writes a small JSON *ready file* ``{"party", "pid", "port", "url"}`` atomically;
whoever started it waits for that file. Children die with their parent (:func:`follow_parent`), and
:class:`PartyGroup` stops every child on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from p3eft.errors import MissingResourceError, P3eftError, SecurityError
from p3eft.runtime.attestation import (
    SimulatedAttestor,
    SimulatedVerifier,
    code_measurement,
    unmeasured_modules,
)
from p3eft.runtime.client import NetworkChannel
from p3eft.runtime.enclave_host import EnclaveHost, HostPolicy
from p3eft.runtime.errors import PartyUnavailableError
from p3eft.runtime.pki import is_data_owner, load_identity, read_key_file
from p3eft.runtime.sealing import Sealer, sealing_key
from p3eft.runtime.server import DEFAULT_MAX_MESSAGE, PartyServer, ServerConfig

log = logging.getLogger("p3eft.runtime.launch")


def _package_root() -> Path:
    return Path(importlib.util.find_spec("p3eft").origin).parent.resolve()


def _parse_factory(spec: str) -> tuple[str, str, Path | None]:
    """``TARGET:NAME`` -> (target, name, the file if the target is an existing ``.py`` file, else None)."""
    target, sep, attr = spec.rpartition(":")
    if not sep:
        raise P3eftError(f"bad factory {spec!r}: expected MODULE:NAME or FILE.py:NAME")
    if not target.endswith(".py"):
        return target, attr, None
    path = Path(target)
    if not path.is_file():
        raise MissingResourceError(f"factory file {path} not found")
    return target, attr, path


def factory_source(spec: str) -> Path | None:
    """The source file a factory spec loads from outside the measured package (None: inside it)."""
    target, _, path = _parse_factory(spec)
    if path is not None:
        return path.resolve()
    try:
        mod_spec = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        mod_spec = None
    if mod_spec is None or not mod_spec.origin or not Path(mod_spec.origin).is_file():
        raise P3eftError(f"factory module {target!r} not found, or has no source file that can be measured")
    origin = Path(mod_spec.origin).resolve()
    return None if origin.is_relative_to(_package_root()) else origin


def load_factory(spec: str) -> Callable[..., Any]:
    """``module:attr`` or ``/path/to/file.py:attr`` -> the callable (role factories)."""
    target, attr, path = _parse_factory(spec)
    if path is not None:
        mod_spec = importlib.util.spec_from_file_location(f"p3eft_factory_{path.stem}", path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    fn = getattr(module, attr, None)
    if fn is None:
        raise P3eftError(f"{target} has no {attr!r}")
    return fn


def write_ready(path: str | Path, info: dict[str, Any]) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, p)


def serve_until_signal(server: PartyServer, party: str, host: str, ready_file: str | Path | None) -> None:
    """Start, announce ``{party, pid, port, url}`` (stdout and ``ready_file``), and block until
    SIGTERM/SIGINT: how every party process serves, whatever its scheme."""
    port = server.start()
    info = {"party": party, "pid": os.getpid(), "port": port, "url": f"{host}:{port}"}
    if ready_file:
        write_ready(ready_file, info)
    print(json.dumps(info), flush=True)
    follow_parent()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop(grace=1.0)


PARENT_ENV = "P3EFT_PARENT_PID"
# Set by a supervisor that started the child from its main thread: only then may the child ask for
# PR_SET_PDEATHSIG, which fires when the *thread* that forked exits, not the process.
DEATHSIG_ENV = "P3EFT_PARENT_DEATHSIG"
_PR_SET_PDEATHSIG = 1
_following = threading.Lock()
_followed: list[bool] = []


def follow_parent() -> None:
    """Die with the supervising process named by ``P3EFT_PARENT_PID`` (no-op without it; idempotent).

    The child asks for the death signal itself, then checks that its parent is still the one that
    started it (the parent may have died before the request). The supervisor must not do this
    between fork and exec: a ``preexec_fn`` makes :mod:`subprocess` fork instead of vfork, and
    then gRPC's fork handlers restart its poller in the child, whose epoll descriptor ``close_fds``
    closes; the child aborts before exec ("epoll_wait error: Bad file descriptor", grpc/grpc#43055,
    about 1 start in 100 while the parent holds a channel). A watch thread is the second line,
    and the only one for children started from other threads.
    """
    want = os.environ.get(PARENT_ENV)
    if not want:
        return
    with _following:
        if _followed:
            return
        _followed.append(True)
    if os.environ.get(DEATHSIG_ENV) == "1":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(want):
        os._exit(0)

    def watch() -> None:
        while os.getppid() == int(want):
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def start_party(
    role: object,
    certs: str | Path,
    party: str,
    *,
    allowed_peers: frozenset[str] | None = None,
    peer_filter: Callable[[str], bool] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    tenant_factory: Callable[[], object] | None = None,
) -> PartyServer:
    """Serve any role object's ``@remote`` methods as ``party`` (its own key folder) over mutual TLS;
    returns the started server (its ``port``). Any scheme's roles run this way, e.g. PrivTuner's model
    owner with ``allowed_peers={"data-owner"}``."""
    config = ServerConfig(host, port, max_message_bytes, allowed_peers=allowed_peers, peer_filter=peer_filter)
    server = PartyServer(role, load_identity(certs, party), config, tenant_factory=tenant_factory)
    server.start()
    return server


def open_party_channel(
    url: str,
    certs: str | Path,
    party: str,
    server_party: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
) -> NetworkChannel:
    """A mutual-TLS channel from ``party`` (its own key folder) to the role ``server_party`` serves."""
    return NetworkChannel(url, load_identity(certs, party), server_party, max_message_bytes=max_message_bytes)


def run_cloud(
    certs: str | Path,
    factory: str,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: str | Path | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    role_kwargs: dict[str, Any] | None = None,
) -> None:
    """Serve the untrusted cloud role, one instance per enclave job; only the enclave may call it."""
    identity = load_identity(certs, "cloud")
    make = load_factory(factory)
    kwargs = role_kwargs or {}
    config = ServerConfig(
        host, port, max_message_bytes, allowed_peers=frozenset({"enclave"}), tenants_per_party=32
    )
    server = PartyServer(make(**kwargs), identity, config, tenant_factory=lambda: make(**kwargs))
    serve_until_signal(server, "cloud", host, ready_file)


def enclave_sealing_key(certs: str | Path, measurement: bytes) -> bytes:
    """The simulated enclave's sealing key (platform secret + code measurement)."""
    return sealing_key(read_key_file(certs, "platform-seal.key"), measurement)


def enclave_sealer(certs: str | Path, measurement: bytes, root: str | Path | None = None) -> Sealer:
    return Sealer(enclave_sealing_key(certs, measurement), root)


def check_session_seed(seed: bytes) -> bytes:
    """A pinned session seed must be 32 bytes and not a constant pattern (all zeros, all equal)."""
    if len(seed) != 32:
        raise P3eftError("a session seed must be 32 bytes (64 hex digits)")
    if len(set(seed)) == 1:
        raise SecurityError(
            "refusing a constant session seed (all bytes equal): the masks would be guessable"
        )
    return seed


def run_enclave(
    certs: str | Path,
    cloud_url: str,
    state_dir: str | Path,
    factory: str,
    host: str = "127.0.0.1",
    port: int = 0,
    ready_file: str | Path | None = None,
    checkpoint_every: int = 1,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    role_kwargs: dict[str, Any] | None = None,
    cloud_wait_s: float = 60.0,
    session_seed: bytes | None = None,
) -> None:
    """Serve the enclave: attested (code and configuration), one sealed job per data owner."""
    identity = load_identity(certs, "enclave")
    extra = factory_source(factory)
    measured = [extra] if extra is not None else []
    measurement = code_measurement(measured)
    attestor = SimulatedAttestor(read_key_file(certs, "platform-attest.key"), measurement)
    make = load_factory(factory)
    kwargs = role_kwargs or {}
    describe = getattr(make, "attested_config", None)
    scheme_config = describe(**kwargs) if describe is not None else dict(kwargs)
    unmeasured = unmeasured_modules(measured)
    if unmeasured:
        raise SecurityError(
            f"refusing to serve: code outside the measurement is loaded ({', '.join(unmeasured[:3])})"
        )
    if session_seed is not None:
        check_session_seed(session_seed)

    def connect_cloud(tenant: str | None, reset: bool) -> NetworkChannel:
        return NetworkChannel(
            cloud_url,
            identity,
            "cloud",
            max_message_bytes=max_message_bytes,
            tenant=tenant,
            reset_tenants=reset,
        )

    key = enclave_sealing_key(certs, measurement)
    host_obj = EnclaveHost(
        lambda cloud, seed, sealing_key: make(cloud, seed, sealing_key, **kwargs),
        connect_cloud,
        state_dir,
        Sealer(key, state_dir),
        key,
        checkpoint_every=checkpoint_every,
        policy=getattr(make, "host_policy", None) or HostPolicy(),
        cloud_wait_s=cloud_wait_s,
        session_seed=session_seed,
    )
    attested = {
        **scheme_config,
        "factory": factory if extra is None else f"{extra.name}:{factory.rpartition(':')[2]}",
        "checkpoint_every": checkpoint_every,
        "seed": "pinned" if session_seed is not None else "random",
    }
    config = ServerConfig(
        host, port, max_message_bytes, peer_filter=lambda p: p == "model-owner" or is_data_owner(p)
    )
    server = PartyServer(
        host_obj,
        identity,
        config,
        attestor=attestor,
        resolver=host_obj.resolve,
        attested_config=attested,
        on_close=host_obj.session_closed,
    )
    serve_until_signal(server, "enclave", host, ready_file)


def connect_attested(
    url: str,
    certs: str | Path,
    party: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE,
    expected_measurement: bytes | None = None,
    policy: dict[str, object] | None = None,
    measured_files: tuple[str | Path, ...] = (),
) -> NetworkChannel:
    """An attested, encrypted channel from ``party`` to the enclave at ``url``.

    The quote must show the code this process expects (its own package, plus ``measured_files`` --
    role factories the enclave loads from outside it) and a configuration that ``policy`` accepts.
    """
    expected = expected_measurement if expected_measurement is not None else code_measurement(measured_files)
    verifier = SimulatedVerifier(read_key_file(certs, "platform-attest.pub"), expected, policy=policy)
    return NetworkChannel(
        url, load_identity(certs, party), "enclave", verifier=verifier, max_message_bytes=max_message_bytes
    )


# -- supervising child processes --------------------------------------------------------------
class PartyProcess:
    """One party running as a child process, announced by its ready file."""

    def __init__(
        self, name: str, argv: Sequence[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.env = env
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, wait_ready: bool = True, timeout_s: float = 120.0) -> PartyProcess:
        self.ready_file.unlink(missing_ok=True)
        argv = [a.replace("{ready}", str(self.ready_file)) for a in self.argv]
        env = {**os.environ, **(self.env or {}), PARENT_ENV: str(os.getpid())}
        env[DEATHSIG_ENV] = "1" if threading.current_thread() is threading.main_thread() else "0"
        # No preexec_fn: the child follows its parent by itself (see follow_parent).
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.is_file():
            if self.proc is not None and self.proc.poll() is not None:
                raise PartyUnavailableError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready; "
                    f"last log lines:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise PartyUnavailableError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")
            time.sleep(0.05)
        self.info = json.loads(self.ready_file.read_text())
        return self.info

    @property
    def url(self) -> str:
        return self.info["url"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (``kill -9``): no cleanup, no goodbye; what the fault tests do."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def wait(self, timeout_s: float | None = None) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired as err:
            raise PartyUnavailableError(
                f"{self.name} still running after {timeout_s} s:\n{self.tail()}"
            ) from err


class PartyGroup:
    """Starts parties and guarantees they are all stopped when the block ends, however it ends."""

    def __init__(self, workdir: str | Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.parties: dict[str, PartyProcess] = {}

    def start(self, name: str, argv: Sequence[str], wait_ready: bool = True, **kw: Any) -> PartyProcess:
        p = PartyProcess(name, argv, self.workdir, kw.pop("env", None))
        self.parties[name] = p
        return p.start(wait_ready=wait_ready, **kw)

    def stop_all(self) -> None:
        for p in reversed(list(self.parties.values())):
            p.stop()

    def __enter__(self) -> PartyGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def p3eft_argv(*args: str) -> list[str]:
    """The command line that runs ``p3eft ARGS`` with this interpreter."""
    return [sys.executable, "-m", "p3eft.cli.main", *args]


def cloud_argv(certs: str | Path, *, port: int = 0, factory: str | None = None) -> list[str]:
    """``p3eft serve cloud`` on a given port (0: the OS picks a free one), announcing itself when ready."""
    argv = ["serve", "cloud", "--certs", str(certs), "--port", str(port), "--ready-file", "{ready}"]
    return p3eft_argv(*argv, *(["--factory", factory] if factory else []))


def enclave_argv(
    certs: str | Path,
    cloud_url: str,
    state_dir: str | Path,
    *,
    checkpoint_every: int,
    settings: dict[str, Any],
    session_seed_file: str | Path | None = None,
    port: int = 0,
    factory: str | None = None,
) -> list[str]:
    """``p3eft serve enclave`` wired to a cloud, with its sealed state folder and settings.

    ``session_seed_file`` fixes the mask seed (a file, never the command line, which every local
    user can read); only reproducibility checks (demo, tests, benchmarks) pass it.
    """
    argv = ["serve", "enclave", "--certs", str(certs), "--cloud", cloud_url, "--port", str(port)]
    argv += ["--state-dir", str(state_dir), "--checkpoint-every", str(checkpoint_every)]
    argv += ["--settings", json.dumps(settings), "--ready-file", "{ready}"]
    if session_seed_file is not None:
        argv += ["--session-seed-file", str(session_seed_file)]
    if factory is not None:
        argv += ["--factory", factory]
    return p3eft_argv(*argv)


def write_seed_file(path: str | Path, seed: bytes) -> Path:
    """Write a pinned session seed (hex) to a 0600 file for ``--session-seed-file``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(check_session_seed(seed).hex())
    return p
