"""How fast a server cuts calls whose request stops arriving, and what it serves meanwhile (ours).

Each run starts servers in this process (mutual TLS on 127.0.0.1, a 16 MiB size limit and byte
budget, ``--stall-s`` as ``receive_stall_s``) and measures, from the client side:

- ``stall``: a stream sends the header of a 12 MiB frame and stalls; how long an honest 12 MiB call
  started once the stalled frame's reservation is in must wait (``inflight_wait_s`` is 10 s);
- ``silent``: two calls (the cap, ``max_concurrent_rpcs=2``; one per method) never send a byte;
  when each is cut, counted from its start;
- ``steady`` / ``trickle``: a valid 2 MiB frame sent in 128 KiB chunks every 0.07 s, then in 32 KiB
  chunks every 0.2 s, against ``receive_min_rate`` 1 MiB/s: how long the first took (served) and
  when the second was cut (its deadline: stall allowance + 2 MiB / (1 MiB/s)).

    .venv/bin/python benchmarks/runtime_deadlines.py [--runs 3] [--stall-s 0.5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from p3eft.channel import remote
from p3eft.errors import P3eftError
from p3eft.runtime import codec
from p3eft.runtime.client import NetworkChannel
from p3eft.runtime.frame import Frame, Kind
from p3eft.runtime.pki import init_keys, load_identity
from p3eft.runtime.server import FULL_METHOD, PartyServer, ServerConfig

MB = 2**20
LIMIT = 16 * MB
PLEN_AT = struct.calcsize("<4sHBB16sQH")  # offset of the payload-length field in a frame header


class Sink:
    @remote
    def take(self, data: bytes) -> int:
        return len(data)


def _server(keys: Path, **config) -> PartyServer:
    base = {"allowed_peers": frozenset({"enclave"}), "max_message_bytes": LIMIT, "inflight_bytes": LIMIT}
    server = PartyServer(Sink(), load_identity(keys / "cloud", "cloud"), ServerConfig(**{**base, **config}))
    server.start()
    return server


def _channel(keys: Path, server: PartyServer) -> NetworkChannel:
    ident = load_identity(keys / "enclave", "enclave")
    return NetworkChannel(f"127.0.0.1:{server.port}", ident, "cloud", max_message_bytes=LIMIT)


def _stall(send: Callable[[Iterator[bytes]], bytes], first: bytes | None, go: threading.Event) -> dict:
    """Start a call that sends ``first`` (or nothing) and then waits for ``go``; the dict gets
    ``ended`` (monotonic time) and ``error`` once the call ends."""
    out: dict = {"started": time.monotonic()}

    def chunks() -> Iterator[bytes]:
        if first is not None:
            yield first
        go.wait(60)

    def run() -> None:
        try:
            send(chunks())
        except P3eftError as err:
            out["error"] = type(err).__name__
        out["ended"] = time.monotonic()

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def _wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError("timed out waiting for the server")
        time.sleep(0.01)


def _paced(ch: NetworkChannel, payload: int, chunk: int, gap_s: float) -> tuple[bool, float]:
    ch._seq += 1
    raw = Frame(Kind.REQUEST, ch.session_id, ch._seq, "take", codec.encode({"data": bytes(payload)})).pack()

    def chunks() -> Iterator[bytes]:
        for at in range(0, len(raw), chunk):
            if at:
                time.sleep(gap_s)
            yield raw[at : at + chunk]

    t0 = time.monotonic()
    try:
        ch.send_chunks(chunks())
        served = True
    except P3eftError:
        served = False
    return served, time.monotonic() - t0


def one_run(keys: Path, stall_s: float) -> dict:
    go = threading.Event()
    row: dict = {}
    server = _server(keys, receive_stall_s=stall_s, inflight_wait_s=10.0)
    hostile, honest = _channel(keys, server), _channel(keys, server)
    head = bytearray(Frame(Kind.REQUEST, hostile.session_id, 10**6, "take", b"").pack())
    struct.pack_into("<Q", head, PLEN_AT, 12 * MB)
    _stall(hostile.send_chunks, bytes(head) + bytes(MB - len(head)), go)
    _wait_until(lambda: server.budget.used >= 12 * MB)
    t0 = time.monotonic()
    honest.call("take", data=bytes(12 * MB))
    row["stall_honest_wait_s"] = time.monotonic() - t0
    hostile.close(), honest.close()
    server.stop(0)

    server = _server(keys, receive_stall_s=stall_s, max_concurrent_rpcs=2, workers=4)
    hostile = _channel(keys, server)
    single = hostile._grpc.stream_unary(FULL_METHOD)
    calls = [_stall(hostile.send_chunks, None, go), _stall(lambda it: hostile._send(single, it), None, go)]
    for c in calls:
        c["thread"].join(10)
    row["silent_cut_after_s"] = [c["ended"] - c["started"] for c in calls]
    row["silent_errors"] = [c.get("error") for c in calls]
    hostile.close()
    server.stop(0)

    server = _server(keys, receive_stall_s=stall_s, receive_min_rate=float(MB))
    ch = _channel(keys, server)
    row["steady_served"], row["steady_s"] = _paced(ch, 2 * MB, 128 * 1024, 0.07)
    row["trickle_served"], row["trickle_cut_after_s"] = _paced(ch, 2 * MB, 32 * 1024, 0.2)
    row["cut_by_server"] = server.watchdog.cut
    ch.close()
    server.stop(0)
    go.set()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stall-s", type=float, default=0.5)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # every cut logs one line; the table says it all
    keys = Path(tempfile.mkdtemp()) / "keys"
    init_keys(keys)
    rows = [one_run(keys, args.stall_s) for _ in range(args.runs)]
    print(f"receive_stall_s {args.stall_s:g}, receive_min_rate 1 MiB/s (steady/trickle), 16 MiB budget")
    print(
        "| run | honest 12 MiB call waited | silent calls cut after | steady 2 MiB served in | trickle cut after |"
    )
    print("|---|---|---|---|---|")
    for i, r in enumerate(rows):
        silent = ", ".join(f"{t:.2f}" for t in r["silent_cut_after_s"])
        steady = f"{r['steady_s']:.2f} s" if r["steady_served"] else "NOT served"
        trickle = f"{r['trickle_cut_after_s']:.2f} s" if not r["trickle_served"] else "NOT cut"
        print(f"| {i} | {r['stall_honest_wait_s']:.2f} s | {silent} s | {steady} | {trickle} |")
    if args.json:
        meta = {"stall_s": args.stall_s, "min_rate": MB, "limit": LIMIT, "python": platform.python_version()}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
