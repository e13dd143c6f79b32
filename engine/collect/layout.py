"""The one owner of a collect directory's layout and of the training record's schema.

Everything that reads or writes a `persd collect --out DIR` goes through this module: the pipeline
(shards, manifest), `persd status`, `persd loop`, and the trainers (which import this module alone,
never the pipeline: it depends on nothing but the standard library and orjson).

    DIR/manifest.json                       one partition (or DIR/manifest.part-000I-of-000N.json each)
    DIR/shards/shard-00007.jsonl            training records of sealed shard 7 (the seal: it appears last)
    DIR/shards/shard-00007.results.jsonl    one result line per task of shard 7
    DIR/shards/shard-00007.seal.json        size and sha256 of the two files above: what proves them whole
    DIR/work/shard-00007.journal.jsonl      work in progress of shard 7 (attempts, finished tasks)
    DIR/work/sealed/shard-00007.journal.jsonl   the journal of a sealed shard, kept to rebuild a damaged one
    DIR/.lock (.lock.part-000I-of-000N)     held by the run writing here (flock: freed when it dies)
    DIR/work/teacher.journal.jsonl          every teacher answer (teacher.part-....journal.jsonl per partition)
    DIR/work/teacher.journal.batches.jsonl  --teacher.mode batch: files uploaded, batches created, their status
    DIR/work/tiny-student/                  the offline demo's student, when no --student-model is given
    DIR/work/time-limits.jsonl              the measured per-task time limits (reused on a rerun)
    DIR/work/vllm.log                       vLLM's own output, when the student is vllm
    DIR/timeline.jsonl                      counters every few seconds (timeline.part-....jsonl per partition)
    DIR/metrics.json                        the run's final counters (metrics.part-....json per partition)

The manifest (`CollectManifest`) is versioned; a manifest of any earlier version is still read.

A training record is one JSON object a line (`Record`): id, task_id, format, prompt, completion, meta.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import orjson

# files only `persd collect` writes: a directory holding one of them was made by collect
MARKERS = ("manifest*.json", "shards", "work/shard-*.journal.jsonl")
MANIFEST_VERSION = 1
RECORD_FIELDS = ("id", "task_id", "format", "prompt", "completion")  # required, all strings; `meta` optional
FORMAT_ALIASES = {"persd-combined": ("persd", "persd-refine"),
                  # the reference's PersD-combined file (finetuning_data_chatgpt_only.jsonl): refine + gold
                  "paper-combined": ("persd-refine", "inpd")}


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def partition_name(num_shards: int, shard_index: int) -> str:
    """'' for a single machine, else `part-000I-of-000N` (the suffix of that partition's manifest)."""
    return "" if num_shards == 1 else f"part-{shard_index:04d}-of-{num_shards:04d}"


@dataclass(frozen=True)
class CollectLayout:
    """Paths inside one collect directory."""

    out: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))

    @property
    def shards_dir(self) -> Path:
        return self.out / "shards"

    @property
    def work_dir(self) -> Path:
        return self.out / "work"

    def records_path(self, k: int) -> Path:
        return self.shards_dir / f"{shard_name(k)}.jsonl"

    def results_path(self, k: int) -> Path:
        return self.shards_dir / f"{shard_name(k)}.results.jsonl"

    def journal_path(self, k: int) -> Path:
        return self.work_dir / f"{shard_name(k)}.journal.jsonl"

    def seal_path(self, k: int) -> Path:
        """Size and sha256 of shard k's two files: what proves them whole."""
        return self.shards_dir / f"{shard_name(k)}.seal.json"

    def sealed_journal_path(self, k: int) -> Path:
        """The journal of a sealed shard, kept to rebuild the shard if it is damaged."""
        return self.work_dir / "sealed" / f"{shard_name(k)}.journal.jsonl"

    def lock_name(self, partition: str = "") -> str:
        """The lock file one run holds while it writes here (one per partition)."""
        return f".lock.{partition}" if partition else ".lock"

    def seal_problem(self, k: int) -> str | None:
        """None when shard k's records and results files match its seal file (or it has none: sealed
        by a persd that wrote no seal); else one line naming the damaged file."""
        seal_path = self.seal_path(k)
        if not seal_path.exists():
            return None
        try:
            seal = orjson.loads(seal_path.read_bytes())
            entries = [seal["records"], seal["results"]]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return f"{seal_path}: unreadable seal ({exc})"
        for entry in entries:
            path = self.shards_dir / entry["file"]
            try:
                n, digest = file_digest(path)
            except OSError as exc:
                return f"{path}: unreadable ({exc.strerror or exc})"
            if n != entry["bytes"]:
                return f"{path}: {n} bytes where its seal says {entry['bytes']}"
            if digest != entry["sha256"]:
                return f"{path}: its content differs from its seal (sha256)"
        return None

    def teacher_journal_path(self, partition: str = "") -> Path:
        """Every teacher answer, durable before anything depends on it (one per partition)."""
        return self.work_dir / (f"teacher.{partition}.journal.jsonl" if partition else "teacher.journal.jsonl")

    def teacher_batches_path(self, partition: str = "") -> Path:
        """--teacher.mode batch: files uploaded, batches created, their last status (runtime/teacher/batch.py)."""
        return self.teacher_journal_path(partition).with_suffix(".batches.jsonl")

    @property
    def tiny_student_dir(self) -> Path:
        """The offline demo's tiny random-weight student, written once."""
        return self.work_dir / "tiny-student"

    def manifest_path(self, partition: str = "") -> Path:
        return self.out / (f"manifest.{partition}.json" if partition else "manifest.json")

    def timeline_path(self, partition: str = "") -> Path:
        """One line of counters every few seconds, appended across resumed runs (what `persd report` plots)."""
        return self.out / (f"timeline.{partition}.jsonl" if partition else "timeline.jsonl")

    def timelines(self) -> list[Path]:
        return sorted(self.out.glob("timeline*.jsonl"))

    def metrics_path(self, partition: str = "") -> Path:
        """The run's final counters (teacher cost, tokens, 429s, wall time)."""
        return self.out / (f"metrics.{partition}.json" if partition else "metrics.json")

    def metrics_files(self) -> list[Path]:
        return sorted(self.out.glob("metrics*.json"))

    @property
    def time_limits_path(self) -> Path:
        """The measured per-task time limits, reused by a rerun."""
        return self.work_dir / "time-limits.jsonl"

    @property
    def vllm_log_path(self) -> Path:
        """vLLM's own output (its engine and worker processes), kept off the terminal."""
        return self.work_dir / "vllm.log"

    def read_manifest(self, path: Path) -> "CollectManifest":
        """One partition's manifest; ManifestError (saying why) when it cannot be read."""
        return CollectManifest.read(path)

    def manifests(self) -> list[Path]:
        """Every partition's manifest in the directory (sorted)."""
        return sorted(p for p in self.out.glob("manifest*.json") if p.is_file())

    def is_collect_dir(self) -> bool:
        return self.shards_dir.is_dir() or bool(self.manifests())

    def is_sealed(self, k: int) -> bool:
        return self.records_path(k).exists() and self.results_path(k).exists()

    def sealed_record_files(self) -> list[Path]:
        """The records files of every sealed shard, in shard order (none until a shard is sealed)."""
        return sorted(p for p in self.shards_dir.glob("shard-*.jsonl") if not p.name.endswith(".results.jsonl"))

    def results_files(self) -> list[Path]:
        return sorted(self.shards_dir.glob("shard-*.results.jsonl"))

    def is_done(self) -> bool:
        """True when every partition's manifest says the run finished."""
        files = self.manifests()
        if not files:
            return False
        for f in files:
            try:
                if CollectManifest.read(f).state != "done":
                    return False
            except ManifestError:
                return False
        return True

    def records(self) -> Iterator[dict]:
        for f in self.sealed_record_files():
            yield from iter_lines(f)

    def results(self) -> Iterator[dict]:
        for f in self.results_files():
            yield from iter_lines(f)


