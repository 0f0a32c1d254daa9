"""What a PrivTuner step costs each party: time, traffic, ciphertexts, refreshes, (de)cryptions, levels.

The figures are counted where they happen, the same way in process and over the network:

* traffic: :class:`AccountingChannel` wraps the data owner's channel and sizes every request (up:
  data owner -> model owner) and reply (down) with the runtime's wire codec, so a byte counted in
  process is a byte on the wire (the gRPC/TLS framing around it is not counted); a ``bytes`` value that
  starts with the engine's envelope header is also counted as one ciphertext or key;
* time: each party times only its own work (thread CPU time, so one process can host both);
  the model owner reports its figure with every finished request;
* encryptions, decryptions, refresh round trips: counted by the data owner when it does them.

A :class:`Ledger` accumulates them; :meth:`Ledger.snapshot` and :func:`diff` give per-step figures.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from p3eft.channel import Channel
from p3eft.fhe import serial
from p3eft.runtime import codec

_KIND_CODES = {v: k for k, v in serial.KINDS.items()}


def envelope_kind(value: bytes) -> str | None:
    """The engine envelope kind announced by ``value``'s header, or None (cheap: header only)."""
    if len(value) >= serial.HEADER_BYTES and value[:5] == serial.MAGIC:
        return _KIND_CODES.get(struct.unpack_from("<B", value, 6)[0])
    return None


def count_envelopes(payload: Any, counts: dict[str, int] | None = None) -> dict[str, int]:
    """How many engine envelopes of each kind a payload carries (walks lists and dicts)."""
    counts = {} if counts is None else counts
    if isinstance(payload, bytes | bytearray):
        kind = envelope_kind(bytes(payload[: serial.HEADER_BYTES]))
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + 1
    elif isinstance(payload, list | tuple):
        for v in payload:
            count_envelopes(v, counts)
    elif isinstance(payload, dict):
        for v in payload.values():
            count_envelopes(v, counts)
    return counts


def _strip_bytes(value: Any, total: list[int]) -> Any:
    if isinstance(value, bytes | bytearray):
        total[0] += len(value)
        return b""
    if isinstance(value, list | tuple):
        return [_strip_bytes(v, total) for v in value]
    if isinstance(value, dict):
        return {k: _strip_bytes(v, total) for k, v in value.items()}
    return value


def wire_size(payload: Any) -> int:
    """Bytes of ``payload`` in the runtime's wire codec, without copying its (large) byte strings:
    the codec writes a ``bytes`` value as a fixed 9-byte header and the bytes themselves."""
    total = [0]
    skeleton = _strip_bytes(payload, total)
    return len(codec.encode(skeleton)) + total[0]


@dataclass
class Ledger:
    """Running totals for one data owner's link and both parties' work on it."""

    calls: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    ciphertexts_up: int = 0
    ciphertexts_down: int = 0
    key_material_up: int = 0
    refresh_round_trips: int = 0
    encryptions: int = 0
    decryptions: int = 0
    device_cpu_s: float = 0.0
    device_wall_s: float = 0.0
    server_cpu_s: float = 0.0
    server_wall_s: float = 0.0
    min_level: int | None = None
    server_breakdown: dict[str, Any] = field(default_factory=dict)  # model owner's, cumulative
    per_method: dict[str, list[int]] = field(default_factory=dict)  # method -> [calls, up, down]

    def snapshot(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_method"] = {k: list(v) for k, v in self.per_method.items()}
        d["server_breakdown"] = json_copy(self.server_breakdown)
        return d

    @contextlib.contextmanager
    def device_time(self) -> Iterator[None]:
        """Time a stretch of the data owner's own work (encrypt, decrypt, refresh answers)."""
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            self.device_cpu_s += time.thread_time() - cpu0
            self.device_wall_s += time.perf_counter() - wall0

    def add_server_cost(self, cost: dict[str, float]) -> None:
        self.server_cpu_s += float(cost.get("server_cpu_s", 0.0))
        self.server_wall_s += float(cost.get("server_wall_s", 0.0))
        if isinstance(cost.get("breakdown"), dict):
            self.server_breakdown = cost["breakdown"]
        lvl = cost.get("min_level")
        if lvl is not None:
            self.min_level = int(lvl) if self.min_level is None else min(self.min_level, int(lvl))


def json_copy(value: Any) -> Any:
    """A deep copy of nested dicts/lists of numbers and strings."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(v) for v in value]
    return value


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Per-step figures: numeric fields of two snapshots subtracted, nested dicts too (levels and
    per-method kept as they are)."""
    out: dict[str, Any] = {}
    for k, v in after.items():
        if k in ("min_level", "per_method"):
            out[k] = v
        elif isinstance(v, dict):
            out[k] = diff(v, before.get(k) or {})
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = v - before.get(k, 0)
    return out


class AccountingChannel:
    """A :class:`~p3eft.channel.Channel` wrapper that books every call's traffic in a :class:`Ledger`."""

    def __init__(self, inner: Channel, ledger: Ledger | None = None) -> None:
        self.inner = inner
        self.ledger = ledger or Ledger()

    def call(self, method: str, /, **kwargs: Any) -> Any:
        up = wire_size(kwargs)
        result = self.inner.call(method, **kwargs)
        down = wire_size(result)
        led = self.ledger
        led.calls += 1
        led.bytes_up += up
        led.bytes_down += down
        sent, got = count_envelopes(kwargs), count_envelopes(result)
        led.ciphertexts_up += sent.get("ciphertext", 0)
        led.key_material_up += sum(v for k, v in sent.items() if k != "ciphertext")
        led.ciphertexts_down += got.get("ciphertext", 0)
        row = led.per_method.setdefault(method, [0, 0, 0])
        row[0] += 1
        row[1] += up
        row[2] += down
        return result

    def close(self) -> None:
        self.inner.close()
