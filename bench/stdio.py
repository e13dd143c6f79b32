"""`persd bench sandbox --kind stdio`: stdin/stdout tasks judged per second, all tests of a task in one sandbox
execution against one execution per test.

Tasks: `--tasks` synthetic problems of `--tests` tests each (sum of a line of integers, the mean of some
floats, words reversed: small programs like most competitive-programming references). Two program sets:
the references (every test passes) and a wrong set (wrong from test 6 on: the first failure stops the task).

Methods, same tasks, same concurrency (one per worker):
- batched: `Task.program` as collect and eval run it: the judge runs every test in one execution;
- one execution per test: the same judge given one test at a time (a task's tests in turn, stopping at the
  first failure), i.e. one sandbox execution and one solution process per test;
- fresh python per test: a new interpreter per test, the input on its stdin, its stdout compared.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from persd.config import parser_for
from persd.engine.aio import run_async
from persd.runtime.sandbox import Sandbox, SandboxConfig
from persd.runtime.sandbox.judge import compare
from persd.runtime.sandbox.programs import stdio_program

KINDS = [
    ("n = int(input())\nprint(sum(map(int, input().split())))\n",
     "n = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs) + (1 if n > 5 else 0))\n",
     lambda k: (f"{k + 1}\n{' '.join(str(j * 7 - k) for j in range(k + 1))}\n",
                f"{sum(j * 7 - k for j in range(k + 1))}\n")),
    ("import sys\nxs = [float(t) for t in sys.stdin.read().split()]\nprint(sum(xs) / len(xs))\n",
     "import sys\nxs = [float(t) for t in sys.stdin.read().split()]\nprint(sum(xs) / len(xs) + (len(xs) > 6))\n",
     lambda k: (" ".join(str(j / 3) for j in range(1, k + 2)) + "\n",
                f"{sum(j / 3 for j in range(1, k + 2)) / (k + 1)}\n")),
    ("import sys\nfor line in sys.stdin:\n    print(' '.join(reversed(line.split())))\n",
     "import sys\nlines = sys.stdin.read().split('\\n')\nfor line in lines[:6]:\n"
     "    print(' '.join(reversed(line.split())))\n",
     lambda k: ("".join(f"w{j} x{j} y{k}\n" for j in range(k + 1)),
                "".join(f"y{k} x{j} w{j}\n" for j in range(k + 1)))),
]


def cpu_seconds() -> float:
    """CPU of this process and every reaped descendant (a pool's workers count once it is closed)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Row:
    programs: str
    method: str
    tasks: int
    executions: int
    passed: int
    seconds: float
    tasks_per_s: float
    cpu_ms_per_task: float


def task_set(n: int, tests: int) -> list[tuple[str, str, list[tuple[str, str]]]]:
    out = []
    for i in range(n):
        right, wrong, make = KINDS[i % len(KINDS)]
        out.append((right, wrong, [make(k + i % 3) for k in range(tests)]))
    return out


async def batched(sb: Sandbox, tasks, which: int) -> tuple[int, int]:
    results = await asyncio.gather(*(sb.run(stdio_program(t[which], t[2])) for t in tasks))
    return sum(r.passed for r in results), len(tasks)


async def per_test(sb: Sandbox, tasks, which: int) -> tuple[int, int]:
    async def one(t) -> tuple[bool, int]:
        for k, case in enumerate(t[2]):
            r = await sb.run(stdio_program(t[which], [case]))
            if not r.passed:
                return False, k + 1
        return True, len(t[2])

    done = await asyncio.gather(*(one(t) for t in tasks))
    return sum(ok for ok, _ in done), sum(n for _, n in done)


async def fresh_python(workers: int, tasks, which: int, timeout: float) -> tuple[int, int]:
    limiter = asyncio.Semaphore(workers)

    async def one(t) -> tuple[bool, int]:
        for k, (inp, exp) in enumerate(t[2]):
            async with limiter:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", t[which], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL)
                try:
                    out, _ = await asyncio.wait_for(proc.communicate(inp.encode()), timeout)
                except asyncio.TimeoutError:
                    proc.kill()
                    await proc.wait()
                    return False, k + 1
            if proc.returncode != 0 or compare(out.decode(), exp) is not None:
                return False, k + 1
        return True, len(t[2])

    done = await asyncio.gather(*(one(t) for t in tasks))
    return sum(ok for ok, _ in done), sum(n for _, n in done)


async def measure(method: str, tasks, which: int, workers: int, timeout: float) -> tuple[int, int, float, float]:
    """(passed, executions, seconds, CPU seconds); a sandbox pool of its own, closed before the CPU is read
    (its workers' CPU counts once they are reaped)."""
    cpu0 = cpu_seconds()
    if method == "fresh python per test":
        t0 = time.perf_counter()
        passed, execs = await fresh_python(workers, tasks, which, timeout)
        seconds = time.perf_counter() - t0
    else:
        async with Sandbox(SandboxConfig(workers=workers, timeout_s=timeout)) as sb:
            await asyncio.gather(*(sb.run("pass") for _ in range(workers)))  # warm
            t0 = time.perf_counter()
            passed, execs = await (batched if method.startswith("batched") else per_test)(sb, tasks, which)
            seconds = time.perf_counter() - t0
    return passed, execs, seconds, cpu_seconds() - cpu0


METHODS = ("batched: one execution per task", "one sandbox execution per test", "fresh python per test")


async def bench(args: argparse.Namespace) -> list[Row]:
    workers = args.workers or (os.cpu_count() or 1)
    tasks = task_set(args.tasks, args.tests)
    rows: list[Row] = []
    for which, name in ((0, "references"), (1, "wrong from test 6")):
        for method in METHODS:
            passed, execs, seconds, cpu = await measure(method, tasks, which, workers, args.timeout)
            rows.append(Row(name, method, len(tasks), execs, passed, seconds, len(tasks) / seconds,
                            cpu / len(tasks) * 1000))
    return rows


def main(argv: list[str]) -> int:
    p = parser_for("bench sandbox --kind stdio", description=__doc__)
    p.add_argument("--workers", type=int, default=0, help="sandbox workers and concurrency (default: one per core)")
    p.add_argument("--tasks", type=int, default=120, help="stdin/stdout tasks (default 120)")
    p.add_argument("--tests", type=int, default=10, help="tests per task (default 10)")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--out", default="runs/bench/sandbox-stdio.json")
    args = p.parse_args(argv)
    rows = run_async(bench(args))

    from rich.console import Console
    from rich.table import Table

    workers = args.workers or os.cpu_count()
    table = Table(title=f"stdin/stdout tasks of {args.tests} tests ({workers} workers, {os.cpu_count()} cores, "
                        f"load {os.getloadavg()[0]:.1f})")
    for col in ("programs", "method", "tasks", "executions", "passed", "seconds", "tasks/s", "CPU ms/task"):
        table.add_column(col, justify="left" if col in ("programs", "method") else "right")
    for r in rows:
        table.add_row(r.programs, r.method, str(r.tasks), str(r.executions), str(r.passed), f"{r.seconds:.2f}",
                      f"{r.tasks_per_s:.1f}", f"{r.cpu_ms_per_task:.1f}")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    speedups = {}
    for name in dict.fromkeys(r.programs for r in rows):
        ours, per, fresh = [r for r in rows if r.programs == name]
        speedups[name] = {"vs_one_execution_per_test": ours.tasks_per_s / per.tasks_per_s,
                          "vs_fresh_python_per_test": ours.tasks_per_s / fresh.tasks_per_s}
        console.print(f"{name}: batched {speedups[name]['vs_one_execution_per_test']:.1f}x one execution per test, "
                      f"{speedups[name]['vs_fresh_python_per_test']:.1f}x a fresh python per test")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({"rows": [asdict(r) for r in rows], "speedup": speedups, "cores": os.cpu_count(),
                                  "workers": workers, "tests_per_task": args.tests,
                                  "load": os.getloadavg()}, option=orjson.OPT_INDENT_2))
    console.print(f"written: {out}")
    return 0
