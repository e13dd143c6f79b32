"""Which kind of persd directory a path is: collect, train, eval or loop (persd.engine.rundirs.kinds)."""
from __future__ import annotations

from pathlib import Path

from persd.engine.rundirs.kinds import KINDS, kind_of, marker_list
from persd.runtime.errors import UsageError

__all__ = ["KINDS", "detect"]


def detect(path: Path) -> str:
    """The kind of a directory; a collect or eval still being written is recognised by its work files."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such directory")
    if not p.is_dir():
        raise UsageError(f"{p}: not a directory (persd report takes collect, train, eval or loop directories)")
    kind = kind_of(p)
    if kind is None:
        raise UsageError(f"{p}: not a persd collect, train, eval or loop directory (none of {marker_list()})")
    return kind
