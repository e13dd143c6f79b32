"""The offline stand-in teacher: a local OpenAI-compatible server that answers from the tasks'
reference solutions. It lets `persd collect` run end to end with no key and no network (the
demo); every run that uses it says so. It is not a model: a task without a reference gets an
answer that fails. For test inputs it uses the calls the task's examples show, else calls it
guesses from the parameter names of the header (`nums` gets lists, `text` strings, `n` small
ints); the sandbox then keeps only the calls the reference answers.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import re

from persd.engine import lessons
from persd.engine.tasks import Task, iter_tasks

MODEL = "offline-stand-in"
LABEL = ("teacher: OFFLINE STAND-IN answering from the tasks' reference solutions (it needs no key and no network); "
         "pass --teacher.base-url and set the key's variable for a real teacher")


def _key(instruction: str) -> str:
    return hashlib.blake2b(instruction.strip().encode(), digest_size=12).hexdigest()


_TASK = re.compile(re.escape(lessons.TASK) + r"\n(.*?)(?:\n\n### |\Z)", re.S)


class StandinResponder:
    """`responder(body) -> str` for LocalOpenAIServer. Holds one reference per task in scope."""

    def __init__(self, tasks_src: str, limit: int | None = None, fields: dict[str, str] | None = None):
        self.references: dict[str, tuple[str, str]] = {}
        for task in itertools.islice(iter_tasks(tasks_src, fields), limit):  # never parses a line past --limit
            self.references[_key(task.instruction)] = (task.reference or "", _calls(task))

    def __call__(self, body: dict) -> str:
        messages = body.get("messages") or []
        first_user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        paper = _paper_task(first_user)
        if paper is not None:  # engine/paper's prompts (the reference implementation's wording)
            ref, calls = self.references.get(_key(paper[1]), ("", ""))
            if paper[0] == "inputs":
                return calls or "The offline stand-in cannot propose test inputs for this task."
            return f"RECTIFIED CODE:\n```python\n{ref.rstrip()}\n```" if ref else "The code is correct."
        m = _TASK.search(first_user)
        ref, calls = self.references.get(_key(m.group(1)) if m else "", ("", ""))
        if lessons.INPUTS in first_user:
            return (f"```python\n{calls}\n```" if calls
                    else "The offline stand-in cannot propose test inputs for this task.")
        if not ref:
            return "```python\n# the offline stand-in has no reference solution for this task\n```"
        return f"```python\n{ref.rstrip()}\n```"


_PAPER_TEACHER = re.compile(r'^Complete the python function.*?\nTASK:\n"""\n(.*?)\n"""', re.S)
_PAPER_INPUTS = re.compile(r"^### INSTRUCTION: Generate 5 example inputs.*?\nTASK:\n(.*?)\n\nCODE:\n", re.S)


def _paper_task(text: str) -> tuple[str, str] | None:
    """("refine" | "inputs", the task's text) for a paper-mode teacher prompt, else None."""
    for kind, pattern in (("refine", _PAPER_TEACHER), ("inputs", _PAPER_INPUTS)):
        m = pattern.search(text)
        if m:
            return kind, m.group(1).replace("\r\n", "\n")
    return None


def _calls(task: Task) -> str:
    """Calls of the entry point for a task without tests: its visible examples, else guesses."""
    if not task.entry_point:
        return ""
    out = []
    for line in (task.visible_tests or "").splitlines():
        out += lessons.parse_calls(line, task.entry_point, 5)
    return "\n".join(out[:5] or _guessed_calls(task))


# Values to try, by what a parameter's name suggests; five of each, one per proposed call.
_GUESSES: list[tuple[tuple[str, ...], list[str]]] = [
    (("matrix", "grid", "board", "mat"),
     ["[[1, 2], [3, 4]]", "[[0]]", "[[1, 2, 3], [4, 5, 6], [7, 8, 9]]", "[[2, 0], [0, 2]]", "[[5, 1], [2, 3]]"]),
    (("set",), ["{1, 2, 3}", "set()", "{2, 4}", "{1, 5, 9}", "{7}"]),
    (("dict", "map", "table", "counts"), ["{'a': 1, 'b': 2}", "{}", "{'x': 10}", "{'a': 3, 'c': 1}", "{'k': 0}"]),
    (("list", "arr", "nums", "numbers", "lst", "array", "items", "values", "data", "seq", "l"),
     ["[3, 1, 2]", "[]", "[5, -2, 7, 7, 0]", "[10]", "[1, 2, 3, 4, 5, 6]"]),
    (("str", "string", "text", "word", "sentence", "name", "s", "char", "phrase", "email", "url", "date", "binary"),
     ["'hello world'", "''", "'Python'", "'racecar'", "'a b c'"]),
    (("float", "price", "rate", "temp", "celsius", "fahrenheit", "radius", "amount"),
     ["2.5", "0.0", "10.0", "-3.5", "100.0"]),
]
_INTS = ["3", "0", "7", "1", "12"]


def _guess(name: str) -> list[str]:
    low = name.lower()
    parts = set(re.split(r"_|\d", low)) | {low}
    for keys, values in _GUESSES:
        if parts & set(keys) or any(low.startswith(k) or low.endswith(k) for k in keys if len(k) > 2):
            return values
    return _INTS


def _guessed_calls(task: Task) -> list[str]:
    """Five calls built from the header's parameter names (parameters with defaults are left out)."""
    try:
        fn = next(n for n in ast.walk(ast.parse(task.header + "    pass\n"))
                  if isinstance(n, ast.FunctionDef) and n.name == task.entry_point)
    except (SyntaxError, StopIteration):
        return []
    args = fn.args.posonlyargs + fn.args.args
    required = args[: len(args) - len(fn.args.defaults)]
    names = [a.arg for a in required if a.arg not in ("self", "cls")]
    columns = [_guess(name) for name in names]
    return [f"{task.entry_point}({', '.join(col[i] for col in columns)})" for i in range(5)]
