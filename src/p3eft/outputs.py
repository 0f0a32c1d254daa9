"""Output paths checked before any work starts: a bad ``--out`` or ``--json`` fails in a second, as one line.

Every command that writes (training, evaluation, the demo, the wireless figures, the attack suite, the
key generator) refuses an output it could not write *before* it loads a model or spends minutes
computing, instead of a traceback at the end. This module imports nothing heavy (no torch), so the
light commands (``p3eft keys``, ``p3eft wireless``) and the runtime, which knows no scheme, can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from p3eft.errors import P3eftError


def check_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create ``path`` (and parents) or refuse it in one line: called before any model loads."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise P3eftError(f"{flag} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise P3eftError(f"{flag} {path} cannot be created: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise P3eftError(f"{flag} {path} is not writable")
    return path


def check_writable_file(path: str | Path, flag: str = "--json") -> Path:
    """Refuse an output file path that cannot be written (a folder, or an unwritable parent)."""
    path = Path(path)
    if path.is_dir():
        raise P3eftError(f"{flag} {path} is a folder, not a file")
    check_writable_dir(path.parent, f"{flag}'s folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise P3eftError(f"{flag} {path} is not writable")
    return path
