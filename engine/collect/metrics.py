"""Run counters and the one snapshot that feeds the live display, the log lines and DIR/metrics.json."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunStats:
    total: int = 0  # tasks of this partition
    resumed: int = 0  # tasks already done when this run started (sealed or journaled)
    done: int = 0  # tasks finished by this run
    outcomes: Counter = field(default_factory=Counter)  # over this run and resumed shards
    failures: Counter = field(default_factory=Counter)  # failed tasks by cause (persd.engine.failures), likewise
    records: Counter = field(default_factory=Counter)  # per format
    shards_sealed: int = 0
    shards_total: int = 0
    teacher_calls: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, result: dict, records: list[dict]) -> None:
        self.done += 1
        self.outcomes[result.get("outcome", "?")] += 1
        if isinstance(result.get("failure"), dict):
            self.failures[str(result["failure"].get("cause") or "unknown")] += 1
        self.teacher_calls += int(result.get("teacher_calls", 0))
        for r in records:
            self.records[r["format"]] += 1

    @property
    def finished(self) -> int:
        return self.resumed + self.done

    def snapshot(self, limits=None, teacher=None, max_cost: float | None = None) -> dict[str, Any]:
        elapsed = max(1e-9, time.monotonic() - self.started)
        tried = sum(self.outcomes[o] for o in ("student_passed", "refined", "unresolved"))
        failed = self.outcomes["refined"] + self.outcomes["unresolved"]
        rate = self.done / elapsed
        left = max(0, self.total - self.finished)
        snap: dict[str, Any] = {
            "tasks_total": self.total,
            "tasks_done": self.finished,
            "tasks_done_this_run": self.done,
            "tasks_resumed": self.resumed,
            "outcomes": dict(sorted(self.outcomes.items())),
            "failures": dict(sorted(self.failures.items())),
            "records": dict(sorted(self.records.items())),
            "student_pass_rate": (self.outcomes["student_passed"] / tried) if tried else None,
            "refined_rate": (self.outcomes["refined"] / failed) if failed else None,
            "shards_sealed": self.shards_sealed,
            "shards_total": self.shards_total,
            "elapsed_s": round(elapsed, 3),
            "tasks_per_s": round(rate, 3),
            "eta_s": round(left / rate, 1) if rate > 0 and left else (0.0 if not left else None),
        }
        if limits is not None:
            snap["student"] = limits.student.snapshot()
            snap["sandbox"] = limits.sandbox.snapshot()
            snap["teacher_slots"] = limits.teacher.snapshot()
        if teacher is not None:
            try:
                t = dict(teacher.metrics.snapshot())
            except Exception:  # a fake without metrics
                t = {}
            t["max_cost_usd"] = max_cost
            snap["teacher"] = t
        return snap


TIMELINE_TEACHER = ("requests", "http_429", "retries", "failures", "tokens_in", "tokens_out", "cost_usd", "cached_hits",
                    "batch_submitted")


def timeline_row(snap: dict[str, Any]) -> dict[str, Any]:
    """The few counters of a snapshot worth a time series (wall clock `t`, cumulative counts)."""
    row = {"t": round(time.time(), 3), "elapsed_s": snap["elapsed_s"], "tasks_done": snap["tasks_done"],
           "tasks_done_this_run": snap["tasks_done_this_run"], "outcomes": snap["outcomes"], "records": snap["records"]}
    teacher = snap.get("teacher")
    if teacher:
        row["teacher"] = {k: teacher[k] for k in TIMELINE_TEACHER if k in teacher}
    return row
