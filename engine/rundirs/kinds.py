"""Which command made a directory: the one answer used by `persd.engine.ownership` (a command never
writes into another's directory), `persd report` (what to read) and `persd loop` (a stage's output).

    kind_of(path)   # "loop" | "collect" | "eval" | "train" | None (empty, new, or not persd's)

Each kind's module names its markers (files only that command writes); loop is asked first, since a
loop directory also holds a summary.json.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from persd.engine.collect import layout as collect
from persd.engine.rundirs import eval as eval_
from persd.engine.rundirs import loop, train

KINDS = ("loop", "collect", "eval", "train")  # the order they are recognised in
MARKERS: dict[str, tuple[str, ...]] = {"loop": loop.MARKERS, "collect": collect.MARKERS, "eval": eval_.MARKERS,
                                       "train": train.MARKERS}


def kind_of(path: Path | str) -> str | None:
    """The command whose output `path` is, or None."""
    p = Path(path)
    if not p.is_dir():
        return None
    for kind in KINDS:
        if any(any(p.glob(pattern)) for pattern in MARKERS[kind]):
            return kind
    return None


def marker_list() -> str:
    """The markers as one line, for a message: `manifest*.json, shards, ...`."""
    return ", ".join(m for kind in KINDS for m in MARKERS[kind])


def hint(out: Path | str) -> str:
    """The line each command prints at the end of a run: how to see it."""
    return f"report: persd report {shlex.quote(str(out))}"


__all__ = ["KINDS", "MARKERS", "kind_of", "hint", "marker_list"]
