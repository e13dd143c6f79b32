"""One run per output directory: an flock(2) on a lock file inside it, held for the whole run.

    with run_lock(out, "collect", name=".lock.part-0000-of-0004"):   # UsageError (exit 2) when held
        ...

The kernel drops the lock when its holder exits in any way (kill -9 included), so a crashed
run never leaves a stale lock behind; the file itself stays (it holds only the last holder's
pid and command, for the message a refused run prints). Partitions of one collect directory
(--num-shards) share DIR/.lock and take one lock each besides, so machines that share a directory keep
working together while a single-machine (or --ray) run of the same directory is refused, and the reverse.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from persd.runtime.errors import UsageError

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


@contextlib.contextmanager
def run_lock(out: Path | str, command: str, name: str = LOCK_NAME, shared: bool = False) -> Iterator[Path]:
    """Hold DIR/name for the duration; refuse at once (exit 2) when another run holds it. `shared`: runs
    that work side by side (the partitions of one collect directory) share it, and exclude a run that
    takes it alone (a single-machine or Ray run of the same directory)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot use it ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"{out} is in use by another run{_holder(path)}: wait for it to finish, or use "
                             f"another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: persd {command}".encode())
        yield path
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def is_locked(out: Path | str, name: str = LOCK_NAME) -> bool:
    """Whether a live run holds DIR/name now (used by status and by commands that would touch DIR)."""
    path = Path(out) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while any run holds it, shared or alone
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def main_rank() -> bool:
    """Only the first process of a multi-process launch takes the lock (the others share its run)."""
    return os.environ.get("RANK", "0") == "0"


__all__ = ["run_lock", "is_locked", "main_rank", "LOCK_NAME"]
