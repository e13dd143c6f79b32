"""Which tasks an evaluation covers: the source, an optional id list (the paper's 307 MBPP ids), --limit."""
from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
from persd.engine.evaluation.protocols import mbpp_eval_ids_path
from persd.engine.tasks import Task, iter_tasks
from persd.runtime.errors import UsageError

MBPP_307 = "@mbpp-307"


def read_task_ids(spec: str) -> list[str]:
    """Ids from a JSON list or a file of one id a line; "@mbpp-307" is the sanitized MBPP list."""
    path = mbpp_eval_ids_path() if spec == MBPP_307 else Path(spec)
    if not path.is_file():
        raise UsageError(f"--task-ids: no such file: {spec}")
    text = path.read_text(encoding="utf-8")
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        data = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(data, list) or not all(isinstance(x, (int, str)) for x in data):
        raise UsageError(f"--task-ids {path}: expected a JSON list of ids or one id a line")
    return [str(x) for x in data]


def _matches(wanted: str) -> tuple[str, ...]:
    return (wanted, f"MBPP/{wanted}") if wanted.isdigit() else (wanted,)


def select_tasks(src: str, task_ids: str | None = None, limit: int | None = None,
                 fields: dict[str, str] | None = None) -> list[Task]:
    """The tasks to evaluate, in the source's order (`fields`: --task-fields, engine.tasks.task_reading)."""
    wanted: dict[str, str] | None = None
    if task_ids:
        wanted = {alias: w for w in read_task_ids(task_ids) for alias in _matches(w)}
    tasks: list[Task] = []
    found: set[str] = set()
    for task in iter_tasks(src, fields):
        if wanted is not None:
            if task.task_id not in wanted:
                continue
            found.add(wanted[task.task_id])
        if not task.has_tests:
            raise UsageError(f"{task.source}: task {task.task_id!r} has no tests; eval needs tests to score")
        tasks.append(task)
        if limit is not None and len(tasks) >= limit:
            break
    if wanted is not None and limit is None:
        missing = sorted(set(wanted.values()) - found)
        if missing:
            raise UsageError(f"--task-ids: {len(missing)} id(s) not in --tasks {src}: {', '.join(missing[:5])}"
                             + (" ..." if len(missing) > 5 else ""))
    if not tasks:
        raise UsageError(f"--tasks {src}: no tasks selected")
    return tasks


def tasks_digest(tasks: list[Task]) -> str:
    """What a rerun's task set must equal: ids, prompts and tests of every selected task."""
    h = hashlib.sha256()
    for t in tasks:
        for part in (t.task_id, t.prompt, t.setup_code, t.test_program, t.visible_tests):
            h.update(part.encode())
            h.update(b"\0")
    return h.hexdigest()
