"""PrivTuner's messages between a data owner and a model owner (ours).

Every exchange is started by the data owner (it is the client; a device behind a NAT can run it).
When the model owner needs the data owner's help in the middle of a computation -- a client-aided
refresh -- it does not call back: it *answers* the pending request with a :class:`Callback` naming
the data owner's ``@remote`` method to run, and the data owner sends that method's result with
``resume``. So one link, one direction of connection, and the same messages in process and over gRPC.

What may reach the model owner is fixed here, per method: the *control fields* (session token, example
key, learning rate, flags) and the fields that carry checked ciphertext envelopes or public key material.
:mod:`p3eft.privtuner.audit` checks every recorded request against these tables; anything else (an
array, a float in a ciphertext field, an unknown field) is a violation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from p3eft.errors import ProtocolError


class EndPolicy(StrEnum):
    """What may happen to the trained adapter (ours). The model owner sets it and announces it in the
    session setup, so it binds the data owner:

    * ``export``: the data owner may fetch the encrypted adapter and head and decrypt them into a
      standard PEFT folder (plaintext inference), at the end or after any step;
    * ``encrypted``: the model owner never hands out adapter ciphertexts. Its checkpoints are sealed
      under its own key (the data owner stores them but cannot open either layer), so the adapter is
      only ever decrypted as the logits it produces: inference stays two-party.
    """

    EXPORT = "export"
    ENCRYPTED = "encrypted"


# --- the model owner's remote methods and what each may receive -----------------------------------------

OPEN = "pt_open_session"
KEYS = "pt_upload_keys"
FORWARD = "pt_forward"
BACKWARD = "pt_backward"
UPDATE = "pt_update"
RESUME = "pt_resume"
ADAPTER = "pt_adapter"
CHECKPOINT = "pt_checkpoint"
RESTORE = "pt_restore"
CLOSE = "pt_close_session"

# method -> {field: python types allowed}; control fields only, never data-owner values
CONTROL_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    OPEN: {"options": (dict,)},
    KEYS: {"session": (str,)},
    FORWARD: {"session": (str,), "key": (str, type(None)), "train": (bool,)},
    BACKWARD: {"session": (str,)},
    UPDATE: {"session": (str,), "lr": (float, int)},
    RESUME: {"session": (str,)},
    ADAPTER: {"session": (str,)},
    CHECKPOINT: {"session": (str,)},
    RESTORE: {"session": (str,), "tag": (str,)},  # tag: the model owner's own MAC, hex
    CLOSE: {"session": (str,)},
}
# ``options`` of OPEN: the data owner's public choices for its session
OPEN_OPTIONS: dict[str, tuple[type, ...]] = {"seed": (int, type(None)), "label": (str,)}
# method -> {field: envelope kinds its bytes must parse as}
SECRET_FREE_BYTES: dict[str, dict[str, tuple[str, ...]]] = {
    KEYS: {"keys": ("params", "public_key", "relin_keys", "galois_keys")},
    FORWARD: {"inputs": ("ciphertext",)},
    BACKWARD: {"dlogits": ("ciphertext",)},
    RESUME: {"answer": ("ciphertext",)},
    RESTORE: {"adapter": ("ciphertext",), "sealed": ("sealed_state",)},
}

# a sealed checkpoint (end policy ``encrypted``): the model owner's own AEAD blob, labelled with this prefix
SEALED_STATE_LABEL = "p3eft-privtuner-adapter-v1"

# the data owner's methods the model owner may ask for in a Callback (nothing else is dispatched)
DATA_OWNER_CALLBACKS = ("fhe_refresh",)


@dataclass(frozen=True)
class SessionSetup:
    """What the model owner hands a data owner when it opens a session (all public to that data owner).

    ``model`` carries the backend's public session setup (e.g. the rotated embedding tables, the packing
    and logits layouts); ``params``/``galois_steps`` say which keys to generate; ``refresh_bound`` and
    ``refresh_lambda`` are the mask parameters the data owner can check its refresh views against.
    """

    session: str
    params: str
    galois_steps: list[int]
    refresh_bound: float
    refresh_lambda: int
    model: dict[str, Any] = field(default_factory=dict)
    end_policy: EndPolicy = EndPolicy.EXPORT

    def to_payload(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "params": self.params,
            "galois_steps": list(self.galois_steps),
            "refresh_bound": float(self.refresh_bound),
            "refresh_lambda": int(self.refresh_lambda),
            "model": self.model,
            "end_policy": self.end_policy.value,
        }

    @classmethod
    def from_payload(cls, p: Any) -> SessionSetup:
        try:
            return cls(
                str(p["session"]),
                str(p["params"]),
                [int(s) for s in p["galois_steps"]],
                float(p["refresh_bound"]),
                int(p["refresh_lambda"]),
                dict(p.get("model") or {}),
                EndPolicy(p.get("end_policy", EndPolicy.EXPORT.value)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(f"malformed session setup from the model owner: {err}") from err


@dataclass(frozen=True)
class Callback:
    """The model owner asks the data owner to run one of its ``@remote`` methods, then ``resume``."""

    method: str
    kwargs: dict[str, Any]

    def to_payload(self) -> dict[str, Any]:
        return {"kind": "callback", "method": self.method, "kwargs": self.kwargs}


@dataclass(frozen=True)
class Done:
    """The pending request finished: its result, and the model owner's cost of producing it."""

    result: Any
    cost: dict[str, float]

    def to_payload(self) -> dict[str, Any]:
        return {"kind": "done", "result": self.result, "cost": self.cost}


def parse_reply(p: Any) -> Callback | Done:
    """A model-owner reply to a pending request, checked for shape."""
    if not isinstance(p, dict) or p.get("kind") not in ("callback", "done"):
        raise ProtocolError("model owner sent a reply that is neither a callback nor a result")
    if p["kind"] == "callback":
        method, kwargs = p.get("method"), p.get("kwargs")
        if method not in DATA_OWNER_CALLBACKS or not isinstance(kwargs, dict):
            raise ProtocolError(f"model owner asked for a data-owner method it may not call: {method!r}")
        return Callback(method, kwargs)
    return Done(p.get("result"), dict(p.get("cost") or {}))


def drive(
    reply: Any,
    answer: Callable[[Callback], bytes],
    resume: Callable[[bytes], Any],
) -> Done:
    """Data-owner loop: answer callbacks until the model owner says done."""
    msg = parse_reply(reply)
    while isinstance(msg, Callback):
        msg = parse_reply(resume(answer(msg)))
    return msg
