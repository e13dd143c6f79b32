"""Which command an output directory belongs to, so that one command never writes into (or, with
--force, deletes from) a directory another command made.

    refuse_foreign(out, "eval")   # UsageError (exit 2) when DIR holds a collect, train or loop run
The answer comes from persd.engine.rundirs.kinds (each kind's markers), as for `persd report`.
"""
from __future__ import annotations

from pathlib import Path

from persd.engine.rundirs.kinds import MARKERS, kind_of
from persd.runtime.errors import UsageError

owner = kind_of  # the command whose output DIR is, or None (empty, new, or not persd's)


def refuse_foreign(out: Path | str, command: str) -> None:
    other = owner(out)
    if other is not None and other != command:
        raise UsageError(f"--out {out} holds the output of `persd {other}`, not of `persd {command}`: "
                         f"use another --out (nothing was changed there)")


__all__ = ["owner", "refuse_foreign", "MARKERS"]
