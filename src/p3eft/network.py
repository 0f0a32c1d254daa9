"""p3eft's network policy (ours): no model hub and no dataset hub unless the user says so.

``P3EFT_ALLOW_HUB=1`` is the one switch, for models (:mod:`p3eft.models`) and datasets
(:mod:`p3eft.data`). Without it, every load runs inside :func:`offline`, which makes
``huggingface_hub``/``transformers`` offline *for that call only*, so a missing file fails fast instead
of trying a download, while the rest of the process (a user's own code that imports p3eft) keeps its
own settings. Importing p3eft changes nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_TRUE = {"1", "true", "yes"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_allowed() -> bool:
    """True only when the user explicitly allowed the Hugging Face hub (``P3EFT_ALLOW_HUB=1``)."""
    return os.environ.get("P3EFT_ALLOW_HUB", "").lower() in _TRUE


def _hub_constants():
    return sys.modules.get("huggingface_hub.constants")


@contextmanager
def offline() -> Iterator[None]:
    """Within the block, hub libraries do not touch the network (unless the hub is allowed).

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, at import, into ``constants.HF_HUB_OFFLINE``; we set
    both the variables and the constant, and put back what was there before on exit.
    """
    if hub_allowed():
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    before = _hub_constants()
    saved_const = getattr(before, "HF_HUB_OFFLINE", None)
    for k in _OFFLINE_VARS:
        os.environ[k] = "1"
    if before is not None:
        before.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        after = _hub_constants()
        if after is not None:
            # imported inside the block, it read our "1": give it what the restored environment says
            after.HF_HUB_OFFLINE = (
                saved_const if before is not None else (saved_env["HF_HUB_OFFLINE"] or "").lower() in _TRUE
            )
