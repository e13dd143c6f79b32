"""Execution time limits per task, calibrated on the task's own reference solution.

    limits = TimeLimits(sandbox, TimeLimitConfig(cap_s=10.0), cache=out / "work" / "time-limits.jsonl")
    result = await limits.run(task, program)      # ExecResult, under the task's limit

A task with a reference and tests is calibrated once per machine: its reference program (setup,
reference, the task's tests) runs in the sandbox and its CPU seconds are measured. Every program
of that task then gets `min(cap, max(floor, factor x reference))` seconds of CPU time, with a
wall-clock backstop (`runtime.sandbox.wall_backstop`) for programs that sleep or block. CPU time,
unlike wall time, does not grow when the machine is loaded, so a busy machine does not turn a
correct program into a timeout; a looping one is stopped after about `floor` seconds of CPU
instead of `cap` seconds of waiting.

A task without a reference (or whose reference does not pass its own tests) keeps the fixed
wall-clock limit `cap`, as does every task with mode "fixed".

Cache: one JSON line per calibrated program, keyed by the sha256 of the reference program and a
machine id (host, CPU model, Python), appended with one write; a torn last line is ignored. A
rerun in the same directory measures nothing twice.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from persd.config import opt, positive_float
from persd.engine.tasks import Task

if TYPE_CHECKING:
    from persd.runtime.interfaces import Sandbox

MODES = ("calibrated", "fixed")
DEFAULT_FACTOR = 20.0
DEFAULT_FLOOR_S = 0.5


@dataclass
class TimeLimitFields:
    """The time-limit options collect, eval and check share (with their own exec timeout as the cap)."""

    time_limits: str = opt("calibrated", help="calibrated: a task with a reference runs under max(--min-time-limit, "
                           "--time-limit-factor x the reference's CPU time) of CPU time, at most the timeout; "
                           "fixed: the timeout in wall-clock seconds for every task", changes_results=True,
                           choices=MODES, group="time limits")
    time_limit_factor: float = opt(DEFAULT_FACTOR, help="calibrated limits: multiple of the reference's CPU time",
                                   changes_results=True, type=positive_float, group="time limits")
    min_time_limit: float = opt(DEFAULT_FLOOR_S, help="calibrated limits: fewest CPU seconds any task gets",
                                changes_results=True, type=positive_float, group="time limits")


@dataclass
class TimeLimitConfig:
    mode: str = "calibrated"  # calibrated | fixed
    factor: float = DEFAULT_FACTOR  # CPU limit = factor x the reference's CPU seconds ...
    floor_s: float = DEFAULT_FLOOR_S  # ... but never below this many CPU seconds ...
    cap_s: float = 10.0  # ... nor above this (--sandbox.timeout-s); also the fixed wall-clock limit
    repeats: int = 3  # reference runs when its cost matters (near or above floor / factor)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"time limit mode must be one of {', '.join(MODES)}, not {self.mode!r}")

    def fingerprint(self) -> dict:
        """What alters results (a sample near its limit may pass or time out)."""
        if self.mode == "fixed":
            return {"time_limits": "fixed"}
        return {"time_limits": "calibrated", "time_limit_factor": self.factor, "min_time_limit": self.floor_s}


@dataclass(frozen=True)
class Limit:
    """The limit one task's programs run under."""

    cpu_s: float | None  # CPU seconds; None: the fixed wall-clock limit only
    wall_s: float | None  # wall-clock seconds; None: the sandbox's backstop for cpu_s
    reference_cpu_s: float | None = None  # what the reference spent, when calibrated
    source: str = "fixed"  # fixed | reference | no reference | reference failed


CALIBRATED_WORKERS_PER_CORE = 2  # measured: benchmarks/timeouts_cpu2_2026-12-02.md


def workers_per_core(mode: str) -> int:
    """Default sandbox workers per core: 2 when limits count CPU time (a loaded machine cannot fail a
    correct program, and a sleeping one holds no core), 1 with fixed wall-clock limits."""
    return CALIBRATED_WORKERS_PER_CORE if mode == "calibrated" else 1


def config_from(cfg: TimeLimitFields, cap_s: float | None = None) -> TimeLimitConfig:
    """The TimeLimitConfig of a command's config (TimeLimitFields; the cap is its sandbox's timeout)."""
    return TimeLimitConfig(mode=cfg.time_limits, factor=cfg.time_limit_factor, floor_s=cfg.min_time_limit,
                           cap_s=cap_s if cap_s is not None else cfg.sandbox.timeout_s)


