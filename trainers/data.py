"""Training records: read collect directories (sealed shards only) and record files, select, split.

A collect directory is DIR/manifest.json + DIR/shards/shard-NNNNN.jsonl; a shard's file
exists only once it is sealed, and DIR/shards/*.results.jsonl are outcomes, not records.
Anything else given to --data must be a JSONL file of records.
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import orjson
from persd.engine.collect.layout import FORMAT_ALIASES, CollectLayout, ManifestError, Record, shard_index
from persd.runtime.errors import InputError, UsageError


@dataclass
class DataStats:
    files: int = 0
    read: int = 0
    duplicates: int = 0
    by_format: Counter = field(default_factory=Counter)  # selected records per format
    present: Counter = field(default_factory=Counter)  # all records per format

    def summary(self) -> str:
        fmt = ", ".join(f"{k} {v}" for k, v in sorted(self.by_format.items()))
        return (f"{sum(self.by_format.values())} records ({fmt}) from {self.files} file(s); "
                f"{self.duplicates} duplicate id(s) dropped")


def record_files(source: str | Path) -> list[Path]:
    """The record files one --data argument stands for."""
    path = Path(source)
    if path.is_dir():
        layout = CollectLayout(path)
        if not layout.shards_dir.is_dir():
            raise UsageError(f"--data {source}: a directory must be a collect output (DIR/shards/ not found)")
        files = layout.sealed_record_files()
        for f in files:
            problem = layout.seal_problem(shard_index(f))
            if problem:
                raise UsageError(f"--data {source}: {problem}: the shard is damaged; rerun the same `persd collect` "
                                 f"command (same --out) to rebuild it from its journal, then train again")
        _warn_unfinished(path, len(files))
        return files  # may be empty: no shard sealed yet
    if path.is_file():
        return [path]
    raise UsageError(f"--data {source}: no such file or directory")


def _warn_unfinished(out: Path, sealed: int) -> None:
    """Training on a collect directory whose manifests list more shards than are sealed uses part of
    the data: say so (once, on the first rank) rather than train on it silently."""
    planned = 0
    lay = CollectLayout(out)
    for manifest in lay.manifests():
        try:
            planned += len(lay.read_manifest(manifest).shards)
        except ManifestError:
            return
    if planned > sealed and os.environ.get("RANK", "0") == "0":
        print(f"persd train: warning: --data {out}: {sealed} of {planned} shards are sealed (the collection is not "
              f"finished); training on the sealed ones only", file=sys.stderr)


def _parse(path: Path) -> Iterator[Record]:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InputError(str(path), lineno, f"not valid JSON: {exc.msg} at column {exc.colno}") from None
            problem = Record.problem(obj)
            if problem is not None:
                key, why = problem
                raise InputError(str(path), lineno, why, field=key)
            yield Record(obj["id"], obj["task_id"], obj["format"], obj["prompt"], obj["completion"])  # no meta: memory


def expand_formats(formats: Iterable[str] | None) -> set[str] | None:
    if formats is None:
        return None
    out: set[str] = set()
    for f in formats:
        out.update(FORMAT_ALIASES.get(f, (f,)))
    return out


def load_records(sources: list[str], formats: Iterable[str] | None = None) -> tuple[list[Record], DataStats]:
    """Records of the selected formats from every source, first occurrence of an id kept."""
    if not sources:
        raise UsageError("--data: give at least one collect directory or record file")
    wanted = expand_formats(formats)
    stats = DataStats()
    seen: set[str] = set()
    records: list[Record] = []
    for source in sources:
        for path in record_files(source):
            stats.files += 1
            for rec in _parse(path):
                stats.read += 1
                stats.present[rec.format] += 1
                if wanted is not None and rec.format not in wanted:
                    continue
                if rec.id in seen:
                    stats.duplicates += 1
                    continue
                seen.add(rec.id)
                records.append(rec)
                stats.by_format[rec.format] += 1
    if wanted is not None:
        missing = sorted(wanted - set(stats.present))
        if missing and stats.read:
            present = ", ".join(sorted(stats.present)) or "none"
            raise UsageError(f"--formats: no record of format {', '.join(missing)} in the data (present: {present})")
    if not records:
        raise UsageError(f"--data: no training records found in {', '.join(sources)}"
                         + (" (no sealed shard yet?)" if stats.files == 0 else ""))
    return records, stats


def held_out(task_id: str, fraction: float, seed: int) -> bool:
    """Deterministic membership of a task in the held-out split (every record of a task goes together)."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_by_task(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    train: list[Record] = []
    held: list[Record] = []
    for rec in records:
        (held if held_out(rec.task_id, fraction, seed) else train).append(rec)
    if fraction > 0 and not train:
        raise UsageError("--eval-fraction: every task fell in the held-out split; lower it")
    return train, held
