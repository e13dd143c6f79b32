"""The one owner of an eval directory's layout (`persd eval --out DIR`).

    DIR/work/eval.json           the manifest: the settings that alter results (a rerun keeps them, or --force)
    DIR/work/journal.jsonl       generations and scored steps as they happen (a rerun continues from it)
    DIR/work/time-limits.jsonl   the measured per-task time limits (reused on a rerun)
    DIR/work/vllm.log            vLLM's own output, when the student is vllm
    DIR/results.jsonl            one line per sample and step, written whole at the end
    DIR/summary.json             pass@k and the protocol: its presence means the evaluation is done
    DIR/.lock                    held by the run writing here
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# files only `persd eval` writes: a directory holding one of them was made by eval
MARKERS = ("work/eval.json", "summary.json", "results.jsonl", "work/journal.jsonl")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class EvalManifest:
    """work/eval.json. Version 0 (before versions) was the fingerprint itself, and is still read."""

    fingerprint: dict[str, Any]
    version: int = MANIFEST_VERSION  # as read; written as the current one

    def to_json(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "fingerprint": self.fingerprint}

    @classmethod
    def from_json(cls, data: Any) -> "EvalManifest":
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if "version" not in data:  # version 0: the fingerprint alone
            return cls(dict(data), version=0)
        if not isinstance(data.get("fingerprint"), dict):
            raise ValueError("no fingerprint")
        return cls(dict(data["fingerprint"]), version=int(data["version"]))


@dataclass(frozen=True)
class EvalLayout:
    out: Path
    work: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "work", self.out / "work")

    @property
    def manifest(self) -> Path:
        return self.work / "eval.json"

    @property
    def journal(self) -> Path:
        return self.work / "journal.jsonl"

    @property
    def time_limits(self) -> Path:
        return self.work / "time-limits.jsonl"

    @property
    def vllm_log(self) -> Path:
        return self.work / "vllm.log"

    @property
    def results(self) -> Path:
        return self.out / "results.jsonl"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    def read_manifest(self) -> EvalManifest | None:
        """None when there is none; ValueError (saying why) when it cannot be read."""
        if not self.manifest.exists():
            return None
        try:
            return EvalManifest.from_json(orjson.loads(self.manifest.read_bytes()))
        except (OSError, orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"{self.manifest}: unreadable ({exc})") from None

    def is_done(self) -> bool:
        return self.summary.is_file()


__all__ = ["EvalLayout", "EvalManifest", "MARKERS"]
