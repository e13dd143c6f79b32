"""A loop directory, read into a `LoopSummary`: per round, tasks attempted, student passes, records, teacher
cost, pass@1 directly and after refine-inference (from loop.json's rounds and each round's own files)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from persd.engine.collect.layout import CollectLayout, ManifestError
from persd.engine.rundirs.eval import EvalLayout
from persd.engine.rundirs.loop import LoopLayout


@dataclass
class Round:
    round: int
    tasks: int | None = None
    student_passed: int | None = None
    refined: int | None = None
    unresolved: int | None = None
    records: int | None = None
    train_records: int | None = None
    cost_usd: float | None = None
    teacher_tokens: int | None = None
    pass1: float | None = None
    pass1_refined: float | None = None


@dataclass
class LoopSummary:
    path: Path
    rounds: list[Round] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def round_dirs(self, stage: str) -> list[Path]:
        """round-N/<stage> directories that exist, in round order."""
        return [p for p in (self.path / f"round-{r.round}" / stage for r in self.rounds) if p.is_dir()]


def _json(path: Path) -> dict:
    try:
        obj = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def read_loop(path: Path) -> LoopSummary:
    path = Path(path)
    s = LoopSummary(path)
    lay = LoopLayout(path)
    state = _json(lay.manifest)
    s.settings = state.get("fingerprint") or {}
    numbers = sorted({int(p.name.split("-")[1]) for p in path.glob("round-*") if p.is_dir()
                      and p.name.split("-")[1].isdigit()})
    saved = {int(k): v for k, v in (state.get("rounds") or {}).items() if str(k).isdigit()}
    for r in numbers:
        s.rounds.append(_round(lay, r, saved.get(r) or {}))
    if not s.rounds:
        s.notes.append("no round directories yet")
    return s


def _round(lay: LoopLayout, r: int, saved: dict) -> Round:
    out = Round(r)
    collect = CollectLayout(lay.collect(r))
    try:
        totals = collect.read_manifest(collect.manifest_path()).totals
    except ManifestError:
        totals = None
    if totals is not None:
        oc = totals.get("outcomes") or {}
        out.tasks = totals.get("tasks")
        out.student_passed = oc.get("student_passed", 0)
        out.refined = oc.get("refined", 0)
        out.unresolved = oc.get("unresolved", 0) + oc.get("error", 0)
        out.records = sum((totals.get("records") or {}).values())
        out.teacher_tokens = totals.get("teacher_tokens_sealed")
    metrics = _json(collect.metrics_path())
    if metrics:
        out.cost_usd = (metrics.get("teacher") or {}).get("cost_usd")
    if lay.train_data(r).is_file():
        with open(lay.train_data(r), "rb") as fh:
            out.train_records = sum(1 for line in fh if line.strip())
    summary = _json(EvalLayout(lay.eval(r)).summary)
    if summary:
        out.pass1 = summary.get("pass@1")
        steps = summary.get("steps") or []
        if len(steps) > 1:
            out.pass1_refined = steps[-1].get("pass@1")
    return out
