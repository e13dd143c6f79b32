"""Training records and result lines, in the design's schema.

A record's `meta.solution` is the exact program that passed in the sandbox; its
`completion` is that program's continuation where the prompt ends inside it (after the
function header), else the whole program.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.lessons import refine_record_prompt
from engine.tasks import Task

OUTCOMES = ("student_passed", "refined", "unresolved", "error")


def continuation(prompt: str, solution: str) -> str:
    """What follows `prompt` in `solution`, when the solution starts with the prompt's code tail."""
    if solution.startswith(prompt):
        return solution[len(prompt):]
    # the longest tail of the prompt, from a line start, that the solution starts with
    # (the function header after a docstring, say)
    first_line = solution.split("\n", 1)[0]
    if not first_line.strip():
        return solution
    cut = prompt.find(first_line)
    while cut >= 0:
        if cut == 0 or prompt[cut - 1] == "\n":
            tail = prompt[cut:]
            if solution.startswith(tail):
                return solution[len(tail):]
        cut = prompt.find(first_line, cut + 1)
    return solution


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

    def add_teacher(self, resp) -> None:
        self.teacher_calls += 1
        self.teacher_tokens_in += int(getattr(resp, "prompt_tokens", 0) or 0)
        self.teacher_tokens_out += int(getattr(resp, "completion_tokens", 0) or 0)
        self.teacher_cached += bool(getattr(resp, "cached", False))


@dataclass
class Meta:
    student_model: str
    teacher_model: str
    round: int = 1


def record(task: Task, fmt: str, prompt: str, solution: str, meta: Meta, attempt: str = "", feedback: str = "",
           extra: dict[str, Any] | None = None) -> dict:
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
    return {
        "id": f"{task.task_id}/{fmt}",
        "task_id": task.task_id,
        "format": fmt,
        "prompt": prompt,
        "completion": continuation(prompt, solution),
        "meta": m,
    }


def refinement_records(task: Task, formats: tuple[str, ...], solution: str, attempt: str, feedback: str,
                       meta: Meta, turn: int) -> list[dict]:
    out = []
    extra = {"turn": turn}
    if "persd" in formats:
        out.append(record(task, "persd", task.prompt, solution, meta, attempt, feedback, extra))
    if "persd-refine" in formats:
        prompt = refine_record_prompt(task, attempt, feedback)
        out.append(record(task, "persd-refine", prompt, solution, meta, attempt, feedback, extra))
    return out


def direct_records(task: Task, formats: tuple[str, ...], solution: str, student_failed: bool, meta: Meta,
                   attempt: str = "", feedback: str = "") -> list[dict]:
    out = []
    if "inpd" in formats and student_failed:
        out.append(record(task, "inpd", task.prompt, solution, meta, attempt, feedback))
    if "stand" in formats:
        out.append(record(task, "stand", task.prompt, solution, meta, attempt, feedback))
    return out


@dataclass
class TaskOutcome:
    """What the flow returns for one task: its result line and its records."""

    result: dict
    records: list[dict] = field(default_factory=list)


def result_line(task: Task, outcome: str, status: str, feedback: str, tally: Tally, **more: Any) -> dict:
    line = {
        "task_id": task.task_id,
        "outcome": outcome,
        "status": status,
        "feedback": feedback,
        "teacher_calls": tally.teacher_calls,
        "teacher_tokens_in": tally.teacher_tokens_in,
        "teacher_tokens_out": tally.teacher_tokens_out,
        "teacher_tokens": tally.teacher_tokens_in + tally.teacher_tokens_out,
        "student_tokens_out": tally.student_tokens_out,
    }
    line.update(more)
    return line
