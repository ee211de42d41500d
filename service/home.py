"""Where SlimServe keeps its state: ``$SLIMSERVE_HOME``, default ``~/.cache/slimserve``.

The standard library only, so a launcher, the CLI and the catalog all read it without loading
torch or the web stack.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path.home() / ".cache" / "slimserve"


def slimserve_home() -> Path:
    """``$SLIMSERVE_HOME``, or the default when it is unset or empty."""
    return Path(os.environ.get("SLIMSERVE_HOME") or DEFAULT_HOME)


def builtin_cache() -> Path:
    """Where trained built-ins are cached: ``<home>/builtin``."""
    return slimserve_home() / "builtin"