class ManifestError(ValueError):
    """A manifest that cannot be read (its message names the file)."""


@dataclass
class CollectManifest:
    """DIR/manifest.json (one partition's): the configuration (no secrets), the shards and their state, totals.

    Version 1 is the first versioned one; a manifest without `version` reads as version 0 (the same keys).
    Keys this persd does not know are kept in `extra` and written back."""

    fingerprint: dict[str, Any]
    state: str = "starting"
    command: str = "persd collect"
    config: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, Any] = field(default_factory=dict)  # source, path, count, sha256
    partition: dict[str, int] = field(default_factory=lambda: {"index": 0, "count": 1})
    shard_size: int = 0
    student: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)  # index, span, tasks, state, done, ...
    totals: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failure_breaker: dict[str, Any] = field(default_factory=dict)  # threshold, streaks, failed requests by cause
    cluster: dict[str, Any] | None = None  # --ray: the address, each replica's figures, utilisation per pool
    error: str | None = None
    updated_at: str | None = None
    version: int = MANIFEST_VERSION  # as read
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["version"] = MANIFEST_VERSION  # written as the current version, whatever it was read as
        for key in ("cluster", "error", "updated_at"):
            if data[key] is None:
                del data[key]
        return {**self.extra, **data}

    @classmethod
    def from_json(cls, data: Any) -> "CollectManifest":
        if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), dict):
            raise ValueError("not a persd collect manifest")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values.setdefault("version", 0)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, path: Path) -> "CollectManifest":
        try:
            data = orjson.loads(Path(path).read_bytes())
        except FileNotFoundError:
            raise ManifestError(f"no manifest at {path}") from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
        try:
            return cls.from_json(data)
        except (ValueError, TypeError):
            raise ManifestError(f"{path}: not a persd collect manifest") from None

    @property
    def partition_suffix(self) -> str:
        return partition_name(int(self.partition.get("count", 1)), int(self.partition.get("index", 0)))


