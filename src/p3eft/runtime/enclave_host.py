"""The enclave host: serves an enclave role, seals its state, and survives restarts (ours).

The host sits between the network and the scheme's enclave role object (for ObfuscaTune,
:class:`p3eft.obfuscatune.enclave.Enclave`). It adds what a process on a real host needs and the
role itself should not care about:

* **access rules** -- the model owner may only provision (and read ``info``); the data owner may
  call everything else; a policy can keep methods host-only (never callable over the network);
* **sealed model** -- every provisioning chunk is sealed to disk before the role sees it, so a
  restarted enclave can rebuild itself (and the cloud) without the model owner;
* **sealed checkpoints** -- every ``checkpoint_every`` mutating calls (``train_step`` ...) the role's
  state and the cloud's state (obfuscated coordinates) are sealed atomically;
* **recovery** -- at start-up, or when the cloud fails mid-call, the host reconnects to the cloud,
  builds a fresh role, replays the sealed model, loads the checkpoint into both, and tells
  the caller how many mutating calls that state includes (``runtime_status``), so the data owner's
  :class:`~p3eft.runtime.resilient.ResilientChannel` replays the rest.

The role factory gets the cloud link, the enclave's persistent session seed (sealed on first start,
so masks drawn after a restart are the masks drawn before it) and the sealing key.
"""

from __future__ import annotations

import functools
import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p3eft.channel import remote, resolve_remote
from p3eft.errors import ProtocolError, SecurityError
from p3eft.runtime.errors import PartyUnavailableError
from p3eft.runtime.resilient import STATUS_METHOD, ReconnectingLink, RolledBackError
from p3eft.runtime.sealing import CheckpointStore, Sealer

log = logging.getLogger("p3eft.runtime.enclave_host")


