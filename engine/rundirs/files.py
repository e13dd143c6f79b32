"""Whole-file writes that a kill never leaves half done: write a temporary file beside the target,
fsync it, rename it over the target (atomic on POSIX), fsync the directory.

    atomic_write(path, data)            # bytes
    atomic_write_json(path, obj)        # orjson, indented, keys sorted
The temporary file is `.NAME.PID.tmp` in the target's directory: nothing is left outside it, and two
processes writing one target never share a temporary file (the last rename wins whole).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: some file systems refuse a directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes | str, *, mkdir: bool = True) -> None:
    """Replace `path` with `data` whole; raises OSError (the temporary file is removed)."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path | str, obj: Any, *, indent: bool = True, sort_keys: bool = True,
                      mkdir: bool = True) -> None:
    option = (orjson.OPT_INDENT_2 if indent else 0) | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    atomic_write(path, orjson.dumps(obj, option=option) + b"\n", mkdir=mkdir)


__all__ = ["atomic_write", "atomic_write_json", "fsync_dir"]
