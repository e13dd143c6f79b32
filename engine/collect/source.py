"""The task source, checked whole before any work starts (a bad line stops the run before any
teacher call), in one streaming pass of constant memory apart from an 8-byte digest per task id."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from persd.engine.tasks import BUILTIN_SETS, resolve_source
from persd.runtime.errors import InputError


@dataclass(frozen=True)
class SourceInfo:
    name: str  # as given to --tasks
    path: Path
    count: int  # tasks in scope (after --limit)
    sha256: str  # of the lines in scope: a rerun on a changed file is refused


def scan_source(src: str, limit: int | None = None, fields: str | dict[str, str] | None = None) -> SourceInfo:
    """Parse every row in scope once (a bad row stops the run here), count them and digest them.
    `fields`: --task-fields."""
    from persd.engine.tasks import _fields, iter_rows, task_of

    mapping = _fields(fields)
    path = resolve_source(src)
    display = src
    digest = hashlib.sha256()
    seen: dict[bytes, int] = {}
    count = 0
    for row in iter_rows(src):
        if limit is not None and count >= limit:
            break
        display = row.where
        task = task_of(row, mapping)
        key = hashlib.blake2b(task.task_id.encode(), digest_size=8).digest()
        first = seen.get(key)
        if first is not None:
            what = "line" if row.obj is None else "row"
            raise InputError(row.where, row.index, f"duplicate task_id {task.task_id!r} (first on {what} {first})",
                             field="task_id")
        seen[key] = row.index
        digest.update(row.raw)
        digest.update(b"\n")
        count += 1
    if count == 0:
        raise InputError(display if display in BUILTIN_SETS else str(display), 0, "no tasks in the source")
    return SourceInfo(name=src, path=path, count=count, sha256=digest.hexdigest())
