"""`--tests-from FILE`: the Code-Alpaca unit tests the PersDistill release made once, read instead of asking a
new teacher (generate_alpaca_data.py made them; its dataset `ALP/code-alpaca-mbpp`, file
code-alpaca_unittests_mbpp.json, is what the reference's collection loaded: generate_code_for_alpaca.py:22,
eval_alpaca.py).

Accepted layouts, one task a row, keyed by `task_id` (an int: the Code-Alpaca index, task `CodeAlpaca/<int>`;
a string: the task id as is):
- the dataset's rows: `test_list: [{"input": "f(1)", "output": "2"}, ...]` (an absent or null output: the
  call is only run, as the reference's input-only tests);
- generate_alpaca_data.py's stage-2 rows: `unittests: [{"input", "output", "pass"}, ...]`; the calls that ran
  (`pass` true) are kept;
as JSON lines, a JSON array of rows, or a JSON object of columns (`{"task_id": [...], "test_list": [...]}`,
what `datasets` writes with `to_json(lines=False)`).
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import orjson
from persd.runtime.errors import InputError, UsageError


def _rows(path: Path) -> list[tuple[int, dict]]:
    data = path.read_bytes()
    stripped = data.lstrip()
    if stripped[:1] in (b"[", b"{"):
        try:
            whole = orjson.loads(data)
        except orjson.JSONDecodeError:
            whole = None  # JSON lines starting with an object
        if isinstance(whole, list):
            return [(i + 1, row) for i, row in enumerate(whole)]
        if isinstance(whole, dict) and isinstance(whole.get("task_id"), list):
            cols = {k: v for k, v in whole.items() if isinstance(v, list)}
            n = len(whole["task_id"])
            return [(i + 1, {k: v[i] for k, v in cols.items() if i < len(v)}) for i in range(n)]
        if isinstance(whole, dict):
            return [(1, whole)]
    out = []
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, orjson.loads(line)))
        except orjson.JSONDecodeError as exc:
            raise InputError(str(path), lineno, f"not valid JSON: {exc}") from None
    return out


def _tests(row: dict, path: str, lineno: int) -> list[dict]:
    if isinstance(row.get("test_list"), list):
        items, only_passed = row["test_list"], False
    elif isinstance(row.get("unittests"), list):
        items, only_passed = row["unittests"], True
    else:
        raise InputError(path, lineno, 'expected a list of {"input": "f(..)", "output": ".."} objects',
                         field="test_list")
    tests = []
    for t in items:
        if not isinstance(t, dict) or not isinstance(t.get("input"), str):
            raise InputError(path, lineno, 'expected {"input": "f(..)", "output": ".."} objects', field="test_list")
        if only_passed and not t.get("pass"):
            continue
        out = t.get("output")
        tests.append({"input": t["input"]} if out is None else {"input": t["input"], "output": str(out)})
    return tests


@lru_cache(maxsize=4)
def load(path: str) -> dict[str, list[dict]]:
    """task id -> tests, from a file in one of the layouts above."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--tests-from {path}: no such file")
    out: dict[str, list[dict]] = {}
    for lineno, row in _rows(p):
        if not isinstance(row, dict) or "task_id" not in row:
            raise InputError(path, lineno, "missing", field="task_id")
        tid = row["task_id"]
        key = f"CodeAlpaca/{tid}" if isinstance(tid, int) or (isinstance(tid, str) and tid.isdigit()) else str(tid)
        out[key] = _tests(row, path, lineno)
    return out


def apply(task, path: str | None):
    """The task with the file's tests as its own (the reference named the prompt's function from the first
    test's call, generate_code_for_alpaca.py:22); unchanged without a file or a row for it."""
    if not path:
        return task
    tests = load(path).get(task.task_id)
    if not tests:
        return task
    return dataclasses.replace(task, extra={**task.extra, "io_tests": tests})
