"""`persd check`: functional correctness of samples (or of the tasks' own references) in the sandbox."""
from __future__ import annotations

import asyncio
import collections
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson
from persd import config
from persd.config import Command, load, nonneg_int, opt, positive_float, positive_int
from persd.engine.aio import run_async
from persd.engine.rundirs.files import atomic_write
from persd.engine.tasks import Task, TaskSourceFields, iter_tasks, json_problem, task_reading
from persd.engine.timelimits import (
    TimeLimitConfig,
    TimeLimitFields,
    TimeLimits,
    config_from,
    limit_fields,
    user_cache,
    workers_per_core,
)
from persd.runtime.errors import ConfigError, InputError, UsageError
from persd.runtime.sandbox import STATUSES, Sandbox, SandboxConfig


@dataclass(frozen=True)
class Sample:
    index: int
    task_id: str
    program: str
    error: str = ""  # set when the sample cannot be judged at all (its task has no tests)
    task: Task | None = None  # its task, whose reference calibrates the time limit


NO_TESTS = "the task has no tests: nothing can be checked (never a pass)"


@dataclass
class CheckConfig(TimeLimitFields, TaskSourceFields):
    tasks: str = opt("", help="tasks: JSONL, parquet, a saved dataset, hf:NAME or a built-in set (humaneval, mbpp)",
                     changes_results=True,
                     shown="required")
    samples: str | None = opt(None, help="JSONL of task_id + completion (appended to the prompt) or solution "
                                         "(whole program)", changes_results=True, metavar="FILE")
    references: bool = opt(False, help="check the tasks' own reference solutions", changes_results=True)
    out: str = opt("", help="results JSONL, one line per sample", changes_results=False, shown="required")
    workers: int = opt(0, help="sandbox workers", changes_results=False, type=nonneg_int,
                       shown="two per core with calibrated time limits, one with fixed")
    timeout: float = opt(10.0, help="seconds per execution: the wall-clock limit of a task without a reference, "
                         "the most CPU time a calibrated one gets", changes_results=True, type=positive_float)
    memory_mb: int = opt(2048, help="address-space limit per execution, in MiB", changes_results=True,
                         type=positive_int)
    limit: int | None = opt(None, help="check only the first N samples", changes_results=True, type=positive_int,
                            shown="all")

    def validate(self) -> None:
        for name in ("tasks", "out"):
            if not getattr(self, name):
                raise ConfigError(name, "required (persd check --help)")
        if bool(self.samples) == self.references:
            raise ConfigError("samples", "give exactly one of --samples FILE or --references")


CHECK = Command(CheckConfig, "check", description=__doc__)


def build_parser():
    return config.build_parser(CHECK)


def parse_args(argv: list[str]) -> CheckConfig:
    return load(CHECK, argv)


def reference_samples(tasks: dict[str, Task]) -> Iterator[Sample]:
    for i, task in enumerate(t for t in tasks.values() if t.reference and t.has_tests):
        yield Sample(i, task.task_id, task.program(task.reference), task=task)


def file_samples(path: str, tasks: dict[str, Task]) -> Iterator[Sample]:
    if not Path(path).is_file():
        raise UsageError(f"--samples: no such file: {path}")
    with open(path, "rb") as fh:
        index = 0
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InputError(path, lineno, json_problem(exc)) from None
            if not isinstance(obj, dict):
                raise InputError(path, lineno, "expected a JSON object")
            tid = obj.get("task_id")
            if tid is None:
                raise InputError(path, lineno, "missing", field="task_id")
            task = tasks.get(str(tid))
            if task is None and isinstance(tid, int):  # MBPP's own integer ids
                task = tasks.get(f"MBPP/{tid}")
            if task is None:
                raise InputError(path, lineno, f"unknown task id {tid!r} (not in --tasks)", field="task_id")
            if isinstance(obj.get("solution"), str):
                program = task.program(obj["solution"])
            elif isinstance(obj.get("completion"), str):
                program = task.program(task.prompt + obj["completion"])
            else:
                raise InputError(path, lineno, "needs a string 'completion' or 'solution'", field="completion")
            yield Sample(index, task.task_id, program, "" if task.has_tests else NO_TESTS, task=task)
            index += 1