def shard_index(path: Path) -> int:
    """k of a shard file (shard-0000k.jsonl, .results.jsonl, .seal.json, .journal.jsonl)."""
    return int(Path(path).name.split(".")[0].split("-")[1])


def file_digest(path: Path) -> tuple[int, str]:
    """(bytes, sha256 hex) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def iter_lines(path: Path) -> Iterator[dict]:
    """Parsed lines of an orjson-lines file; torn or unreadable lines are skipped (journals survive kill -9)."""
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n") or not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield obj


@dataclass(frozen=True)
class Record:
    """One training record, as collect writes it and the trainers read it."""

    id: str
    task_id: str
    format: str
    prompt: str
    completion: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "task_id": self.task_id, "format": self.format, "prompt": self.prompt,
                "completion": self.completion, "meta": self.meta}

    @classmethod
    def problem(cls, obj: Any) -> tuple[str | None, str] | None:
        """What makes `obj` not a record: (field or None, why); None when it is one."""
        if not isinstance(obj, dict):
            return None, "expected a JSON object (a training record)"
        for key in RECORD_FIELDS:
            if key not in obj:
                return key, "missing (is this a record file? results.jsonl and task files are not training data)"
            if not isinstance(obj[key], str):
                return key, f"expected a string, got {type(obj[key]).__name__}"
        if not obj["completion"].strip():
            return "completion", "empty completion"
        if not isinstance(obj.get("meta", {}), dict):
            return "meta", f"expected an object, got {type(obj['meta']).__name__}"
        return None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Record":
        return cls(obj["id"], obj["task_id"], obj["format"], obj["prompt"], obj["completion"], obj.get("meta") or {})