@dataclass(frozen=True)
class HostPolicy:
    """Which methods do what, for the scheme the host serves (defaults: ObfuscaTune's contract).

    ``replay_methods`` are the calls that change the role's state; the host counts them, seals a
    checkpoint every K of them, and the data owner's channel replays them after a restart.
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
    peers: dict[str, str] = field(default_factory=lambda: {"model": "model-owner", "data": "data-owner"})


class EnclaveHost:
    """Owns the enclave role object, its sealed state and its recovery."""

    def __init__(
        self,
        make_role: Callable[[Any, bytes, bytes], object],
        cloud_connect: Callable[[], Any],
        state_dir: str | Path,
        sealer: Sealer,
        sealing_key: bytes,
        checkpoint_every: int = 1,
        policy: HostPolicy | None = None,
        cloud_wait_s: float = 60.0,
        session_seed: bytes | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ProtocolError("checkpoint_every must be at least 1")
        self.make_role = make_role
        self.state_dir = Path(state_dir)
        self.sealer = sealer
        self._sealing_key = sealing_key
        self.checkpoint_every = checkpoint_every
        self.policy = policy or HostPolicy()
        self.cloud_wait_s = cloud_wait_s
        self.cloud = ReconnectingLink(cloud_connect, "cloud")
        self.store = CheckpointStore(self.state_dir, sealer)
        self.model_dir = self.state_dir / "model"
        self.calls = 0
        self.steps = 0
        self.checkpoint_calls = 0
        self.last_result: Any = None
        self.checkpoints_written = 0
        self.restores = 0
        self._parts = 0
        self._refreshing = False
        self.seed = self._load_or_make_seed(session_seed)
        self.cloud.reconnect(cloud_wait_s)
        self.role = self._new_role()
        if self._model_complete():
            self.restore()

    def _new_role(self) -> object:
        return self.make_role(self.cloud, self.seed, self._sealing_key)

    # -- persistent identity -----------------------------------------------------------------
    def _load_or_make_seed(self, fixed: bytes | None) -> bytes:
        """The session seed: sealed on first start, read back after a restart. ``fixed`` (tests and
        the demo's in-process comparison only) pins it, so another process can draw the same masks."""
        path = self.state_dir / "host.sealed"
        if path.is_file():
            seed = self.sealer.read(path, "p3eft-host")["session_seed"]
            if fixed is not None and fixed != seed:
                raise SecurityError(f"{self.state_dir} belongs to an enclave session with another seed")
            return seed
        seed = fixed if fixed is not None else secrets.token_bytes(32)
        self.sealer.write(path, {"session_seed": seed}, "p3eft-host")
        return seed

    def _model_complete(self) -> bool:
        return (self.model_dir / "manifest.sealed").is_file()

    # -- what the server calls ---------------------------------------------------------------
    def resolve(self, method: str, peer: str) -> Callable[..., Any]:
        """The callable for ``method`` from ``peer``, after the access rules."""
        p = self.policy
        if method == STATUS_METHOD:
            self._check_peer(method, peer, {p.peers["data"]})
            return self.runtime_status
        if method in p.host_only:
            raise SecurityError(f"{method!r} is host-only: enclave state never leaves the enclave unsealed")
        allowed = {p.peers["model"]} if method == p.provision_method else {p.peers["data"]}
        if method in p.model_owner_methods:
            allowed.add(p.peers["model"])
        self._check_peer(method, peer, allowed)
        target = resolve_remote(self.role, method)

        @functools.wraps(target)
        def invoke(**kwargs: Any) -> Any:
            return self._invoke(method, kwargs)

        return invoke

    @staticmethod
    def _check_peer(method: str, peer: str, allowed: set[str]) -> None:
        if peer not in allowed:
            raise SecurityError(f"party {peer!r} may not call {method!r} on the enclave")

    @remote
    def runtime_status(self) -> dict[str, Any]:
        """How many mutating calls the live state and the last checkpoint include."""
        return {
            "calls": self.calls,
            "checkpoint_calls": self.checkpoint_calls,
            "last_result": self.last_result,
            "checkpoint_every": self.checkpoint_every,
            "restores": self.restores,
            "replay_methods": sorted(self.policy.replay_methods),
            "cloud_link": self._cloud_link_stats(),
        }

    def _cloud_link_stats(self) -> dict[str, int] | None:
        """Wire bytes on the enclave->cloud link since it was (re)opened (for the benchmark)."""
        stats = getattr(self.cloud.inner, "stats", None)
        if stats is None:
            return None
        return {"calls": stats.calls, "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received}

    def _invoke(self, method: str, kwargs: dict[str, Any]) -> Any:
        p = self.policy
        if method == p.provision_method:
            return self._provision(kwargs)
        try:
            result = resolve_remote(self.role, method)(**kwargs)
        except PartyUnavailableError as err:
            self._recover_cloud(err)
            raise RolledBackError(
                f"the cloud restarted during {method!r}; the enclave resumed from its checkpoint "
                f"after call {self.calls}; replay from there"
            ) from err
        if method in p.replay_methods:
            self.calls += 1
            self.last_result = result
            if method in p.step_methods:
                self.steps += 1
                if self.steps % self.checkpoint_every == 0:
                    self.checkpoint()
        return result

    # -- provisioning ------------------------------------------------------------------------
    def _provision(self, kwargs: dict[str, Any]) -> Any:
        if kwargs.get("refresh"):
            self._refreshing = True
        elif kwargs.get("config") is not None:
            self._refreshing = False
        if self._refreshing:
            return self._refresh(kwargs)
        if kwargs.get("config") is not None:  # a new upload starts a new model and a new job
            shutil.rmtree(self.model_dir, ignore_errors=True)
            self.store.path.unlink(missing_ok=True)
            self._parts = 0
            self.calls = self.checkpoint_calls = self.steps = 0
            self.last_result = None
            self.role = self._new_role()
        elif self._parts == 0 and not self._model_complete():
            raise ProtocolError("provisioning must start with a call that carries the model config")
        self.sealer.write(self.model_dir / f"part-{self._parts:06d}.sealed", kwargs, "p3eft-model-part")
        self._parts += 1
        try:
            result = resolve_remote(self.role, self.policy.provision_method)(**kwargs)
        except PartyUnavailableError as err:
            self.cloud.reconnect(self.cloud_wait_s)
            raise PartyUnavailableError(
                f"the cloud failed during provisioning ({err}); upload again"
            ) from err
        if kwargs.get("done"):
            self.sealer.write(self.model_dir / "manifest.sealed", {"parts": self._parts}, "p3eft-model")
        return result

    def _refresh(self, kwargs: dict[str, Any]) -> Any:
        """A mask refresh (ObfuscaTune: the model owner re-sends the same model with ``refresh=True``).

        The sealed model parts stay as they are (same model); the role draws the next mask epoch. A
        checkpoint is sealed as soon as the refresh completes, so a restart restores the new epoch.
        """
        if not self._model_complete():
            raise ProtocolError("refresh needs a provisioned enclave")
        try:
            result = resolve_remote(self.role, self.policy.provision_method)(**kwargs)
        except PartyUnavailableError as err:
            self._recover_cloud(err)
            raise PartyUnavailableError(
                f"the cloud failed during the refresh ({err}); refresh again"
            ) from err
        if kwargs.get("done"):
            self._refreshing = False
            self.checkpoint()
        return result

    # -- checkpoints and recovery ------------------------------------------------------------
    def checkpoint(self) -> None:
        """Seal the role's state (and the cloud's, if the role's does not hold it); atomic replace."""
        state = {
            "calls": self.calls,
            "steps": self.steps,
            "last_result": self.last_result,
            "enclave": resolve_remote_or_attr(self.role, "state")(),
        }
        if not self.policy.cloud_state_in_role_state:
            state["cloud"] = self.cloud.call("state")
        self.store.save(state)
        self.checkpoint_calls = self.calls
        self.checkpoints_written += 1
        log.info("sealed checkpoint after %d calls", self.calls)

    def restore(self) -> None:
        """Rebuild role and cloud from the sealed model and the last checkpoint."""
        p = self.policy
        manifest = self.sealer.read(self.model_dir / "manifest.sealed", "p3eft-model")
        ckpt = self.store.load()
        self.role = self._new_role()
        if ckpt is not None and p.restore_before_provision:
            resolve_remote_or_attr(self.role, "load_state")(state=ckpt["enclave"])
        provision = resolve_remote(self.role, p.provision_method)
        for i in range(int(manifest["parts"])):
            provision(**self.sealer.read(self.model_dir / f"part-{i:06d}.sealed", "p3eft-model-part"))
        self._parts = int(manifest["parts"])
        self.calls = self.checkpoint_calls = self.steps = 0
        self.last_result = None
        if ckpt is not None:
            if not p.restore_before_provision:
                resolve_remote_or_attr(self.role, "load_state")(state=ckpt["enclave"])
            if "cloud" in ckpt:
                self.cloud.call("load_state", state=ckpt["cloud"])
            self.calls = self.checkpoint_calls = int(ckpt["calls"])
            self.steps = int(ckpt["steps"])
            self.last_result = ckpt["last_result"]
        self.restores += 1
        log.info("restored enclave state after %d calls", self.calls)

    def _recover_cloud(self, err: Exception) -> None:
        log.warning("cloud link failed (%s); waiting for it and restoring the checkpoint", err)
        self.cloud.reconnect(self.cloud_wait_s)
        self.restore()


def resolve_remote_or_attr(role: object, name: str) -> Callable[..., Any]:
    """A role's method by name, remote-marked or not (the host calls state/load_state locally)."""
    fn = getattr(role, name, None)
    if fn is None:
        raise ProtocolError(f"{type(role).__name__} has no {name!r} method; the host cannot checkpoint it")
    return fn
