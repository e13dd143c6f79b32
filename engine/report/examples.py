"""The example browser's content: a seeded sample of tasks per outcome, their texts (the teacher's program from
the records of their shard only, the task prompt from the task source), the diff of the teacher's program
against the student's attempt, and the caps that keep one huge completion from making the page heavy."""
from __future__ import annotations

import difflib
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import orjson
from persd.engine.collect.layout import CollectLayout

MAX_TEXT = 12_000  # characters of one shown text (a prompt, an attempt, a program, a feedback)
MAX_DIFF_LINES = 400


def clip(text: str | None, limit: int = MAX_TEXT) -> str:
    text = text or ""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit:,} more characters not shown)"


def diff_lines(before: str | None, after: str | None) -> list[tuple[str, str]]:
    """(kind, line) of a unified diff from `before` to `after`; kind is add, del, hunk or ctx."""
    a = clip(before).splitlines()
    b = clip(after).splitlines()
    out: list[tuple[str, str]] = []
    for line in difflib.unified_diff(a, b, "student's attempt", "teacher's program", n=3, lineterm=""):
        if line.startswith(("---", "+++")):
            continue
        kind = ("hunk" if line.startswith("@@") else "add" if line.startswith("+")
                else "del" if line.startswith("-") else "ctx")
        out.append((kind, line))
        if len(out) >= MAX_DIFF_LINES:
            out.append(("hunk", f"... diff cut at {MAX_DIFF_LINES} lines"))
            break
    return out


@dataclass
class Example:
    """One task shown in the browser: everything here is untrusted text (escaped when rendered)."""

    task_id: str
    outcome: str
    status: str = ""
    feedback: str = ""
    attempt: str | None = None
    solution: str | None = None  # the teacher's verified program (refined)
    refinement: str | None = None  # the teacher's last failing program (unresolved)
    refine_feedback: str = ""
    refine_turns: int | None = None
    prompt: str | None = None
    error: str = ""
    teacher_tokens: int = 0
    shard: int | None = None
    failure: dict | None = None  # a request that failed for its own content: cause, by, the provider's message


class Reservoir:
    """A seeded uniform sample of at most `size` items from a stream (the same directory, the same sample).
    Li's algorithm L: random numbers are drawn only when an item is taken, not for every item offered."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.rng = random.Random(seed)
        self.seen = 0
        self.items: list = []
        self._w = 1.0
        self._next = size - 1  # the index of the last item taken (0-based)

    def _skip(self) -> None:
        self._w *= math.exp(math.log(1.0 - self.rng.random()) / self.size)
        self._next += int(math.log(1.0 - self.rng.random()) / math.log(1.0 - self._w)) + 1 if self._w < 1 else 1

    def offer(self, item) -> None:
        self.seen += 1
        if self.size == 0:
            return
        if len(self.items) < self.size:
            self.items.append(item)
            if len(self.items) == self.size:
                self._skip()
        elif self.seen - 1 == self._next:
            self.items[self.rng.randrange(self.size)] = item
            self._skip()


def examples_of(path: Path, picked: list[tuple[dict, list[dict] | None]]) -> list[Example]:
    """Examples of the sampled tasks; the teacher's verified program comes from the records (their shard only)."""
    need: dict[int, set[str]] = {}
    for r, recs in picked:
        if r.get("outcome") == "refined" and recs is None and r.get("shard") is not None:
            need.setdefault(int(r["shard"]), set()).add(str(r.get("task_id")))
    found = {}
    for k, ids in need.items():
        found.update(records_of(CollectLayout(path).records_path(k), ids))
    out = []
    for r, recs in picked:
        tid = str(r.get("task_id"))
        rec = found.get(tid) or next((x for x in recs or () if x.get("format") in ("persd", "persd-refine")), None)
        meta = (rec or {}).get("meta") or {}
        out.append(Example(
            task_id=tid, outcome=str(r.get("outcome")), status=str(r.get("status", "")),
            feedback=str(r.get("feedback", "")), attempt=r.get("attempt", meta.get("attempt")),
            solution=meta.get("solution"), refinement=r.get("refinement"),
            refine_feedback=str(r.get("refine_feedback") or ""), refine_turns=r.get("refine_turns"),
            prompt=(rec or {}).get("prompt") if (rec or {}).get("format") == "persd" else None,
            error=str(r.get("error") or ""), teacher_tokens=int(r.get("teacher_tokens", 0) or 0),
            shard=r.get("shard"), failure=r.get("failure") if isinstance(r.get("failure"), dict) else None))
    return out


def records_of(path: Path, ids: set[str]) -> dict[str, dict]:
    """The first persd / persd-refine record of each wanted task in a records file; other lines unparsed."""
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.startswith(b'{"id":"'):
                end = raw.find(b'","', 7)
                rid = raw[7:end].decode("utf-8", "replace") if end > 0 else ""
                tid = rid.rsplit("/", 1)[0]
                if tid not in ids or tid in out:
                    continue
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            tid = str(rec.get("task_id"))
            if tid in ids and tid not in out and rec.get("format") in ("persd", "persd-refine"):
                out[tid] = rec
            if len(out) == len(ids):
                break
    return out


def attach_prompts(examples: list[Example], src: str | None, notes: list[str]) -> None:
    """The task prompt of each example, from the task source named in the manifest: lines are matched by
    the task id's bytes before any is parsed, and reading stops once every example has its prompt; left
    out where the source is gone."""
    want = {e.task_id: e for e in examples if e.prompt is None}
    if not want or not src:
        return
    import gzip

    from persd.engine.tasks import parse_task_line, resolve_source

    pattern = re.compile(b"|".join(re.escape(orjson.dumps(tid)) for tid in want))  # one C-level scan a line
    try:
        from persd.engine.task_sources import is_dataset_source

        if str(src) not in ("humaneval", "mbpp") and is_dataset_source(str(src)):  # parquet, saved, hf:
            from persd.engine.tasks import iter_tasks

            for task in iter_tasks(str(src)):
                e = want.pop(task.task_id, None)
                if e is not None:
                    e.prompt = task.prompt
                if not want:
                    break
            return
        path = resolve_source(str(src))
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if pattern.search(raw) is None:
                    continue
                task = parse_task_line(raw, str(path), lineno)
                e = want.pop(task.task_id, None)
                if e is not None:
                    e.prompt = task.prompt
                if not want:
                    break
    except Exception:  # the source moved, changed or is unreadable: the browser shows the rest
        notes.append(f"task prompts not shown for {len(want)} example(s): the task source {src} could not be read")
