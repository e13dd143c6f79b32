"""A train directory, read into a `TrainSummary`: the per-step rows of metrics.jsonl (loss, lr, tokens/s,
padding), the held-out losses, and the run's settings from train.json (absent while it runs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persd.engine.collect.layout import iter_lines
from persd.engine.rundirs.train import TrainLayout


@dataclass
class TrainSummary:
    path: Path
    steps: list[dict] = field(default_factory=list)  # rows with a loss
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)  # train.json without its config
    finished: bool = False
    notes: list[str] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.steps if isinstance(r.get(key), (int, float))]
        return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


def read_train(path: Path) -> TrainSummary:
    path = Path(path)
    s = TrainSummary(path)
    lay = TrainLayout(path)
    metrics = lay.metrics
    if metrics.is_file():
        by_step: dict[int, dict] = {}
        for row in iter_lines(metrics):
            if "step" not in row:
                continue
            if "eval_loss" in row:
                s.eval_losses.append((int(row["step"]), float(row["eval_loss"])))
            elif "loss" in row:
                by_step[int(row["step"])] = row  # a resumed run rewrites its steps: the last one counts
        s.steps = [by_step[k] for k in sorted(by_step)]
    else:
        s.notes.append("no metrics.jsonl")
    try:
        manifest = lay.read_manifest()
    except ValueError:
        manifest = None
        s.notes.append("train.json is unreadable")
    if manifest is not None:
        s.settings = manifest.config
        s.result = {k: v for k, v in manifest.result.items() if not isinstance(v, (dict, list))}
    s.finished = (lay.final / "config.json").is_file()
    if not s.finished:
        s.notes.append("no final/ checkpoint yet (running, interrupted or failed)")
    return s
