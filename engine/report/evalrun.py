"""An eval directory, read into an `EvalSummary`: pass@k per refine step and against k, per-task flips after
refinement, statuses (timeouts, errors). A run still going is read from its journal's scored lines."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from persd.engine.collect.layout import iter_lines
from persd.engine.evaluation.passk import pass_at_k
from persd.engine.rundirs.eval import EvalLayout


@dataclass
class Flip:
    task_id: str
    before: str  # the direct sample's code (untrusted)
    after: str  # the refined sample's code
    feedback: str


@dataclass
class EvalSummary:
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    tasks: int = 0
    n: int = 0
    steps: list[int] = field(default_factory=list)
    pass_at: dict[int, dict[int, float]] = field(default_factory=dict)  # step -> k -> pass@k (from results)
    statuses: dict[int, Counter] = field(default_factory=dict)  # step -> status counts
    solved: dict[int, set[str]] = field(default_factory=dict)  # step -> tasks with a passing sample
    flips_up: list[str] = field(default_factory=list)  # unsolved directly, solved after refinement
    flips_down: list[str] = field(default_factory=list)
    flip_examples: list[Flip] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)  # samples (at their first step) failed by one request, by cause
    failure_examples: list[dict] = field(default_factory=list)  # a few of their lines: task, cause, message
    finished: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return str((self.summary.get("protocol") or {}).get("student_model") or "?")

    @property
    def task_set(self) -> str:
        proto = self.summary.get("protocol") or {}
        return str(proto.get("name") or proto.get("tasks") or "?")

    def pass1(self, step: int) -> float | None:
        return self.pass_at.get(step, {}).get(1)


def read_eval(path: Path, flip_examples: int = 20) -> EvalSummary:
    path = Path(path)
    s = EvalSummary(path)
    lay = EvalLayout(path)
    summ = lay.summary
    if summ.is_file():
        try:
            s.summary = orjson.loads(summ.read_bytes())
            s.finished = True
        except orjson.JSONDecodeError:
            s.notes.append("summary.json is unreadable")
    results = lay.results
    if results.is_file():
        lines = iter_lines(results)
    else:
        journal = lay.journal
        lines = (r for r in iter_lines(journal) if r.get("kind") == "result") if journal.is_file() else iter(())
        s.notes.append("no results.jsonl yet: the journal's scored samples are shown")
    passed: dict[int, Counter] = defaultdict(Counter)
    samples: dict[int, Counter] = defaultdict(Counter)
    first_code: dict[str, tuple[str, str]] = {}
    fixed_code: dict[str, str] = {}
    last_failure: dict[tuple, tuple[int, dict]] = {}
    for r in lines:
        step, tid, status = int(r.get("step", 0)), str(r.get("task_id")), str(r.get("status"))
        samples[step][tid] += 1
        s.statuses.setdefault(step, Counter())[status] += 1
        failure = r.get("failure") or r.get("refine_failure")  # a carried line keeps its sample's failure
        if isinstance(failure, dict):
            last_failure[(tid, r.get("sample"))] = (step, failure)
        if status == "passed":
            passed[step][tid] += 1
            if step > 0 and tid not in fixed_code:
                fixed_code[tid] = str(r.get("code", ""))
        elif step == 0 and tid not in first_code:
            first_code[tid] = (str(r.get("code", "")), str(r.get("feedback", "")))
    s.steps = sorted(samples)
    for (tid, sample), (step, failure) in last_failure.items():  # as the summary counts: at the last step
        if step == s.steps[-1]:
            s.failures[str(failure.get("cause"))] += 1
            if len(s.failure_examples) < flip_examples:
                s.failure_examples.append({"task_id": tid, "sample": sample, "step": step, **failure})
    s.tasks = int(s.summary.get("tasks") or len(samples.get(0, ())))
    s.n = int(s.summary.get("n") or max(samples.get(0, Counter({"": 0})).values(), default=0))
    for step in s.steps:
        s.solved[step] = set(passed[step])
        n_by_task = samples[step]
        at = pass_at_k(n_by_task, passed[step], range(1, max(n_by_task.values()) + 1))
        s.pass_at[step] = {int(k.split("@")[1]): v for k, v in at.items()}
    if len(s.steps) > 1:
        first, last = s.steps[0], s.steps[-1]
        s.flips_up = sorted(s.solved[last] - s.solved[first])
        s.flips_down = sorted(s.solved[first] - s.solved[last])
        for tid in s.flips_up[:flip_examples]:
            before, feedback = first_code.get(tid, ("", ""))
            s.flip_examples.append(Flip(tid, before, fixed_code.get(tid, ""), feedback))
    return s

