"""Finding the benchmark data folder: an explicit path, ``$P3EFT_DATA``, or ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

from p3eft.errors import MissingResourceError

_PACKAGE_FILE = Path(__file__).resolve()


def _repo_roots() -> list[Path]:
    """Candidate checkout roots: the folder holding ``src/p3eft`` (editable install) and the cwd's parents."""
    roots: list[Path] = []
    for parent in _PACKAGE_FILE.parents:
        if (parent / "pyproject.toml").is_file():
            roots.append(parent)
            break
    cwd = Path.cwd().resolve()
    for parent in [cwd, *cwd.parents]:
        if (parent / "pyproject.toml").is_file() or (parent / ".git").exists():
            roots.append(parent)
            break
    return roots


def resolve_data_dir(explicit: str | Path | None = None) -> Path:
    """The data folder: ``explicit`` > ``$P3EFT_DATA`` > ``<checkout>/../shared/data`` > error.

    An explicit or environment path that does not exist is an error (we never silently fall back
    from a path the user named, neither to another folder nor to the hub).
    """
    for label, value in (("--data-dir", explicit), ("P3EFT_DATA", os.environ.get("P3EFT_DATA"))):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise MissingResourceError(f"data directory {path} (from {label}) does not exist")
            return path.resolve()
    tried = []
    for root in _repo_roots():
        cand = root.parent / "shared" / "data"
        tried.append(str(cand))
        if cand.is_dir():
            return cand.resolve()
    raise MissingResourceError(
        "no data directory: pass --data-dir DIR or set P3EFT_DATA "
        f"(also looked for ../shared/data beside the checkout: {', '.join(tried) or 'no checkout found'})"
    )
