"""`persd bench sandbox`: executions/s and CPU per check, persd's sandbox against a naive baseline.

--kind python (default): both run the same programs (HumanEval's references, and a wrong set: every task
with the next task's body) at the same concurrency. The baseline starts a fresh `python` subprocess per
check, as many harnesses do.

--kind stdio: stdin/stdout tasks of 10 tests each (bench/stdio.py): every test of a task in one sandbox
execution (the judge, first failure reported) against one sandbox execution per test, and against a fresh
`python` per test fed the input on stdin; the same tasks, the same concurrency.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from persd.config import parser_for
from persd.engine.aio import run_async
from persd.engine.tasks import Task, iter_tasks
from persd.runtime.sandbox import Sandbox, SandboxConfig


@dataclass
class Row:
    programs: str
    method: str
    executions: int
    passed: int
    seconds: float
    exec_per_s: float
    cpu_ms_per_check: float


def cpu_seconds() -> float:
    """CPU of this process and every reaped descendant (workers are reaped when the pool closes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def program_sets(tasks: list[Task]) -> dict[str, list[str]]:
    right = [t.program(t.reference) for t in tasks]
    wrong = []
    for i, t in enumerate(tasks):
        other = tasks[(i + 1) % len(tasks)]
        wrong.append(t.program(t.prompt + other.reference[len(other.prompt):]))
    return {"humaneval references": right, "humaneval wrong set": wrong}


async def run_persd(programs: list[str], workers: int, timeout: float) -> tuple[int, float, float]:
    cpu0 = cpu_seconds()
    async with Sandbox(SandboxConfig(workers=workers, timeout_s=timeout)) as sandbox:
        await asyncio.gather(*(sandbox.run("pass") for _ in range(workers)))  # warm
        start = time.perf_counter()
        results = await asyncio.gather(*(sandbox.run(p) for p in programs))
        elapsed = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0
    return sum(r.passed for r in results), elapsed, cpu


async def run_naive(programs: list[str], workers: int, timeout: float) -> tuple[int, float, float]:
    """One fresh interpreter per check; exit status 0 means passed."""
    limiter = asyncio.Semaphore(workers)
    tmp = Path(tempfile.mkdtemp(prefix="persd-naive-"))

    async def one(i: int, program: str) -> bool:
        path = tmp / f"p{i}.py"
        path.write_text(program)
        async with limiter:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(path), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd=tmp)
            try:
                return await asyncio.wait_for(proc.wait(), timeout) == 0
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                return False

    cpu0 = cpu_seconds()
    start = time.perf_counter()
    passed = await asyncio.gather(*(one(i, p) for i, p in enumerate(programs)))
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return sum(passed), elapsed, cpu


async def bench(args: argparse.Namespace) -> list[Row]:
    tasks = list(iter_tasks("humaneval"))
    workers = args.workers or (os.cpu_count() or 1)
    rows = []
    for name, programs in program_sets(tasks).items():
        many = programs * args.repeat
        for method, runner, progs in (("persd sandbox", run_persd, many),
                                      ("naive: fresh python per check", run_naive, programs)):
            passed, seconds, cpu = await runner(progs, workers, args.timeout)
            rows.append(Row(name, method, len(progs), passed, seconds, len(progs) / seconds,
                            cpu / len(progs) * 1000))
    return rows


def main(argv: list[str]) -> int:
    if "--kind" in argv and argv[argv.index("--kind") + 1:][:1] == ["stdio"] or "--kind=stdio" in argv:
        from persd.bench import stdio

        return stdio.main([a for a in argv if a not in ("--kind", "stdio", "--kind=stdio")])
    p = parser_for("bench sandbox", description=__doc__)
    p.add_argument("--kind", choices=("python", "stdio"), default="python",
                   help="python: assert-style programs; stdio: stdin/stdout tasks, batched vs one process per test")
    p.add_argument("--workers", type=int, default=0, help="concurrency for both (default: one per core)")
    p.add_argument("--repeat", type=int, default=3, help="times the persd sandbox runs each set (default 3)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--out", default="runs/bench/sandbox.json")
    args = p.parse_args(argv)
    rows = run_async(bench(args))

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sandbox throughput ({args.workers or os.cpu_count()} workers, {os.cpu_count()} cores)")
    for col in ("programs", "method", "executions", "passed", "seconds", "exec/s", "CPU ms/check"):
        table.add_column(col, justify="left" if col in ("programs", "method") else "right")
    for r in rows:
        table.add_row(r.programs, r.method, str(r.executions), str(r.passed), f"{r.seconds:.2f}",
                      f"{r.exec_per_s:.0f}", f"{r.cpu_ms_per_check:.1f}")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    speedups = {}
    for name in dict.fromkeys(r.programs for r in rows):
        ours, naive = [r for r in rows if r.programs == name]
        speedups[name] = ours.exec_per_s / naive.exec_per_s
        console.print(f"{name}: {speedups[name]:.1f}x the naive baseline")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({"rows": [asdict(r) for r in rows], "speedup": speedups,
                                  "cores": os.cpu_count(), "workers": args.workers or os.cpu_count()},
                                 option=orjson.OPT_INDENT_2))
    console.print(f"written: {out}")
    return 0
