"""A collect directory, read into a `CollectSummary`: from what is sealed (shards/*.results.jsonl), what is
journaled (work/shard-*.journal.jsonl, a run still going or stopped), the manifests and the timeline.

One streaming pass over the result lines aggregates everything (counts, turns, error kinds, tokens per task)
and keeps a seeded reservoir sample of tasks per outcome for the example browser, so a 100k-task directory
reads in seconds and memory holds only the samples. Record files are read only for the shards of sampled
tasks, and only the lines of those tasks are parsed.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
from persd.engine.collect.layout import CollectLayout, ManifestError, iter_lines
from persd.engine.failures import cause_of
from persd.engine.report.examples import Example, Reservoir, attach_prompts, examples_of

OUTCOME_ORDER = ("student_passed", "refined", "unresolved", "error")
_ERROR_NAME = re.compile(r"\b([A-Z][A-Za-z]*(?:Error|Exception|Exit|Interrupt))\b")


@dataclass
class CollectSummary:
    path: Path
    state: str = "?"
    student: str = "?"
    teacher: str = "?"
    source: str = "?"
    tasks_total: int = 0
    tasks_done: int = 0
    sealed_tasks: int = 0
    journaled_tasks: int = 0
    shards_total: int = 0
    shards_sealed: int = 0
    outcomes: Counter = field(default_factory=Counter)
    records: Counter = field(default_factory=Counter)  # per format
    statuses: Counter = field(default_factory=Counter)  # the student's attempt status
    turns: dict[str, Counter] = field(default_factory=dict)  # outcome -> Counter(turns used)
    error_kinds: Counter = field(default_factory=Counter)  # of failing attempts and error outcomes
    refine_error_kinds: Counter = field(default_factory=Counter)  # why the teacher's last program failed
    failures: Counter = field(default_factory=Counter)  # failed tasks by cause (persd.engine.failures)
    repaired: int = 0  # tasks whose student answer had bad text replaced (lenient decoding)
    teacher_calls: int = 0
    teacher_tokens_in: int = 0
    teacher_tokens_out: int = 0
    student_tokens_out: int = 0
    cum_teacher_tokens: list[int] = field(default_factory=list)  # per finished task, in task order (a thinned series)
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics.json (summed over partitions)
    timeline: list[dict] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    examples: list[Example] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return self.outcomes["refined"] + self.outcomes["unresolved"]

    @property
    def cost_usd(self) -> float | None:
        t = self.metrics.get("teacher") or {}
        return t.get("cost_usd")


def error_kind(text: str, status: str = "") -> str:
    """A short class for a failure: the exception's name where the feedback names one, else its status."""
    if status == "timeout":
        return "timeout"
    m = _ERROR_NAME.search(text or "")
    if m:
        return m.group(1)
    if not (text or "").strip():
        return status or "no feedback"
    return status or "other"


def _read_json(path: Path) -> dict:
    try:
        obj = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _journaled(work: Path, sealed: set[int]) -> Iterator[tuple[dict, list[dict]]]:
    """(result, records) of the tasks finished in unsealed shards, each once."""
    for path in sorted(work.glob("shard-*.journal.jsonl")):
        try:
            k = int(path.name.split(".")[0].split("-")[1])
        except (IndexError, ValueError):
            continue
        if k in sealed:
            continue
        seen: set[int] = set()
        for ev in iter_lines(path):
            if ev.get("e") != "d" or not isinstance(ev.get("r"), dict):
                continue
            i = ev.get("i")
            if i in seen:
                continue
            seen.add(i)
            r = dict(ev["r"])
            r.setdefault("shard", k)
            yield r, list(ev.get("R") or [])


def _sum_metrics(paths: list[Path]) -> dict:
    """metrics.json of every partition, counters summed (teacher cost, tokens, 429s)."""
    out: dict[str, Any] = {}
    for p in paths:
        m = _read_json(p)
        if not out:
            out = m
            continue
        for key in ("wall_s", "elapsed_s"):
            out[key] = max(out.get(key, 0) or 0, m.get(key, 0) or 0)
        t, u = out.setdefault("teacher", {}), m.get("teacher") or {}
        for key, v in u.items():
            if isinstance(v, (int, float)) and isinstance(t.get(key, 0), (int, float)):
                t[key] = (t.get(key) or 0) + v
    return out


def _timeline(paths: list[Path]) -> list[dict]:
    """The rows of timeline.jsonl; with several partitions, one series of their summed counters
    (at each row's time: the latest row of every partition so far)."""
    per = [_across_runs([r for r in iter_lines(p) if isinstance(r.get("t"), (int, float))]) for p in paths]
    if len(per) == 1:
        return per[0]
    tagged = sorted(((r["t"], i, r) for i, rows in enumerate(per) for r in rows), key=lambda x: (x[0], x[1]))
    latest: dict[int, dict] = {}
    out = []
    for t, i, r in tagged:
        latest[i] = r
        row: dict[str, Any] = {"t": t, "tasks_done": 0, "teacher": Counter()}
        for x in latest.values():
            row["tasks_done"] += int(x.get("tasks_done", 0))
            row["teacher"].update({k: v for k, v in (x.get("teacher") or {}).items() if isinstance(v, (int, float))})
        row["teacher"] = dict(row["teacher"])
        out.append(row)
    return out


