"""What the student sees for a task, shared by `collect` and `eval`.

A base model continues `task.prompt` (built per shape in engine/tasks.py: HumanEval's prompt
as is; MBPP's description, first test and header; generic instruction and header) and is
stopped where the function ends. An instruct model gets chat messages asking for one fenced
block. engine/extract.py turns either answer back into a program.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from persd.engine.tasks import Task

if TYPE_CHECKING:  # the engine may use runtime's dataclasses; import them only when asked
    from persd.runtime.student import SamplingParams, StudentRequest

# Where a base model's function ends: the next top-level statement of another kind.
STOP_SEQUENCES: tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert")

SYSTEM = "You are an expert Python programmer. You write correct, self-contained Python code."
ANSWER = (
    "Answer with exactly one ```python fenced block holding the complete function, starting with "
    "its header and any imports it needs."
)


ANSWER_PROGRAM = ("Answer with exactly one ```python fenced block holding the complete program, reading standard "
                  "input and printing to standard output.")


def student_prompt(task: Task) -> str:
    """The text a base model continues."""
    return task.prompt


def stop_sequences(task: Task) -> tuple[str, ...]:
    """Stops for a base model on this task. Where the prompt does not end inside a function
    (a generic task with no header), the model writes the `def` itself and may need helpers,
    so new `def`/`class` lines do not stop it."""
    if task.shape == "stdio":  # a whole program: top-level prints and `if __name__` are part of it
        return ()
    if task.header.strip() and task.prompt.rstrip().endswith(task.header.rstrip()):
        return STOP_SEQUENCES
    return tuple(s for s in STOP_SEQUENCES if s not in ("\ndef ", "\nclass "))


def _fence(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def student_user_message(task: Task) -> str:
    if task.shape == "humaneval":
        return (
            "Complete the following Python function so that it does what its docstring says.\n\n"
            f"{_fence(task.prompt)}\n\n{ANSWER}"
        )
    parts = [task.instruction.strip()]
    if task.shape == "stdio":  # examples of input and output, not Python
        if task.visible_tests.strip():
            parts.append(f"For example:\n```\n{task.visible_tests.rstrip()}\n```")
        parts.append(ANSWER_PROGRAM)
        return "\n\n".join(parts)
    if task.header.strip():
        parts.append(f"Start your solution with this header:\n{_fence(task.header)}")
    if task.visible_tests.strip():
        parts.append(f"Your code should pass tests like this one:\n{_fence(task.visible_tests)}")
    parts.append(ANSWER)
    return "\n\n".join(parts)


def student_messages(task: Task) -> list[dict[str, str]]:
    """Chat messages for an instruct model."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": student_user_message(task)}]


def student_request(task: Task, params: "SamplingParams", chat: bool) -> "StudentRequest":
    """The request for one task: messages for chat models; the prompt plus the task's stop
    sequences (merged into `params.stop`) for base models."""
    from dataclasses import replace

    from persd.runtime.student import StudentRequest

    if chat:
        return StudentRequest(messages=student_messages(task), params=params, request_id=task.task_id)
    stops = tuple(dict.fromkeys(tuple(params.stop) + stop_sequences(task)))
    return StudentRequest(prompt=student_prompt(task), params=replace(params, stop=stops), request_id=task.task_id)
