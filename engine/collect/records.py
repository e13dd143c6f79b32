"""Training records and result lines, in the design's schema.

A record's `meta.solution` is the exact program that passed in the sandbox; its
`completion` is that program's continuation where the prompt ends inside it (after the
function header), else the whole program.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from persd.engine.collect.layout import Record
from persd.engine.lessons import refine_record_prompt
from persd.engine.tasks import Task

OUTCOMES = ("student_passed", "refined", "unresolved", "error")


def continuation(prompt: str, solution: str, entry_point: str | None = None) -> str:
    """What follows `prompt` in `solution`, when the solution starts with the prompt's code tail;
    else, where the prompt ends with the entry point's header, the solution re-cut to continue it
    (`continue_after_header`); else the whole solution."""
    if solution.startswith(prompt):
        return solution[len(prompt):]
    # the longest tail of the prompt, from a line start, that the solution starts with
    # (the function header after a docstring, say)
    first_line = solution.split("\n", 1)[0]
    if first_line.strip():
        cut = prompt.find(first_line)
        while cut >= 0:
            if cut == 0 or prompt[cut - 1] == "\n":
                tail = prompt[cut:]
                if solution.startswith(tail):
                    return solution[len(tail):]
            cut = prompt.find(first_line, cut + 1)
    if entry_point:
        recut = continue_after_header(prompt, solution, entry_point)
        if recut is not None:
            return recut
    return solution


def _args(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return names + [f"*{a.vararg.arg}" if a.vararg else "", f"**{a.kwarg.arg}" if a.kwarg else ""]


def continue_after_header(prompt: str, solution: str, entry_point: str) -> str | None:
    """Re-cut a whole program as the continuation of a prompt that ends with `def entry(...):`.

    The solution's body follows the prompt's header; its imports the prompt lacks move to the top
    of the body; its other top-level code the prompt lacks (constants, helpers) follows the
    function, where it still runs before any call. None where that cannot be done faithfully
    (another signature, a one-line def, decorators). The engine verifies the result in the sandbox.
    """
    start = prompt.rfind(f"def {entry_point}(")
    if start < 0 or (start > 0 and prompt[start - 1] != "\n"):
        return None
    try:
        header = ast.parse(prompt[start:] + "    pass\n").body[0]
        tree = ast.parse(solution)
    except SyntaxError:
        return None
    if not isinstance(header, ast.FunctionDef) or header.name != entry_point:
        return None
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point]
    if len(fns) != 1 or fns[0].decorator_list or _args(fns[0]) != _args(header):
        return None
    fn = fns[0]
    lines = solution.split("\n")
    if fn.body[0].lineno == fn.lineno:  # `def f(x): return x`
        return None
    body = lines[fn.body[0].lineno - 1: fn.end_lineno]
    indent = body[0][: len(body[0]) - len(body[0].lstrip())]
    prompt_text = prompt
    imports, others = [], []
    for node in tree.body:
        if node is fn or node.lineno > fn.lineno:
            continue
        text = ast.get_source_segment(solution, node) or ""
        if text.strip() and text.strip() not in prompt_text:
            (imports if isinstance(node, (ast.Import, ast.ImportFrom)) else others).append(text.strip())
    after = "\n".join(lines[fn.end_lineno:]).strip("\n")
    out = "".join(f"{indent}{imp}\n" for imp in imports) + "\n".join(body).rstrip() + "\n"
    tail = [t for t in others + ([after] if after.strip() else [])]
    if tail:
        out += "\n\n" + "\n\n".join(tail) + "\n"
    return out


@dataclass
class Tally:
    """What one task spent."""

    teacher_calls: int = 0
    teacher_tokens_in: int = 0
    teacher_tokens_out: int = 0
    teacher_cached: int = 0
    student_tokens_in: int = 0
    student_tokens_out: int = 0
    executions: int = 0
    failure: dict | None = None  # a request that failed for its own content (persd.engine.failures.TaskFailed)
    context_cut_chars: int = 0  # characters of attempt and error text cut to fit the teacher's context
    teacher_repaired: list[str] = field(default_factory=list)  # bad text replaced in the teacher's answers

    def add_teacher(self, resp) -> None:
        self.teacher_calls += 1
        self.teacher_tokens_in += int(getattr(resp, "prompt_tokens", 0) or 0)
        self.teacher_tokens_out += int(getattr(resp, "completion_tokens", 0) or 0)
        self.teacher_cached += bool(getattr(resp, "cached", False))
        for kind in getattr(resp, "repaired", None) or ():
            if kind not in self.teacher_repaired:
                self.teacher_repaired.append(kind)


@dataclass
class Meta:
    student_model: str
    teacher_model: str
    round: int = 1


@dataclass(frozen=True)
class Verdict:
    """A program checked against a task's tests: the status and the feedback a teacher (or the
    result line) sees; on a timeout, the limit that stopped it and its value."""

    status: str  # passed | failed | timeout | error
    feedback: str
    limit: str | None = None
    limit_s: float | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @classmethod
    def of(cls, result: Any) -> "Verdict":
        """The verdict of one sandbox execution (runtime.sandbox.ExecResult or a stand-in)."""
        return cls(result.status, result.feedback, getattr(result, "limit", None), getattr(result, "limit_s", None))


@dataclass(frozen=True)
class Refinement:
    """The refine step's result: `turns` teacher turns; the last answer (`answer`, the program it
    stands for) and its verdict. The answer is a solution when its verdict passed."""

    turns: int
    last: Verdict | None
    answer: str = ""

    @property
    def solution(self) -> str | None:
        return self.answer if self.last is not None and self.last.passed else None


def record(task: Task, fmt: str, prompt: str, solution: str, meta: Meta, attempt: str = "", feedback: str = "",
           extra: dict[str, Any] | None = None) -> Record:
    m = {
        "student_model": meta.student_model,
        "teacher_model": meta.teacher_model,
        "round": meta.round,
        "attempt": attempt,
        "feedback": feedback,
        "solution": solution,
    }
    if extra:
        m.update(extra)
    return Record(f"{task.task_id}/{fmt}", task.task_id, fmt, prompt, continuation(prompt, solution, task.entry_point),
                  m)


def refinement_records(task: Task, formats: tuple[str, ...], solution: str, attempt: str, feedback: str,
                       meta: Meta, turn: int) -> list[Record]:
    out = []
    extra = {"turn": turn}
    if "persd" in formats:
        out.append(record(task, "persd", task.prompt, solution, meta, attempt, feedback, extra))
    if "persd-refine" in formats:
        prompt = refine_record_prompt(task, attempt, feedback)
        out.append(record(task, "persd-refine", prompt, solution, meta, attempt, feedback, extra))
    return out


def direct_records(task: Task, formats: tuple[str, ...], solution: str, student_failed: bool, meta: Meta,
                   attempt: str = "", feedback: str = "") -> list[Record]:
    out = []
    if "inpd" in formats and student_failed:
        out.append(record(task, "inpd", task.prompt, solution, meta, attempt, feedback))
    if "stand" in formats:
        out.append(record(task, "stand", task.prompt, solution, meta, attempt, feedback))
    return out


@dataclass
class TaskOutcome:
    """What the flow returns for one task: its result line's parts and its records, typed until
    `to_json` (the shard journal's writer) turns them into the result line and record objects.

    The optional parts appear in the line only where set, in this order (the order the lines
    always had; failure, teacher_context_cut_chars, teacher_repaired first where set): error,
    protocol, generated_tests, student_repaired, samples, samples_passed, limit, limit_s,
    refine_turns, refine_status, refine_feedback, attempt, refinement, direct_status."""

    task_id: str
    outcome: str  # OUTCOMES
    status: str  # the attempt's status ("error" when the task could not be attempted)
    feedback: str
    tally: Tally = field(default_factory=Tally)
    records: list[Record] = field(default_factory=list)
    error: str | None = None
    protocol: str | None = None
    generated_tests: list | None = None  # tests made for a task without any ([] shown when none could be)
    samples: int | None = None
    samples_passed: int | None = None
    timeout: Verdict | None = None  # the chosen attempt's verdict when it timed out (the limit is shown)
    refinement: Refinement | None = None
    attempt: str | None = None  # an unresolved task's attempt: its line shows it and the teacher's last program
    direct: Verdict | None = None  # the teacher's direct solution's verdict (formats stand, inpd)
    student_repaired: list[str] | None = None  # bad text in the student's answer, replaced (U+FFFD)

    @classmethod
    def failed(cls, task_id: str, reason: str, tally: Tally | None = None, **parts: Any) -> "TaskOutcome":
        """A task that could not be attempted (no tests, a request the student rejects, ...)."""
        return cls(task_id, "error", "error", reason, tally or Tally(), error=reason, **parts)

    def result_line(self, **where: Any) -> dict[str, Any]:
        line = result_line(self.task_id, self.outcome, self.status, self.feedback, self.tally)
        for name in ("error", "protocol", "generated_tests", "student_repaired", "samples", "samples_passed"):
            if getattr(self, name) is not None:
                line[name] = getattr(self, name)
        if self.timeout is not None:
            line.update(limit=self.timeout.limit, limit_s=self.timeout.limit_s)
        if self.refinement is not None:
            last = self.refinement.last
            line.update(refine_turns=self.refinement.turns, refine_status=last.status if last else None,
                        refine_feedback=last.feedback if last else "")
        if self.attempt is not None:
            line.update(attempt=self.attempt, refinement=self.refinement.answer if self.refinement else "")
        if self.direct is not None:
            line["direct_status"] = self.direct.status
        line.update(where)
        return line

    def to_json(self, **where: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the result line, with `where` (index, shard) last; the records as JSON objects)."""
        return self.result_line(**where), [r.to_json() for r in self.records]


def result_line(task_id: str, outcome: str, status: str, feedback: str, tally: Tally) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "outcome": outcome,
        "status": status,
        "feedback": feedback,
        "teacher_calls": tally.teacher_calls,
        "teacher_tokens_in": tally.teacher_tokens_in,
        "teacher_tokens_out": tally.teacher_tokens_out,
        "teacher_tokens": tally.teacher_tokens_in + tally.teacher_tokens_out,
        "student_tokens_out": tally.student_tokens_out,
        **({"failure": tally.failure} if tally.failure else {}),
        **({"teacher_context_cut_chars": tally.context_cut_chars} if tally.context_cut_chars else {}),
        **({"teacher_repaired": tally.teacher_repaired} if tally.teacher_repaired else {}),
    }