def _across_runs(rows: list[dict]) -> list[dict]:
    """The teacher's counters of a row count one run (a resumed run starts again from 0): made cumulative
    over the runs appended to one timeline, so a resume does not draw a drop."""
    offset: Counter = Counter()
    prev: dict = {}
    out = []
    for r in rows:
        raw = {k: v for k, v in (r.get("teacher") or {}).items() if isinstance(v, (int, float))}
        if (r.get("tasks_done_this_run", 1) < prev.get("_this_run", 0)
                or raw.get("requests", 0) < prev.get("requests", 0)):
            offset.update({k: v for k, v in prev.items() if k != "_this_run"})  # a new run began
        prev = dict(raw, _this_run=r.get("tasks_done_this_run", 0))
        out.append(dict(r, teacher={k: v + offset.get(k, 0) for k, v in raw.items()}))
    return out


def read_collect(path: Path, per_outcome: int = 30, seed: int = 0, series_points: int = 2000) -> CollectSummary:
    path = Path(path)
    s = CollectSummary(path)
    lay = CollectLayout(path)
    manifests = lay.manifests()
    sealed_ids: set[int] = set()
    for mp in manifests:
        try:
            m = lay.read_manifest(mp)
        except ManifestError:
            s.notes.append(f"{mp.name}: unreadable")
            continue
        s.config = s.config or m.config
        s.state = m.state if s.state in ("?", "done") else s.state
        s.student = m.student.get("model", s.student)
        s.teacher = m.teacher.get("model", s.teacher)
        s.source = m.tasks.get("source", s.source)
        totals = m.totals
        s.tasks_total += int(totals.get("tasks", 0) or 0)
        s.shards_total += int(totals.get("shards", 0) or 0)
        s.records.update(totals.get("records") or {})
    s.metrics = _sum_metrics(lay.metrics_files())
    s.timeline = _timeline(lay.timelines())

    samples = {o: Reservoir(per_outcome, seed + i) for i, o in enumerate(OUTCOME_ORDER)}
    cum = 0
    series: list[int] = []

    def take(r: dict, recs: list[dict] | None) -> None:
        nonlocal cum
        outcome = str(r.get("outcome", "?"))
        status = str(r.get("status", ""))
        s.outcomes[outcome] += 1
        s.statuses[status] += 1
        if outcome in ("refined", "unresolved"):
            turns = s.turns.get(outcome)
            if turns is None:
                turns = s.turns[outcome] = Counter()
            turns[int(r.get("refine_turns") or 0)] += 1
        if outcome != "student_passed":
            s.error_kinds[error_kind(r.get("error") or r.get("feedback", ""),
                                     status if outcome != "error" else "error")] += 1
        cause = cause_of(r)
        if cause is not None:
            s.failures[cause] += 1
        s.repaired += bool(r.get("student_repaired"))
        if outcome == "unresolved":
            s.refine_error_kinds[error_kind(r.get("refine_feedback", ""), str(r.get("refine_status") or ""))] += 1
        s.teacher_calls += int(r.get("teacher_calls", 0) or 0)
        tin, tout = int(r.get("teacher_tokens_in", 0) or 0), int(r.get("teacher_tokens_out", 0) or 0)
        s.teacher_tokens_in += tin
        s.teacher_tokens_out += tout
        s.student_tokens_out += int(r.get("student_tokens_out", 0) or 0)
        cum += tin + tout
        series.append(cum)
        if outcome in samples:
            samples[outcome].offer((r, recs))

    for res in lay.results_files():
        try:
            sealed_ids.add(int(res.name.split(".")[0].split("-")[1]))
        except (IndexError, ValueError):
            continue
        n0 = sum(s.outcomes.values())
        for r in iter_lines(res):
            take(r, None)
        s.sealed_tasks += sum(s.outcomes.values()) - n0
    s.shards_sealed = len(sealed_ids)
    journal_records: Counter = Counter()
    for r, recs in _journaled(lay.work_dir, sealed_ids):
        s.journaled_tasks += 1
        take(r, recs)
        journal_records.update(str(x.get("format", "?")) for x in recs)
    s.tasks_done = s.sealed_tasks + s.journaled_tasks
    if not manifests:
        s.notes.append("no manifest yet: totals come from the shards and journals alone")
        s.records = _count_record_formats(path) + journal_records
        s.tasks_total = max(s.tasks_total, s.tasks_done)
        s.shards_total = max(s.shards_total, s.shards_sealed)
    if s.journaled_tasks:
        s.notes.append(f"{s.journaled_tasks} task(s) read from the journals of unsealed shards (work in progress)")
    step = max(1, len(series) // series_points)
    s.cum_teacher_tokens = series[::step] + ([series[-1]] if series and (len(series) - 1) % step else [])
    in_order = lambda item: (int(item[0].get("shard") or 0), int(item[0].get("index") or 0))  # noqa: E731
    s.examples = examples_of(path, [item for o in OUTCOME_ORDER for item in sorted(samples[o].items, key=in_order)])
    attach_prompts(s.examples, s.config.get("tasks"), s.notes)
    return s


def _count_record_formats(path: Path) -> Counter:
    counts: Counter = Counter()
    for f in CollectLayout(path).sealed_record_files():
        for r in iter_lines(f):
            counts[str(r.get("format", "?"))] += 1
    return counts
