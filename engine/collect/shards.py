"""Shards: fixed slices of the task set, a per-shard journal of finished work, and sealing.

Layout (DIR is --out):

    DIR/shards/shard-00007.jsonl           training records of shard 7, in task order
    DIR/shards/shard-00007.results.jsonl   one result line per task of shard 7, in task order
    DIR/shards/shard-00007.seal.json       size and sha256 of the two files above: what proves them whole
    DIR/work/shard-00007.journal.jsonl     work in progress: the student's attempts and finished tasks
    DIR/work/sealed/shard-00007.journal.jsonl   the journal of a sealed shard, kept to rebuild a damaged one

A shard's files appear by atomic rename only once all its tasks are done (seal, results, then
records: the records file's presence marks the shard sealed). A rerun checks each sealed shard
against its seal and rebuilds a damaged one from its kept journal (nothing is paid twice).

The journal is an append-only orjson-lines file; every line is handed to the kernel with one
write(2) before anything depends on it, so it survives kill -9; a torn or unreadable line (a crash
mid-write, a full disk) is skipped on load.
"""
from __future__ import annotations

import errno
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from persd.engine.collect.layout import CollectLayout, file_digest, iter_lines, shard_name  # noqa: F401 (re-exported)
from persd.engine.rundirs.files import fsync_dir
from persd.runtime.errors import PersdError


class DiskError(PersdError):
    """Writing the output failed (a full disk, a read-only file system): stop, keep what is sealed."""


def disk_error(exc: OSError, what: str) -> DiskError:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
    elif exc.errno == errno.EDQUOT:
        why = "the disk quota is exhausted"
    elif exc.errno == errno.EROFS:
        why = "the file system is read-only"
    else:
        why = exc.strerror or str(exc)
    return DiskError(f"cannot write {what}: {why}. Sealed shards and the journal are intact; "
                     "free space and rerun the same command to resume")


