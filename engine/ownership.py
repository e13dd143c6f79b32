"""Which command an output directory belongs to, so that one command never writes into (or, with
--force, deletes from) a directory another command made.

    refuse_foreign(out, "eval")   # UsageError (exit 2) when DIR holds a collect, train or loop run
"""
from __future__ import annotations

from pathlib import Path

from persd.runtime.errors import UsageError

# a command's output directory is recognised by files only that command writes
MARKERS: dict[str, tuple[str, ...]] = {
    "collect": ("manifest.json", "manifest.part-*.json", "shards"),
    "eval": ("work/eval.json", "summary.json"),
    "train": ("train.json", "checkpoints", "metrics.jsonl", "final"),
    "loop": ("loop.json",),
}
# files two commands both write: summary.json (eval and loop)
_NOT_ALONE = {"eval": ("loop.json",)}


def owner(out: Path | str) -> str | None:
    """The command whose output DIR is, or None (empty, new, or not persd's)."""
    out = Path(out)
    if not out.is_dir():
        return None
    for command in ("loop", "collect", "train", "eval"):
        for pattern in MARKERS[command]:
            if any(out.glob(pattern)):
                if any(any(out.glob(p)) for p in _NOT_ALONE.get(command, ())):
                    continue
                return command
    return None


def refuse_foreign(out: Path | str, command: str) -> None:
    other = owner(out)
    if other is not None and other != command:
        raise UsageError(f"--out {out} holds the output of `persd {other}`, not of `persd {command}`: "
                         f"use another --out (nothing was changed there)")


__all__ = ["owner", "refuse_foreign"]
