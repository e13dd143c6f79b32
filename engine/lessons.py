"""The engine's prompt texts for the teacher, and the refine-style training prompt.

Layout follows the paper (TASK, HEADER, INCORRECT CODE, ERROR); the wording is ours.
The offline stand-in teacher (engine/collect/standin.py) reads the same section markers back.
"""
from __future__ import annotations

import ast
import re

from persd.engine.tasks import Task

SYSTEM = (
    "You are an expert Python programmer and a patient teacher. You correct students' code so that "
    "it passes the task's unit tests, and you answer with code only."
)

TASK, HEADER, INCORRECT, ERROR, INPUTS = "### TASK", "### HEADER", "### INCORRECT CODE", "### ERROR", "### TEST INPUTS"


def _fence(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def _task_block(task: Task) -> str:
    parts = [f"{TASK}\n{task.instruction.strip()}"]
    if task.header.strip():
        parts.append(f"{HEADER}\n{_fence(task.header)}")
    return "\n\n".join(parts)


def refine_messages(task: Task, attempt: str, feedback: str) -> list[dict]:
    """First teacher turn for a failed task: the task, the student's code and its execution error."""
    user = "\n\n".join(
        [
            _task_block(task),
            f"{INCORRECT}\n{_fence(attempt) if attempt.strip() else '(the student wrote no code)'}",
            f"{ERROR}\n{feedback.strip() or '(no error text)'}",
            "The code above fails the task's unit tests with the error shown. Correct its logic. Where the "
            "student's code is nearly right, stay close to it and change only what is wrong; where it is far "
            "off, rewrite it. Answer with exactly one ```python fenced block holding the whole corrected "
            "program, starting with the header"
            + (" exactly as given." if task.header.strip() else "."),
        ]
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def followup_message(feedback: str) -> dict:
    """A further turn: the teacher's own refinement failed too."""
    return {
        "role": "user",
        "content": f"{ERROR}\n{feedback.strip() or '(no error text)'}\n\n"
        "Your code still fails the unit tests with the error above. Fix it and answer again with exactly one "
        "```python fenced block holding the whole program, starting with the header.",
    }


def direct_messages(task: Task) -> list[dict]:
    """The teacher's own solution, without seeing a student attempt (the inpd / stand baselines)."""
    user = (
        _task_block(task)
        + "\n\nWrite a correct solution to the task. Answer with exactly one ```python fenced block holding "
        "the whole program, starting with the header" + (" exactly as given." if task.header.strip() else ".")
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def testgen_messages(task: Task, count: int) -> list[dict]:
    """Ask for test inputs for a task that has a reference solution but no tests."""
    entry = task.entry_point or "the function"
    ref = task.reference or task.header
    user = "\n\n".join(
        [
            _task_block(task),
            f"### REFERENCE SOLUTION\n{_fence(ref)}",
            f"{INPUTS}\nPropose {count} diverse test inputs for `{entry}`, covering normal and edge cases, "
            f"that the reference solution handles. Answer with exactly one ```python fenced block holding "
            f"{count} lines, each one call of `{entry}(...)` with literal arguments and nothing else.",
        ]
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def refine_record_prompt(task: Task, attempt: str, feedback: str) -> str:
    """The `persd-refine` training prompt: task, failed attempt, its feedback, then the task prompt to complete."""
    return (
        "Rectify the code below for the given task, based on the errors from its unit tests.\n\n"
        f"{TASK}\n{task.instruction.strip()}\n\n"
        f"{INCORRECT}\n{attempt.rstrip()}\n\n"
        f"{ERROR}\n{feedback.strip()}\n\n"
        "### CORRECTED CODE\n"
        f"{task.prompt}"
    )


# ------------------------------------------------------------------ parsing answers

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S)


def fenced_blocks(text: str) -> list[str]:
    return [m.group(1) for m in _FENCE.finditer(text)]


def parse_calls(text: str, entry_point: str, limit: int) -> list[str]:
    """The `entry(...)` calls in a testgen answer: syntactically valid, literal-looking, de-duplicated."""
    blocks = fenced_blocks(text) or [text]
    calls: list[str] = []
    for block in blocks:
        for line in block.splitlines():
            line = line.strip().rstrip(",;")
            if line.startswith("assert "):
                line = line[7:].split("==")[0].strip()
            if not line.startswith(f"{entry_point}("):
                continue
            try:
                node = ast.parse(line, mode="eval").body
            except SyntaxError:
                continue
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == entry_point:
                if line not in calls:
                    calls.append(line)
    return calls[:limit]
