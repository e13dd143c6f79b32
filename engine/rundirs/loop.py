"""The one owner of a loop directory's layout (`persd loop --out DIR`).

    DIR/loop.json                    the manifest: settings, and what each round produced
    DIR/commands.log                 every command run, in order (to reproduce any stage by hand)
    DIR/summary.json                 the rounds' table, written at the end of each run
    DIR/base-model/                  the offline demo's starting student, when no --student-model is given
    DIR/round-0/eval/                the starting student, evaluated (with --eval-base)
    DIR/round-R/tasks.jsonl          R > 1: the tasks no earlier round's student solved
    DIR/round-R/NAME.toml            a stage's configuration: `persd NAME --config round-R/NAME.toml`
    DIR/round-R/collect/             persd collect output (persd.engine.collect.layout)
    DIR/round-R/train-data.jsonl     the records trained on (ids prefixed with their round)
    DIR/round-R/train/               persd train output; train/final/ is round R's checkpoint
    DIR/round-R/eval/                persd eval output
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

MARKERS = ("loop.json",)  # a directory holding it was made by loop (its round-R/ hold the stages' own)
MANIFEST_VERSION = 1


@dataclass
class LoopManifest:
    """loop.json. Version 0 (before versions) had the same keys without `version`, and is still read."""

    fingerprint: dict[str, Any] = field(default_factory=dict)
    rounds: dict[str, dict[str, Any]] = field(default_factory=dict)  # "R" -> what round R produced
    version: int = MANIFEST_VERSION  # as read; written as the current one

    def to_json(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "fingerprint": self.fingerprint, "rounds": self.rounds}

    @classmethod
    def from_json(cls, data: Any) -> "LoopManifest":
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        fp, rounds = data.get("fingerprint", {}), data.get("rounds", {})
        if not isinstance(fp, dict) or not isinstance(rounds, dict):
            raise ValueError("fingerprint and rounds must be objects")
        return cls(dict(fp), dict(rounds), int(data.get("version", 0)))


@dataclass(frozen=True)
class LoopLayout:
    out: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))

    @property
    def manifest(self) -> Path:
        return self.out / "loop.json"

    state = manifest  # its older name

    @property
    def commands(self) -> Path:
        return self.out / "commands.log"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    @property
    def base_model(self) -> Path:
        return self.out / "base-model"

    def round_dir(self, r: int) -> Path:
        return self.out / f"round-{r}"

    def stage_config(self, r: int, stage: str) -> Path:
        return self.round_dir(r) / f"{stage}.toml"

    def tasks(self, r: int) -> Path:
        return self.round_dir(r) / "tasks.jsonl"

    def collect(self, r: int) -> Path:
        return self.round_dir(r) / "collect"

    def train_data(self, r: int) -> Path:
        return self.round_dir(r) / "train-data.jsonl"

    def train(self, r: int) -> Path:
        return self.round_dir(r) / "train"

    def checkpoint(self, r: int) -> Path:
        return self.train(r) / "final"

    def eval(self, r: int) -> Path:
        return self.round_dir(r) / "eval"

    def read_manifest(self) -> LoopManifest | None:
        """None when there is none; ValueError (saying why) when it cannot be read."""
        if not self.manifest.exists():
            return None
        try:
            return LoopManifest.from_json(orjson.loads(self.manifest.read_bytes()))
        except (OSError, orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"{self.manifest}: unreadable ({exc})") from None

    def is_done(self, rounds: int) -> bool:
        """Every round up to `rounds` recorded in loop.json, and the summary written."""
        try:
            m = self.read_manifest()
        except ValueError:
            return False
        return m is not None and self.summary.is_file() and all(str(r) in m.rounds for r in range(1, rounds + 1))


__all__ = ["LoopLayout", "LoopManifest", "MARKERS"]
