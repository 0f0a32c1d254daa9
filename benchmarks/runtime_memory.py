"""A party server's memory under concurrent large frames (issue 11, item 7: resource limits).

A server (its own process, mutual TLS on 127.0.0.1, the runtime's defaults unless told otherwise)
serves a role that takes a bytes payload. ``--clients`` clients send one frame each at the same
time; this script samples the server's RSS every 10 ms and prints its baseline, its peak (the
kernel's VmHWM) and its RSS once all calls are answered, for frames just over the size limit
(refused) and just within it (served).

    .venv/bin/python benchmarks/runtime_memory.py [--limit-mib 256] [--clients 6] [--json FILE]

Each client builds its frame in memory (a few copies of it), so this process needs about
``clients x 3 x limit`` of RAM; the figures are the server's alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 2**20


def serve(keys: Path, limit: int) -> None:
    """The server process: print the port, serve until stdin closes."""
    from p3eft.channel import remote
    from p3eft.runtime.pki import load_identity
    from p3eft.runtime.server import PartyServer, ServerConfig

    class Sink:
        @remote
        def take(self, data: bytes) -> int:
            return len(data)

    config = ServerConfig(max_message_bytes=limit, allowed_peers=frozenset({"enclave"}))
    server = PartyServer(Sink(), load_identity(keys / "cloud", "cloud"), config)
    print(server.start(), flush=True)
    sys.stdin.read()
    server.stop(0)


def _status_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def scenario(keys: Path, limit: int, payload: int, clients: int) -> dict:
    """One server, ``clients`` concurrent frames of a ``payload``-byte bytes value each."""
    from p3eft.runtime.client import NetworkChannel
    from p3eft.runtime.pki import load_identity

    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(keys), str(limit)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        time.sleep(0.5)
        base = _status_mb(proc.pid)["VmRSS"]
        peak, stop = [base], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _status_mb(proc.pid)["VmRSS"])
                time.sleep(0.01)

        ident = load_identity(keys / "enclave", "enclave")
        outcomes: list[str] = []

        def client() -> None:
            with NetworkChannel(f"127.0.0.1:{port}", ident, "cloud", max_message_bytes=payload + MB) as ch:
                try:
                    ch.call("take", data=bytes(payload))
                    outcomes.append("served")
                except Exception as err:  # noqa: BLE001 -- the refusal is the measured outcome
                    outcomes.append(f"refused: {err}")

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        time.sleep(1.0)
        stop.set()
        sampler.join()
        end = _status_mb(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    return {
        "payload_bytes": payload,
        "clients": clients,
        "served": sum(o == "served" for o in outcomes),
        "refusals": sorted({o for o in outcomes if o != "served"}),
        "baseline_rss_mb": round(base, 1),
        "peak_rss_mb": round(max(peak[0], end["VmHWM"]), 1),
        "rss_after_mb": round(end["VmRSS"], 1),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit-mib", type=int, default=256, help="the server's payload limit")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    from p3eft.runtime.pki import init_keys

    limit = args.limit_mib * MB
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        init_keys(keys)
        # the bytes value's frame payload is the value plus 22 bytes of encoding: just over the limit
        for label, payload in (("just over the limit", limit), ("just within (limit - 1 MiB)", limit - MB)):
            row = {"case": label, **scenario(keys, limit, payload, args.clients)}
            rows.append(row)
    print(f"server RSS, {args.clients} concurrent frames, limit {args.limit_mib} MiB")
    print(f"{'case':<30} {'served':>6} {'baseline MB':>12} {'peak MB':>9} {'after MB':>9} {'s':>6}")
    for r in rows:
        print(
            f"{r['case']:<30} {r['served']:>6} {r['baseline_rss_mb']:>12} {r['peak_rss_mb']:>9} "
            f"{r['rss_after_mb']:>9} {r['seconds']:>6}"
        )
    if args.json:
        meta = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "limit_mib": args.limit_mib,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
