"""Which kind of persd directory a path is: collect, train, eval or loop (from the files each command writes)."""
from __future__ import annotations

from pathlib import Path

from persd.runtime.errors import UsageError

KINDS = ("loop", "collect", "eval", "train")


def detect(path: Path) -> str:
    """The kind of a directory; a collect or eval still being written is recognised by its work files."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such directory")
    if not p.is_dir():
        raise UsageError(f"{p}: not a directory (persd report takes collect, train, eval or loop directories)")
    if (p / "loop.json").is_file():
        return "loop"
    if (any(p.glob("manifest*.json")) or any(p.glob("shards/shard-*.jsonl"))
            or any(p.glob("work/shard-*.journal.jsonl"))):
        return "collect"
    if (p / "summary.json").is_file() or (p / "results.jsonl").is_file() or (p / "work" / "journal.jsonl").is_file():
        return "eval"
    if (p / "metrics.jsonl").is_file() or (p / "final").is_dir() or (p / "train.json").is_file():
        return "train"
    raise UsageError(f"{p}: not a persd collect, train, eval or loop directory "
                     "(none of manifest.json, shards/, metrics.jsonl, summary.json, results.jsonl, loop.json)")