async def check_all(samples: list[Sample], config: SandboxConfig, out_path: Path,
                    limits: TimeLimitConfig | None = None) -> dict:
    """Run every sample; write results in sample order; return the summary. Time limits: `limits`
    (calibrated per task by default; its measurements are cached per machine: timelimits.user_cache())."""
    limits = limits or TimeLimitConfig(cap_s=config.timeout_s)
    counts: collections.Counter[str] = collections.Counter()
    stopped_by: collections.Counter[str] = collections.Counter()
    results: list[dict | None] = [None] * len(samples)
    async with Sandbox(config) as sandbox:
        print(f"sandbox: {config.worker_count()} workers; protections: {'; '.join(sandbox.protections)}",
              file=sys.stderr)
        time_limits = TimeLimits(sandbox, limits, cache=user_cache())
        start = time.perf_counter()

        async def one(sample: Sample) -> None:
            if sample.error:
                counts["error"] += 1
                results[sample.index] = {"task_id": sample.task_id, "status": "error", "passed": False,
                                         "error": sample.error, "duration_s": 0.0, "cpu_s": 0.0, "limit": None,
                                         "limit_s": None}
                return
            if sample.task is not None:
                r = await time_limits.run(sample.task, sample.program)
            else:
                r = await sandbox.run(sample.program)
            counts[r.status] += 1
            if r.status == "timeout":
                stopped_by[r.limit or "wall"] += 1
            results[sample.index] = {"task_id": sample.task_id, "status": r.status, "passed": r.passed,
                                     "error": r.feedback, "duration_s": round(r.duration_s, 4), **limit_fields(r)}

        # The pool queues work itself; a bounded window keeps memory flat for large sample files.
        window = max(8, config.worker_count() * 4)
        pending: set[asyncio.Task] = set()
        for sample in samples:
            if len(pending) >= window:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending.add(asyncio.create_task(one(sample)))
        if pending:
            await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
    # the temporary file lives beside the output (nothing left outside it), one per process
    atomic_write(out_path, b"".join(orjson.dumps(row) + b"\n" for row in results))
    total = len(samples)
    return {
        "samples": total,
        "passed": counts["passed"],
        "pass_rate": counts["passed"] / total if total else 0.0,
        "counts": {s: counts[s] for s in STATUSES},
        "seconds": elapsed,
        "executions_per_s": total / elapsed if elapsed else 0.0,
        "timeouts_by_limit": dict(stopped_by),
        "time_limits": describe(limits, time_limits.calibrations),
    }


def describe(limits: TimeLimitConfig, measured: int) -> str:
    if limits.mode == "fixed":
        return f"fixed: {limits.cap_s:g} s of wall-clock time per execution"
    return (f"calibrated: {limits.factor:g}x each reference's CPU time, at least {limits.floor_s:g} s, at most "
            f"{limits.cap_s:g} s ({measured} references measured now; tasks without one: {limits.cap_s:g} s wall)")


def print_summary(summary: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="persd check")
    table.add_column("samples", justify="right")
    table.add_column("pass rate", justify="right")
    for status in STATUSES:
        table.add_column(status, justify="right")
    table.add_column("exec/s", justify="right")
    table.add_row(str(summary["samples"]), f"{summary['pass_rate']:.1%}",
                  *(str(summary["counts"][s]) for s in STATUSES), f"{summary['executions_per_s']:.0f}")
    console = Console()
    console.print(table)
    by_limit = ", ".join(f"{n} by the {k} limit" for k, n in sorted(summary["timeouts_by_limit"].items()))
    console.print(f"time limits: {summary['time_limits']}" + (f"; timeouts: {by_limit}" if by_limit else ""))
    console.print(f"results: {out}")


def check_out_path(out: str) -> None:
    """--out is a file to write: refuse a directory, or a path under a file, before any work."""
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a directory; --out names the results file (e.g. {path / 'results.jsonl'})")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is a file, not a directory")
            break


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    check_out_path(args.out)
    tasks = {t.task_id: t for t in iter_tasks(args.tasks, task_reading(args))}
    samples_iter = reference_samples(tasks) if args.references else file_samples(args.samples, tasks)
    samples = []
    for sample in samples_iter:
        if args.limit is not None and len(samples) >= args.limit:
            break
        samples.append(sample)
    if not samples:
        raise UsageError("nothing to check: no samples"
                         + (" (no task has a reference and tests)" if args.references else ""))
    sandbox_config = SandboxConfig(workers=args.workers, timeout_s=args.timeout, memory_mb=args.memory_mb,
                                   per_core=workers_per_core(args.time_limits))
    summary = run_async(check_all(samples, sandbox_config, Path(args.out), config_from(args, cap_s=args.timeout)))
    print_summary(summary, args.out)
    return 0