@dataclass(frozen=True)
class ShardPlan:
    """Which task index lives in which shard, and which shards belong to this partition."""

    total: int
    shard_size: int
    num_parts: int = 1
    part_index: int = 0

    @property
    def n_shards(self) -> int:
        return (self.total + self.shard_size - 1) // self.shard_size

    def shard_of(self, index: int) -> int:
        return index // self.shard_size

    def owns(self, shard: int) -> bool:
        return shard % self.num_parts == self.part_index

    def owned(self) -> list[int]:
        return [k for k in range(self.n_shards) if self.owns(k)]

    def span(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(self.total, start + self.shard_size)

    def size(self, shard: int) -> int:
        a, b = self.span(shard)
        return b - a

    def owned_tasks(self) -> int:
        return sum(self.size(k) for k in self.owned())



@dataclass
class ShardState:
    """Work known for one unsealed shard: finished task indices and journaled attempts of the rest."""

    index: int
    expected: int
    done: set[int] = field(default_factory=set)
    attempts: dict[int, dict] = field(default_factory=dict)
    outcomes: Counter = field(default_factory=Counter)  # of the finished tasks
    failures: Counter = field(default_factory=Counter)  # of the finished tasks, by failure cause
    records: Counter = field(default_factory=Counter)  # per format, of the finished tasks
    skipped_lines: int = 0

    @property
    def complete(self) -> bool:
        return len(self.done) >= self.expected




class ShardStore:
    def __init__(self, out_dir: Path, plan: ShardPlan):
        self.out = Path(out_dir)
        self.plan = plan
        self.layout = CollectLayout(self.out)
        self.shards_dir = self.layout.shards_dir
        self.work_dir = self.layout.work_dir
        self._fds: dict[int, int] = {}
        self.bytes_journaled = 0

    # ---------------------------------------------------------------- paths

    def records_path(self, k: int) -> Path:
        return self.layout.records_path(k)

    def results_path(self, k: int) -> Path:
        return self.layout.results_path(k)

    def journal_path(self, k: int) -> Path:
        return self.layout.journal_path(k)

    def seal_path(self, k: int) -> Path:
        return self.layout.seal_path(k)

    def sealed_journal_path(self, k: int) -> Path:
        return self.layout.sealed_journal_path(k)

    def is_sealed(self, k: int) -> bool:
        return self.layout.is_sealed(k)

    def check_seal(self, k: int) -> str | None:
        """None when shard k's files match its seal; else what is wrong, naming the file."""
        return self.layout.seal_problem(k)

    def unseal_for_rebuild(self, k: int) -> bool:
        """Put a damaged shard's kept journal back in work/ (so it is sealed again); False if none was kept."""
        kept = self.sealed_journal_path(k)
        if not kept.exists():
            return False
        for path in (self.records_path(k), self.results_path(k), self.seal_path(k)):
            path.unlink(missing_ok=True)
        os.replace(kept, self.journal_path(k))
        return True

    # ---------------------------------------------------------------- recovery

    def prepare(self) -> None:
        try:
            self.shards_dir.mkdir(parents=True, exist_ok=True)
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, str(self.out)) from None

    def load(self, k: int) -> ShardState:
        """What the journal of shard k says (an empty state where there is none)."""
        state = ShardState(k, self.plan.size(k))
        path = self.journal_path(k)
        if not path.exists():
            return state
        lo, hi = self.plan.span(k)
        with open(path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    state.skipped_lines += 1  # torn tail: the write never completed
                    continue
                try:
                    ev = orjson.loads(raw)
                    i = int(ev["i"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    state.skipped_lines += 1
                    continue
                if not lo <= i < hi:
                    continue
                if ev.get("e") == "d":
                    if i in state.done:
                        continue
                    state.done.add(i)
                    state.attempts.pop(i, None)
                    state.outcomes[ev["r"].get("outcome", "?")] += 1
                    if isinstance(ev["r"].get("failure"), dict):
                        state.failures[str(ev["r"]["failure"].get("cause") or "unknown")] += 1
                    for r in ev.get("R", ()):
                        state.records[r.get("format", "?")] += 1
                elif ev.get("e") == "a" and i not in state.done:
                    state.attempts[i] = ev["a"]
        return state

    # ---------------------------------------------------------------- journaling

    def _fd(self, k: int) -> int:
        fd = self._fds.get(k)
        if fd is None:
            path = self.journal_path(k)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                # a torn tail from a crash: start our lines on a fresh line
                size = os.fstat(fd).st_size
                if size:
                    with open(path, "rb") as fh:
                        fh.seek(size - 1)
                        if fh.read(1) != b"\n":
                            os.write(fd, b"\n")
            except OSError as exc:
                raise disk_error(exc, str(path)) from None
            self._fds[k] = fd
        return fd

    def _append(self, k: int, event: dict) -> None:
        line = orjson.dumps(event) + b"\n"
        fd = self._fd(k)
        try:
            n = os.write(fd, line)
            if n != len(line):  # a short write: the file system is out of room
                os.write(fd, b"\n")
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            raise disk_error(exc, str(self.journal_path(k))) from None
        self.bytes_journaled += n

    def journal_attempt(self, k: int, index: int, task_id: str, attempt: dict) -> None:
        self._append(k, {"e": "a", "i": index, "t": task_id, "a": attempt})

    def journal_done(self, k: int, index: int, result: dict, records: list[dict]) -> None:
        self._append(k, {"e": "d", "i": index, "r": result, "R": records})

    # ---------------------------------------------------------------- sealing

    def seal(self, k: int) -> dict:
        """Write shard k's files from its journal (task order), atomically; returns the shard's stats."""
        lo, hi = self.plan.span(k)
        done: dict[int, dict] = {}
        for ev in iter_lines(self.journal_path(k)):
            if ev.get("e") == "d" and lo <= int(ev.get("i", -1)) < hi:
                done[int(ev["i"])] = ev
        missing = [i for i in range(lo, hi) if i not in done]
        if missing:
            raise PersdError(f"internal: shard {k} sealed with {len(missing)} task(s) unfinished")
        rec_tmp = self.shards_dir / f".{shard_name(k)}.jsonl.tmp"
        res_tmp = self.shards_dir / f".{shard_name(k)}.results.jsonl.tmp"
        seal_tmp = self.shards_dir / f".{shard_name(k)}.seal.json.tmp"
        try:
            rec_sum, res_sum = _Summer(), _Summer()
            with open(rec_tmp, "wb") as rec, open(res_tmp, "wb") as res:
                for i in range(lo, hi):
                    ev = done[i]
                    res_sum.write(res, orjson.dumps(ev["r"]) + b"\n")
                    for r in ev["R"]:
                        rec_sum.write(rec, orjson.dumps(r) + b"\n")
                rec.flush()
                res.flush()
                os.fsync(rec.fileno())
                os.fsync(res.fileno())
            seal = {"shard": k, "tasks": hi - lo, "records": rec_sum.entry(self.records_path(k).name),
                    "results": res_sum.entry(self.results_path(k).name)}
            with open(seal_tmp, "wb") as fh:
                fh.write(orjson.dumps(seal, option=orjson.OPT_INDENT_2) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(seal_tmp, self.seal_path(k))
            os.replace(res_tmp, self.results_path(k))
            os.replace(rec_tmp, self.records_path(k))
            fsync_dir(self.shards_dir)
        except OSError as exc:
            for tmp in (rec_tmp, res_tmp, seal_tmp):
                try:
                    tmp.unlink()
                except OSError:
                    pass
            # a half-sealed shard (results renamed, records not) is re-sealed from the journal on rerun
            raise disk_error(exc, f"shard {k}") from None
        self.close(k)
        try:  # kept (not deleted) so that a shard damaged later can be rebuilt without redoing work
            self.sealed_journal_path(k).parent.mkdir(exist_ok=True)
            os.replace(self.journal_path(k), self.sealed_journal_path(k))
        except OSError:
            pass
        return shard_stats(done[i]["r"] for i in range(lo, hi)) | {
            "records": sum(len(done[i]["R"]) for i in range(lo, hi)), "seal": seal,
        }

    def sealed_stats(self, k: int) -> dict:
        stats = shard_stats(iter_lines(self.results_path(k)))
        try:
            stats["seal"] = orjson.loads(self.seal_path(k).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            pass
        formats: Counter = Counter(r.get("format", "?") for r in iter_lines(self.records_path(k)))
        stats["records"] = sum(formats.values())
        stats["formats"] = dict(sorted(formats.items()))
        return stats

    def close(self, k: int | None = None) -> None:
        keys = list(self._fds) if k is None else [k]
        for key in keys:
            fd = self._fds.pop(key, None)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def shard_stats(results) -> dict:
    outcomes: Counter = Counter()
    failures: Counter = Counter()
    calls = tokens = 0
    for r in results:
        outcomes[r.get("outcome", "?")] += 1
        if isinstance(r.get("failure"), dict):
            failures[str(r["failure"].get("cause") or "unknown")] += 1
        calls += int(r.get("teacher_calls", 0))
        tokens += int(r.get("teacher_tokens", 0))
    return {"tasks": sum(outcomes.values()), "outcomes": dict(sorted(outcomes.items())),
            "failures": dict(sorted(failures.items())),
            "teacher_calls": calls, "teacher_tokens": tokens}


class _Summer:
    """Size and sha256 of what is written through it."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, fh, data: bytes) -> None:
        fh.write(data)
        self.h.update(data)
        self.n += len(data)

    def entry(self, name: str) -> dict:
        return {"file": name, "bytes": self.n, "sha256": self.h.hexdigest()}
