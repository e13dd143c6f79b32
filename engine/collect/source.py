"""The task source, checked whole before any work starts (a bad line stops the run before any
teacher call), in one streaming pass of constant memory apart from an 8-byte digest per task id."""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from persd.engine.tasks import BUILTIN_SETS, parse_task_line, resolve_source
from persd.runtime.errors import InputError


@dataclass(frozen=True)
class SourceInfo:
    name: str  # as given to --tasks
    path: Path
    count: int  # tasks in scope (after --limit)
    sha256: str  # of the lines in scope: a rerun on a changed file is refused


def scan_source(src: str, limit: int | None = None) -> SourceInfo:
    path = resolve_source(src)
    display = src if src in BUILTIN_SETS else str(path)
    opener = gzip.open if path.suffix == ".gz" else open
    digest = hashlib.sha256()
    seen: dict[bytes, int] = {}
    count = 0
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if limit is not None and count >= limit:
                break
            task = parse_task_line(raw, display, lineno)
            key = hashlib.blake2b(task.task_id.encode(), digest_size=8).digest()
            first = seen.get(key)
            if first is not None:
                raise InputError(display, lineno, f"duplicate task_id {task.task_id!r} (first on line {first})",
                                 field="task_id")
            seen[key] = lineno
            digest.update(raw.rstrip(b"\r\n"))
            digest.update(b"\n")
            count += 1
    if count == 0:
        raise InputError(display, 0, "no tasks in the file")
    return SourceInfo(name=src, path=path, count=count, sha256=digest.hexdigest())
