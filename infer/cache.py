"""Where the toolkit caches what it builds or measures (converted models, feature caches, latency profiles, dtype
choices, compiled engines): one small module that imports nothing of ours, so any layer may ask."""

from __future__ import annotations

import os


def cache_root() -> str:
    """$MEDUSA_CACHE, else $XDG_CACHE_HOME/medusa-toolkit, else ~/.cache/medusa-toolkit."""
    if os.environ.get("MEDUSA_CACHE"):
        return os.environ["MEDUSA_CACHE"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "medusa-toolkit")
