"""Instant in-process backends: what the engine costs by itself (orchestration benchmarks,
the flat-memory test). Same interfaces as the real student, sandbox and teacher; no I/O.

Synthetic tasks ask for `solve(x)` to return its argument (task i tests `solve(i + 1)`). The
student answers correctly for a fixed fraction of tasks (by task number), the teacher always
does, and the sandbox passes a program exactly when it returns x. All tasks share one entry
point name, so per-name caches in extraction stay warm: the figure is the engine's own cost.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import orjson
from persd.engine.collect.flow import Backends


def write_synthetic_tasks(path: Path, count: int) -> Path:
    """`count` generic tasks with one assert each, one JSON line per task, written streaming."""
    with open(path, "wb") as fh:
        for i in range(count):
            fh.write(orjson.dumps({
                "task_id": f"synth/{i}",
                "instruction": f"Return the argument unchanged [task {i}].",
                "header": "def solve(x):\n",
                "entry_point": "solve",
                "tests": [f"assert solve({i + 1}) == {i + 1}"],
                "reference": "def solve(x):\n    return x\n",
            }) + b"\n")
    return path


class _Metrics:
    def __init__(self):
        self.requests = 0

    def snapshot(self) -> dict:
        return {"requests": self.requests, "http_429": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0,
                "rpm_now": 0, "rpm_limit": None, "tpm_now": 0, "tpm_limit": None}


@dataclass
class _Out:
    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False


class InstantStudent:
    """Passes every `1 / pass_every`-th task (by the number in its prompt's function name)."""

    def __init__(self, pass_every: int = 3):
        self.pass_every = pass_every
        self.requests = 0

    async def generate(self, req) -> _Out:
        self.requests += 1
        text = req.prompt if req.prompt is not None else req.messages[-1]["content"]
        tail = text.split("[task ", 1)[-1]
        num = int(tail.split("]", 1)[0]) if tail[:1].isdigit() else 0
        body = "    return x\n" if num % self.pass_every == 0 else "    return 0\n"
        n = req.params.n
        if req.prompt is None:
            body = f"```python\ndef solve(x):\n{body}```"
        return _Out([body] * n, ["stop"] * n, 10, 5 * n)


class InstantTeacher:
    def __init__(self):
        self.metrics = _Metrics()

    async def chat(self, req) -> _Out:
        self.metrics.requests += 1
        return _Out(["```python\ndef solve(x):\n    return x\n```"], ["stop"], 50, 12)


@dataclass
class _Exec:
    status: str
    feedback: str
    duration_s: float = 0.0
    stdout: str = ""


class _Cfg:
    def __init__(self, workers: int):
        self.workers = workers

    def worker_count(self) -> int:
        return self.workers


class InstantSandbox:
    def __init__(self, workers: int = 64):
        self.config = _Cfg(workers)
        self.runs = 0

    async def run(self, program: str, timeout: float | None = None, cpu_limit: float | None = None) -> _Exec:
        self.runs += 1
        if "return x\n" in program:
            return _Exec("passed", "")
        return _Exec("failed", "AssertionError: expected 1, got 0")


@contextlib.asynccontextmanager
async def instant_backends(cfg, collector) -> AsyncIterator[Backends]:
    yield Backends(student=InstantStudent(), sandbox=InstantSandbox(), teacher=InstantTeacher())
