"""The offline stand-in teacher: a local OpenAI-compatible server that answers from the tasks'
reference solutions. It lets `persd collect` run end to end with no key and no network (the
demo); every run that uses it says so. It is not a model: a task without a reference gets an
answer that fails, and it proposes test inputs only from tests the task already shows.
"""
from __future__ import annotations

import hashlib
import re

from engine import lessons
from engine.tasks import Task, iter_tasks

MODEL = "offline-stand-in"
LABEL = ("teacher: OFFLINE STAND-IN answering from the tasks' reference solutions (no key, no network); "
         "pass --teacher-url and set the key's variable for a real teacher")


def _key(instruction: str) -> str:
    return hashlib.blake2b(instruction.strip().encode(), digest_size=12).hexdigest()


_TASK = re.compile(re.escape(lessons.TASK) + r"\n(.*?)(?:\n\n### |\Z)", re.S)


class StandinResponder:
    """`responder(body) -> str` for LocalOpenAIServer. Holds one reference per task in scope."""

    def __init__(self, tasks_src: str, limit: int | None = None):
        self.references: dict[str, tuple[str, str]] = {}
        for i, task in enumerate(iter_tasks(tasks_src)):
            if limit is not None and i >= limit:
                break
            self.references[_key(task.instruction)] = (task.reference or "", _calls(task))

    def __call__(self, body: dict) -> str:
        messages = body.get("messages") or []
        first_user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        m = _TASK.search(first_user)
        ref, calls = self.references.get(_key(m.group(1)) if m else "", ("", ""))
        if lessons.INPUTS in first_user:
            return f"```python\n{calls}\n```" if calls else "The offline stand-in cannot propose test inputs for this task."
        if not ref:
            return "```python\n# the offline stand-in has no reference solution for this task\n```"
        return f"```python\n{ref.rstrip()}\n```"


def _calls(task: Task) -> str:
    """Calls of the entry point taken from the task's visible examples (for tasks without tests)."""
    if not task.entry_point:
        return ""
    out = []
    for line in (task.visible_tests or "").splitlines():
        out += lessons.parse_calls(line, task.entry_point, 5)
    return "\n".join(out[:5])
