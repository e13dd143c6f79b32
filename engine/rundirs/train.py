"""The one owner of a train directory's layout (`persd train --out DIR`).

    DIR/checkpoints/step-NNNNNNNN/   DeepSpeed checkpoints (DIR/checkpoints/latest names the newest)
    DIR/metrics.jsonl                one line per logged step
    DIR/tensorboard/                 event files, with --tensorboard
    DIR/plan.json                    the memory plan, with --plan
    DIR/final/                       the consolidated Hugging Face model
    DIR/train.json                   the manifest, written last: settings, result, export check
    DIR/.lock                        held by the run writing here
A run is done when final/config.json and train.json are both there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# files only `persd train` writes: a directory holding one of them was made by train
MARKERS = ("train.json", "checkpoints", "metrics.jsonl", "final")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TrainManifest:
    """train.json: the run's result (steps, losses, tokens ...), its config and the export check.
    Version 0 (before versions) had the same keys without `version`, and is still read."""

    config: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)  # TrainResult.to_json() and final_loss
    export: dict[str, Any] = field(default_factory=dict)
    version: int = MANIFEST_VERSION  # as read; written as the current one

    def to_json(self) -> dict[str, Any]:
        return {**self.result, "config": self.config, "export": self.export, "version": MANIFEST_VERSION}

    @classmethod
    def from_json(cls, data: Any) -> "TrainManifest":
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        rest = {k: v for k, v in data.items() if k not in ("config", "export", "version")}
        return cls(dict(data.get("config") or {}), rest, dict(data.get("export") or {}),
                   int(data.get("version", 0)))


@dataclass(frozen=True)
class TrainLayout:
    out: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.out / "tensorboard"

    @property
    def plan(self) -> Path:
        return self.out / "plan.json"

    @property
    def final(self) -> Path:
        return self.out / "final"

    @property
    def manifest(self) -> Path:
        return self.out / "train.json"

    def earlier_run(self) -> list[Path]:
        """What an earlier run left here (what --force deletes to start over)."""
        return [p for p in (self.checkpoints, self.final, self.tensorboard, self.metrics, self.manifest, self.plan)
                if p.exists()]

    def read_manifest(self) -> TrainManifest | None:
        if not self.manifest.is_file():
            return None
        try:
            return TrainManifest.from_json(orjson.loads(self.manifest.read_bytes()))
        except (OSError, orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"{self.manifest}: unreadable ({exc})") from None

    def is_done(self) -> bool:
        return (self.final / "config.json").is_file() and self.manifest.is_file()


__all__ = ["TrainLayout", "TrainManifest", "MARKERS"]
