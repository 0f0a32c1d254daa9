"""A party server in its own process whose memory the tests can read (issue 11, item 7).

Usage: ``python memory_server.py KEYS_DIR LIMIT_BYTES INFLIGHT_BYTES [MMAP_THRESHOLD]``. Prints its port,
then serves until its stdin closes (the test process ends or closes it) or 300 s pass. Its role
takes a bytes payload and reports its own RSS, peak RSS, the bytes the server took off the link and
the most bytes its budget ever held; ``reset_peak`` zeroes the kernel's peak RSS (``clear_refs``)
and ``trim`` calls ``malloc_trim`` itself, for a clean baseline. ``take(data, keep=True)`` keeps
the request's bytes (until ``drop``): the negative control of the memory-return test.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from pathlib import Path

from p3eft.channel import remote
from p3eft.runtime.pki import load_identity
from p3eft.runtime.server import PartyServer, ServerConfig

MB = 2**20


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"/proc/self/status has no {field}")


class Sink:
    def __init__(self) -> None:
        self.server: PartyServer | None = None
        self.kept: list[bytes] = []

    @remote
    def take(self, data: bytes, keep: bool = False) -> int:
        if keep:
            self.kept.append(data)
        return len(data)

    @remote
    def drop(self) -> dict:
        self.kept.clear()
        return {}

    @remote
    def memory(self) -> dict:
        assert self.server is not None
        return {
            "rss_mb": _status_mb("VmRSS"),
            "peak_mb": _status_mb("VmHWM"),
            "bytes_in": self.server.stats["bytes_in"],
            "budget_peak": self.server.budget.peak,
            "budget_used": self.server.budget.used,
            "budget_limit": self.server.budget.limit,
        }

    @remote
    def trim(self) -> dict:
        """Give freed pages back now (a clean baseline), whether or not the server trims itself."""
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return {}

    @remote
    def reset_peak(self) -> dict:
        assert self.server is not None
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
        self.server.budget.peak = 0
        return {}


def main() -> None:
    keys, limit, inflight = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    mmap_threshold = int(sys.argv[4]) if len(sys.argv) > 4 else None
    role = Sink()
    config = ServerConfig(
        max_message_bytes=limit,
        inflight_bytes=inflight,
        allowed_peers=frozenset({"enclave"}),
        max_concurrent_rpcs=8,
        workers=10,
        mmap_threshold=mmap_threshold,
    )
    server = PartyServer(role, load_identity(keys / "cloud", "cloud"), config)
    role.server = server
    print(server.start(), flush=True)
    done = threading.Thread(target=sys.stdin.read, daemon=True)
    done.start()
    done.join(timeout=300)
    server.stop(0)


if __name__ == "__main__":
    main()
