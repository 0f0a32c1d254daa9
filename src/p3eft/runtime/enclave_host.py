"""The enclave host: serves an enclave role per data owner, seals state, survives restarts (ours).

The host sits between the network and the scheme's enclave role object. It adds what a process on
a real host needs and the role itself should not care about:

* **access rules** -- the model owner may only provision (and read ``info``); data owners may call
  everything else; a policy can keep methods host-only (never callable over the network);
* **one job per data owner** -- each data owner works in its own *job*: its own role object, its
  own role instance on the cloud (a cloud *tenant*), its own call counter, result cache and sealed
  checkpoint. A data owner names its job by a secret it chose (``runtime_open``), so only it can
  resume the job after a restart, and a second data owner -- or a second process of the same
  one -- never touches another's adapter or optimiser state;
* **sealed model** -- every provisioning message is sealed to disk before a role sees it, bound to
  its upload and its index, so a restarted enclave rebuilds jobs (and the cloud) without the model
  owner, and parts of different uploads cannot be mixed;
* **sealed checkpoints** -- every ``checkpoint_every`` steps a job's state (and the cloud's, in
  obfuscated coordinates) is sealed atomically under a label that binds the upload and the job, with
  a counter that refuses a rollback the host can detect;
* **recovery** -- when the cloud fails mid-call, or when a data owner resumes a job after the
  enclave restarted, the host reconnects to the cloud, builds a fresh role, replays the sealed
  model, loads the job's checkpoint into both and tells the data owner how many mutating calls that
  state includes (``runtime_status``), so its :class:`~p3eft.runtime.resilient.ResilientChannel`
  replays the rest.

The role factory gets the job's cloud link, the enclave's persistent session seed (sealed on first
start, so masks drawn after a restart are the masks drawn before it) and the sealing key.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p3eft.channel import Channel, resolve_remote
from p3eft.errors import MissingResourceError, ProtocolError, SecurityError
from p3eft.runtime.errors import PartyUnavailableError
from p3eft.runtime.pki import is_data_owner
from p3eft.runtime.resilient import (
    CLOSE_METHOD,
    OPEN_METHOD,
    STATUS_METHOD,
    ReconnectingLink,
    RolledBackError,
)
from p3eft.runtime.sealing import CheckpointStore, Sealer
from p3eft.runtime.server import CallContext

log = logging.getLogger("p3eft.runtime.enclave_host")

JOB_SECRET_MIN = 16
HOST_LABEL = "p3eft-host"
MANIFEST_LABEL = "p3eft-model-manifest"


@dataclass(frozen=True)
class HostPolicy:
    """Which methods do what, for the scheme the host serves (defaults: ObfuscaTune's contract).

    ``replay_methods`` are the calls that change a job's state; the host counts them, seals a
    checkpoint every K steps, and the data owner's channel replays them after a restart.
    ``restore_before_provision``: the role's ``load_state`` must run before the model is provisioned
    (ObfuscaTune's enclave: the sealed state carries the mask secret); otherwise after.
    ``cloud_state_in_role_state``: the role's own ``state()`` already includes the cloud's.
    """

    provision_method: str = "provision"
    replay_methods: frozenset[str] = frozenset(
        {"train_step", "refresh_masks", "configure_training", "load_state", "import_adapter"}
    )
    step_methods: frozenset[str] = frozenset({"train_step"})  # the K of "checkpoint every K steps"
    host_only: frozenset[str] = frozenset()
    model_owner_methods: frozenset[str] = frozenset({"provision", "info"})
    restore_before_provision: bool = True
    cloud_state_in_role_state: bool = True
    model_owner: str = "model-owner"


@dataclass
class Job:
    """One data owner's isolated session on the enclave."""

    label: str  # the job's tenant name on the cloud (random, public)
    cloud: ReconnectingLink
    key: str | None = None  # hash of the data owner's job secret; None while unclaimed
    owner: str | None = None
    role: object | None = None
    store: CheckpointStore | None = None
    calls: int = 0
    steps: int = 0
    checkpoint_calls: int = 0
    last_index: int = 0
    last_result: Any = None
    restores: int = 0
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)


def job_key(secret: bytes) -> str:
    """The public name of a job (its folder): a hash of the secret only its data owner knows."""
    return hashlib.sha256(b"p3eft-job\0" + secret).hexdigest()[:32]


class EnclaveHost:
    """Owns the enclave's jobs, their sealed state and their recovery."""

    def __init__(
        self,
        make_role: Callable[[Any, bytes, bytes], object],
        cloud_connect: Callable[[str | None, bool], Channel],
        state_dir: str | Path,
        sealer: Sealer,
        sealing_key: bytes,
        checkpoint_every: int = 1,
        policy: HostPolicy | None = None,
        cloud_wait_s: float = 60.0,
        session_seed: bytes | None = None,
        jobs_per_party: int = 4,
        max_jobs: int = 16,
        job_idle_s: float = 3600.0,
    ) -> None:
        if checkpoint_every < 1:
            raise ProtocolError("checkpoint_every must be at least 1")
        self.make_role = make_role
        self.cloud_connect = cloud_connect
        self.state_dir = Path(state_dir)
        self.sealer = sealer
        self._sealing_key = sealing_key
        self.checkpoint_every = checkpoint_every
        self.policy = policy or HostPolicy()
        self.cloud_wait_s = cloud_wait_s
        self.jobs_per_party = jobs_per_party
        self.max_jobs = max_jobs
        self.job_idle_s = job_idle_s
        self.model_dir = self.state_dir / "model"
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs: dict[str, Job] = {}
        self.primed: Job | None = None  # provisioned by the model owner, not yet claimed
        self.model_info: Any = None
        self._lock = threading.RLock()
        self._parts = 0
        self._refreshing = False
        self.seed = self._load_or_make_seed(session_seed)
        # Reach the cloud before serving anything, and drop whatever tenants a previous run of this
        # enclave left there (a restarted enclave rebuilds the jobs it resumes from its seals).
        self.control = ReconnectingLink(lambda: cloud_connect(None, True), "cloud")
        self.control.reconnect(cloud_wait_s)
        self.upload: str | None = None
        if self._model_complete():
            self.upload = self._manifest()["upload"]

    # -- persistent identity -----------------------------------------------------------------
    def _load_or_make_seed(self, fixed: bytes | None) -> bytes:
        """The session seed: sealed on first start, read back after a restart. ``fixed`` (tests and
        the demo's in-process comparison only) pins it, so another process can draw the same masks."""
        path = self.state_dir / "host.sealed"
        if path.is_file():
            seed = self.sealer.read(path, HOST_LABEL)["session_seed"]
            if fixed is not None and fixed != seed:
                raise SecurityError("the state folder belongs to an enclave with another session seed")
            return seed
        seed = fixed if fixed is not None else secrets.token_bytes(32)
        self.sealer.write(path, {"session_seed": seed}, HOST_LABEL)
        return seed

    def _model_complete(self) -> bool:
        return (self.model_dir / "manifest.sealed").is_file()

    def _manifest(self) -> dict:
        return self.sealer.read(self.model_dir / "manifest.sealed", MANIFEST_LABEL)

    def _part_label(self, index: int) -> str:
        return f"p3eft-model-part/{self.upload}/{index}"

    # -- what the server calls ---------------------------------------------------------------
    def resolve(self, method: str, ctx: CallContext) -> Callable[..., Any]:
        """The callable for ``method`` from ``ctx.peer``, after the access rules."""
        p, peer = self.policy, ctx.peer
        if method in p.host_only:
            raise SecurityError(f"{method!r} is host-only: enclave state never leaves the enclave unsealed")
        if peer == p.model_owner:
            if method not in p.model_owner_methods:
                raise SecurityError(f"party {peer!r} may not call {method!r} on the enclave")
            if method == p.provision_method:
                return self._provision_entry()
            return self._model_owner_info
        if not is_data_owner(peer) or method == p.provision_method:
            raise SecurityError(f"party {peer!r} may not call {method!r} on the enclave")
        if method == OPEN_METHOD:

            def runtime_open(job: bytes) -> dict:
                if ctx.session.attrs.pop("implicit", None):  # a private job made earlier ends here
                    self.session_closed_job(ctx.session.attrs.pop("job", None))
                return self._status(self._join(ctx, job))

            return runtime_open
        if method == STATUS_METHOD:
            return lambda: self._status(self._job_of(ctx))
        if method == CLOSE_METHOD:
            return lambda: self._close_job(ctx)
        job = self._job_of(ctx)
        with job.lock:
            role = self._ready_role(job)
            target = resolve_remote(role, method)

        @functools.wraps(target)
        def invoke(**kwargs: Any) -> Any:
            return self._invoke(job, method, kwargs)

        return invoke

    def _provision_entry(self) -> Callable[..., Any]:
        # the signature the server checks arguments against is the role's own
        role = self.primed.role if self.primed is not None and self.primed.role is not None else None
        target = resolve_remote(role, self.policy.provision_method) if role is not None else None

        def provision(**kwargs: Any) -> Any:
            return self._provision(kwargs)

        if target is not None:
            return functools.wraps(target)(provision)
        return provision

    def _model_owner_info(self) -> Any:
        """What the model owner may read: the answer to its last completed upload, nothing of jobs."""
        if self.model_info is None:
            raise ProtocolError("no model has been provisioned in this enclave process yet")
        return self.model_info

    # -- jobs ------------------------------------------------------------------------------------
    def _job_of(self, ctx: CallContext) -> Job:
        job = ctx.session.attrs.get("job")
        if job is None:  # a session that never named a job gets a fresh, private one, for its lifetime
            job = self._join(ctx, secrets.token_bytes(32))
            ctx.session.attrs["implicit"] = True
        if job.key not in self.jobs:
            raise ProtocolError("this job was closed, or replaced by a new model upload; open a new one")
        job.last_used = time.monotonic()
        return job

    def _new_job(self) -> Job:
        label = secrets.token_hex(8)
        link = ReconnectingLink(lambda: self.cloud_connect(label, False), f"cloud[{label}]")
        link.reconnect(self.cloud_wait_s)
        return Job(label=label, cloud=link)

    def _join(self, ctx: CallContext, secret: bytes) -> Job:
        """Bind this transport session to the data owner's job ``secret``; make or resume the job."""
        if not isinstance(secret, bytes) or len(secret) < JOB_SECRET_MIN:
            raise ProtocolError(f"a job secret must be at least {JOB_SECRET_MIN} random bytes")
        key = job_key(secret)
        with self._lock:
            if self.upload is None or not self._model_complete():
                raise ProtocolError("the enclave has no complete model yet: the model owner must upload one")
            job = self.jobs.get(key)
            if job is not None and job.owner != ctx.peer:
                raise SecurityError("this job belongs to another data owner")
            if job is None:
                self._check_quota(ctx.peer)
                job, self.primed = (self.primed, None) if self.primed is not None else (self._new_job(), None)
                job.key, job.owner = key, ctx.peer
                job.store = CheckpointStore(
                    self.jobs_dir / key, self.sealer, f"p3eft-checkpoint/{self.upload}/{key}"
                )
                self.jobs[key] = job
        ctx.session.attrs["job"] = job
        with job.lock:
            self._ready_role(job)
        job.last_used = time.monotonic()
        return job

    def _check_quota(self, peer: str) -> None:
        now = time.monotonic()
        mine = [j for j in self.jobs.values() if j.owner == peer]
        if len(mine) >= self.jobs_per_party or len(self.jobs) >= self.max_jobs:
            for j in mine:  # a data owner that died without closing: its idle jobs go first
                if now - j.last_used > self.job_idle_s:
                    self._drop(j)
            mine = [j for j in self.jobs.values() if j.owner == peer]
        if len(mine) >= self.jobs_per_party:
            raise ProtocolError(
                f"data owner {peer!r} already has {len(mine)} open jobs on this enclave (its quota); "
                "close one first"
            )
        if len(self.jobs) >= self.max_jobs:
            raise ProtocolError(f"the enclave is at its limit of {self.max_jobs} jobs; try later")

    def _drop(self, job: Job, remove_seal: bool = False) -> None:
        if job.key is not None:
            self.jobs.pop(job.key, None)
        job.role = None
        job.cloud.close()  # the cloud drops the job's tenant with its last session
        if remove_seal and job.store is not None:
            shutil.rmtree(job.store.path.parent, ignore_errors=True)

    def session_closed(self, session: Any) -> None:
        """A transport session ended: a job it made implicitly (it never named one) ends with it."""
        if session.attrs.get("implicit"):
            self.session_closed_job(session.attrs.get("job"))

    def session_closed_job(self, job: Job | None) -> None:
        if job is not None:
            with self._lock, job.lock:
                self._drop(job, remove_seal=True)

    def _close_job(self, ctx: CallContext) -> dict:
        job = ctx.session.attrs.pop("job", None)
        if job is not None:
            with self._lock, job.lock:
                self._drop(job, remove_seal=True)
        return {"closed": job is not None}

    def _ready_role(self, job: Job) -> object:
        """The job's role, rebuilt from the sealed model (and its checkpoint) if it has none."""
        if job.role is None:
            self._rebuild(job)
        assert job.role is not None
        return job.role

    def _status(self, job: Job) -> dict[str, Any]:
        """How many mutating calls the job's live state and its last checkpoint include."""
        return {
            "calls": job.calls,
            "checkpoint_calls": job.checkpoint_calls,
            "last_index": job.last_index,
            "last_result": job.last_result,
            "checkpoint_every": self.checkpoint_every,
            "restores": job.restores,
            "replay_methods": sorted(self.policy.replay_methods),
            "cloud_link": _link_stats(job.cloud),
        }

    def _invoke(self, job: Job, method: str, kwargs: dict[str, Any]) -> Any:
        p = self.policy
        with job.lock:
            role = self._ready_role(job)
            try:
                result = resolve_remote(role, method)(**kwargs)
            except PartyUnavailableError as err:
                self._recover_cloud(job, err)
                raise RolledBackError(
                    f"the cloud restarted during {method!r}; the enclave resumed this job from its "
                    f"checkpoint after call {job.calls}; replay from there"
                ) from err
            if method in p.replay_methods:
                job.calls += 1
                job.last_index, job.last_result = job.calls, result
                if method in p.step_methods:
                    job.steps += 1
                    if job.steps % self.checkpoint_every == 0:
                        self.checkpoint(job)
            return result

    # -- provisioning ------------------------------------------------------------------------
    def _provision(self, kwargs: dict[str, Any]) -> Any:
        with self._lock:
            if kwargs.get("refresh"):
                self._refreshing = True
            elif kwargs.get("config") is not None:
                self._refreshing = False
            if self._refreshing:
                return self._refresh(kwargs)
            if kwargs.get("config") is not None:  # a new upload: a new model, and every job ends
                for job in list(self.jobs.values()):
                    self._drop(job, remove_seal=True)
                if self.primed is not None:
                    self._drop(self.primed)
                shutil.rmtree(self.model_dir, ignore_errors=True)
                shutil.rmtree(self.jobs_dir, ignore_errors=True)
                self.upload, self._parts, self.model_info = secrets.token_hex(8), 0, None
                self.primed = self._new_job()  # a fresh cloud link: reached before anything is sent
                self.primed.role = self._make_role(self.primed)
            elif self.primed is None or self.primed.role is None or self.upload is None:
                raise ProtocolError("provisioning must start with a call that carries the model config")
            self.sealer.write(
                self.model_dir / f"part-{self._parts:06d}.sealed", kwargs, self._part_label(self._parts)
            )
            self._parts += 1
            try:
                result = resolve_remote(self.primed.role, self.policy.provision_method)(**kwargs)
            except PartyUnavailableError as err:
                self.primed.cloud.reconnect(self.cloud_wait_s)
                self.primed.role = None
                raise PartyUnavailableError(
                    f"the cloud failed during provisioning ({err}); upload again"
                ) from err
            if kwargs.get("done"):
                self.sealer.write(
                    self.model_dir / "manifest.sealed",
                    {"upload": self.upload, "parts": self._parts},
                    MANIFEST_LABEL,
                )
                self.model_info = result
            return result

    def _refresh(self, kwargs: dict[str, Any]) -> Any:
        """A mask refresh (ObfuscaTune: the model owner re-sends the same model with ``refresh=True``).

        The sealed model parts stay as they are (same model); every live job draws the next mask
        epoch, and is checkpointed as soon as the refresh completes, so a restart restores it.
        """
        if not self._model_complete():
            raise ProtocolError("refresh needs a provisioned enclave")
        live = [j for j in [self.primed, *self.jobs.values()] if j is not None and j.role is not None]
        result: Any = None
        for job in live:
            with job.lock:
                try:
                    result = resolve_remote(job.role, self.policy.provision_method)(**kwargs)
                except PartyUnavailableError as err:
                    self._recover_cloud(job, err)
                    raise PartyUnavailableError(
                        f"the cloud failed during the refresh ({err}); refresh again"
                    ) from err
                if kwargs.get("done") and job.key is not None:
                    self.checkpoint(job)
        if kwargs.get("done"):
            self._refreshing = False
            self.model_info = result
        return result if result is not None else {"refreshed_jobs": 0}

    # -- checkpoints and recovery ------------------------------------------------------------
    def _make_role(self, job: Job) -> object:
        return self.make_role(job.cloud, self.seed, self._sealing_key)

    def checkpoint(self, job: Job) -> None:
        """Seal the job's state (and the cloud's, if the role's does not hold it); atomic replace."""
        assert job.store is not None and job.role is not None
        state = {
            "calls": job.calls,
            "steps": job.steps,
            "last_index": job.last_index,
            "last_result": job.last_result,
            "enclave": resolve_remote_or_attr(job.role, "state")(),
        }
        if not self.policy.cloud_state_in_role_state:
            state["cloud"] = job.cloud.call("state")
        job.store.save(state)
        job.checkpoint_calls = job.calls
        log.info("sealed checkpoint of job %s after %d calls", job.key and job.key[:8], job.calls)

    def _rebuild(self, job: Job) -> None:
        """Build the job's role from the sealed model and its last checkpoint (if any)."""
        p = self.policy
        try:
            manifest = self._manifest()
        except MissingResourceError as err:
            raise ProtocolError(
                "the enclave has no complete model yet: the model owner must upload one"
            ) from err
        if manifest["upload"] != self.upload:
            raise SecurityError("the sealed model manifest belongs to another upload")
        ckpt = job.store.load() if job.store is not None else None
        if job.cloud.inner is None:
            job.cloud.reconnect(self.cloud_wait_s)
        role = self._make_role(job)
        if ckpt is not None and p.restore_before_provision:
            resolve_remote_or_attr(role, "load_state")(state=ckpt["enclave"])
        provision = resolve_remote(role, p.provision_method)
        for i in range(int(manifest["parts"])):
            provision(**self.sealer.read(self.model_dir / f"part-{i:06d}.sealed", self._part_label(i)))
        job.calls = job.checkpoint_calls = job.steps = job.last_index = 0
        job.last_result = None
        if ckpt is not None:
            if not p.restore_before_provision:
                resolve_remote_or_attr(role, "load_state")(state=ckpt["enclave"])
            if "cloud" in ckpt:
                job.cloud.call("load_state", state=ckpt["cloud"])
            job.calls = job.checkpoint_calls = int(ckpt["calls"])
            job.steps = int(ckpt["steps"])
            job.last_index, job.last_result = int(ckpt["last_index"]), ckpt["last_result"]
            job.restores += 1
            log.info("restored job %s after %d calls", job.key and job.key[:8], job.calls)
        job.role = role

    def _recover_cloud(self, job: Job, err: Exception) -> None:
        log.warning("cloud link failed (%s); waiting for it and restoring the job's checkpoint", err)
        job.role = None
        job.cloud.reconnect(self.cloud_wait_s)
        self._rebuild(job)


def _link_stats(link: ReconnectingLink) -> dict[str, int] | None:
    """Wire bytes on a job's enclave->cloud link since it was (re)opened (for the benchmark)."""
    stats = getattr(link.inner, "stats", None)
    if stats is None:
        return None
    return {"calls": stats.calls, "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received}


def resolve_remote_or_attr(role: object, name: str) -> Callable[..., Any]:
    """A role's method by name, remote-marked or not (the host calls state/load_state locally)."""
    fn = getattr(role, name, None)
    if fn is None:
        raise ProtocolError(f"{type(role).__name__} has no {name!r} method; the host cannot checkpoint it")
    return fn