def user_cache() -> Path:
    """`persd check`'s calibration cache (it has no run directory): $PERSD_CACHE_DIR, else the user's cache
    folder ($XDG_CACHE_HOME or ~/.cache)/persd; keyed by program and machine, so any run may share it."""
    base = os.environ.get("PERSD_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "persd")
    return Path(base).expanduser() / "time-limits.jsonl"


def machine_id() -> str:
    """Which machine a measurement belongs to: host, CPU model, core count, interpreter."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    parts = [platform.node(), platform.machine(), cpu, str(os.cpu_count()), platform.python_implementation(),
             platform.python_version()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class TimeLimits:
    """Per-task limits for one run: calibrated lazily (the first program of a task waits for its
    reference's measurement; the task's other programs wait for the same one), or ahead, in the
    background, from `measure_soon` (a flow calls it before the student's request, while the sandbox
    would be idle): the task's first check then rarely waits for it."""

    def __init__(self, sandbox: Sandbox, config: TimeLimitConfig, cache: Path | None = None):
        self.sandbox = sandbox
        self.config = config
        self.cache_path = Path(cache) if cache is not None else None
        self.machine = machine_id()
        self._costs: dict[str, dict] = {}  # key -> cached measurement
        self._locks: dict[str, asyncio.Lock] = {}
        self.calibrations = 0  # references measured by this process
        self.calibration_runs = 0  # sandbox executions spent on it
        self._ahead: set[asyncio.Task] = set()  # measurements started by measure_soon, not finished
        self._load()

    # ------------------------------------------------------------ cache

    def _load(self) -> None:
        if self.cache_path is None or not self.cache_path.exists():
            return
        with open(self.cache_path, "rb") as fh:
            for raw in fh:
                try:
                    row = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue  # a line torn by a kill
                if isinstance(row, dict) and row.get("machine") == self.machine and "key" in row:
                    self._costs[row["key"]] = row

    def _save(self, row: dict) -> None:
        self._costs[row["key"]] = row
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_path, "ab") as fh:
            fh.write(orjson.dumps(row) + b"\n")

    # ------------------------------------------------------------ limits

    def fixed(self, source: str = "fixed") -> Limit:
        return Limit(cpu_s=None, wall_s=self.config.cap_s, source=source)

    def from_cost(self, cost_s: float) -> Limit:
        cfg = self.config
        cpu = min(cfg.cap_s, max(cfg.floor_s, cfg.factor * cost_s))
        return Limit(cpu_s=round(cpu, 4), wall_s=None, reference_cpu_s=cost_s, source="reference")

    def _calibrated(self, task: Task) -> bool:
        return self.config.mode != "fixed" and bool(task.reference) and task.has_tests

    @staticmethod
    def _key(program: str) -> str:
        return hashlib.sha256(program.encode()).hexdigest()[:32]

    def measure_soon(self, task: Task) -> None:
        """Start measuring `task`'s reference now, in the background, unless it is known or under way. A
        failure there is left for the task's own check to meet (it measures again and reports it)."""
        if not self._calibrated(task):
            return
        program = task.program(task.reference)
        key = self._key(program)
        if key in self._costs or key in self._locks:
            return
        ahead = asyncio.ensure_future(self._measured(task, program, key))
        self._ahead.add(ahead)
        ahead.add_done_callback(self._ahead_done)

    def _ahead_done(self, ahead: asyncio.Task) -> None:
        self._ahead.discard(ahead)
        if not ahead.cancelled():
            ahead.exception()  # retrieved: the task's own check measures again and meets it there

    async def close(self) -> None:
        """Stop the measurements still under way (the run is ending)."""
        for ahead in list(self._ahead):
            ahead.cancel()
        await asyncio.gather(*self._ahead, return_exceptions=True)

    async def limit_for(self, task: Task) -> Limit:
        if self.config.mode == "fixed":
            return self.fixed()
        if not self._calibrated(task):
            return self.fixed("no reference")
        program = task.program(task.reference)
        key = self._key(program)
        row = self._costs.get(key) or await self._measured(task, program, key)
        if row["status"] != "passed":
            return self.fixed("reference failed")
        return self.from_cost(float(row["cpu_s"]))

    async def _measured(self, task: Task, program: str, key: str) -> dict:
        """The reference's measurement: from the cache, from a measurement under way, or measured now."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            row = self._costs.get(key)
            if row is None:
                row = await self._calibrate(task, program, key)
                self._save(row)
        self._locks.pop(key, None)
        return row

    async def _calibrate(self, task: Task, program: str, key: str) -> dict:
        """Run the reference under the cap (CPU), once where the floor decides the limit anyway,
        else `repeats` times, keeping the largest cost (a margin against noise, never a squeeze)."""
        cfg = self.config
        runs: list[float] = []
        status, feedback = "passed", ""
        for _ in range(max(1, cfg.repeats)):
            result = await self.sandbox.run(program, cpu_limit=cfg.cap_s)
            self.calibration_runs += 1
            if result.status != "passed":
                status, feedback = result.status, result.feedback[:300]
                break
            runs.append(float(getattr(result, "cpu_s", 0.0) or 0.0))
            if cfg.factor * max(runs) < cfg.floor_s / 2:  # far below the floor: noise cannot matter
                break
        self.calibrations += 1
        row = {"key": key, "machine": self.machine, "task_id": task.task_id, "status": status,
               "cpu_s": max(runs) if runs else None, "runs": [round(r, 5) for r in runs]}
        if feedback:
            row["feedback"] = feedback
        return row

    # ------------------------------------------------------------ running

    async def run(self, task: Task, program: str):
        """`program` (one of `task`'s) in the sandbox under the task's limit."""
        limit = await self.limit_for(task)
        if limit.cpu_s is None:
            return await self.sandbox.run(program, timeout=limit.wall_s)
        return await self.sandbox.run(program, cpu_limit=limit.cpu_s)


def limit_fields(result) -> dict:
    """The result-line fields of one execution: its CPU seconds and, on a timeout, the limit that
    stopped it ("cpu" or "wall") and its value."""
    return {"cpu_s": round(float(getattr(result, "cpu_s", 0.0) or 0.0), 4),
            "limit": getattr(result, "limit", None), "limit_s": getattr(result, "limit_s", None)}


__all__ = ["MODES", "DEFAULT_FACTOR", "DEFAULT_FLOOR_S", "TimeLimitConfig", "Limit", "TimeLimits", "config_from",
           "workers_per_core",
           "machine_id",
           "limit_fields"]
