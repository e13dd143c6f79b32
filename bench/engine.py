"""`persd bench engine`: is collect as fast as its slowest resource, and what does it cost by itself?

1. Capacity run. Backends of known capacity: a student server answering each request after
   `--student-latency` seconds with at most `--student-concurrency` requests at once, a teacher
   server enforcing `--rpm` (the client paces at the same RPM), and the real sandbox. The same
   work is done twice: by `persd collect` (one streaming engine) and phase by phase (all student
   attempts, then all executions, then all teacher calls, then all verifications, as the
   reference implementation does). Both are compared with the theoretical bound: the slowest
   resource's total busy time (student: ceil(tasks / concurrency) x latency; teacher: calls x
   60 / rpm; sandbox: executions / its measured throughput).
2. Orchestration: instant in-process backends (bench/instant.py), 20k tasks, one core: tasks/s.
3. Memory: peak RSS of the same run at 1k and at 20k tasks (separate processes).

Prints a table and writes JSON (default runs/bench/engine.json).
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from persd.config import parser_for
from persd.engine.aio import run_async

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ capacity-limited servers


def write_tasks(path: Path, n: int) -> Path:
    with open(path, "wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({
                "task_id": f"double/{i}", "instruction": f"Return twice the argument (variant {i}).",
                "header": f"def f_{i}(x):\n", "entry_point": f"f_{i}",
                "tests": [f"assert f_{i}(1) == 2", f"assert f_{i}(5) == 10"],
            }) + b"\n")
    return path


def _num(text: str) -> int:
    import re

    m = re.search(r"def f_(\d+)\(", text)
    return int(m.group(1)) if m else 0


class StudentServer:
    """OpenAI-compatible completions: each request takes `latency` seconds, at most `concurrency` at once.
    Right for every third task."""

    def __init__(self, latency: float, concurrency: int):
        self.latency, self.concurrency = latency, concurrency
        self.requests = 0
        self.url = ""

    async def start(self) -> str:
        from aiohttp import web

        sem = asyncio.Semaphore(self.concurrency)

        async def completions(request):
            body = orjson.loads(await request.read())
            async with sem:
                await asyncio.sleep(self.latency)
            self.requests += 1
            text = body.get("prompt") or body["messages"][-1]["content"]
            i = _num(text)
            reply = "    return x * 2\n" if i % 3 == 0 else "    return x + 2\n"
            n = int(body.get("n", 1))
            return web.Response(body=orjson.dumps({
                "id": "x", "object": "text_completion", "model": body.get("model"),
                "choices": [{"index": k, "text": reply, "finish_reason": "stop"} for k in range(n)],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5 * n}}), content_type="application/json")

        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()


def teacher_answer(body: dict) -> str:
    i = _num(body["messages"][1]["content"])
    return f"```python\ndef f_{i}(x):\n    return x * 2\n```"


async def sandbox_throughput(workers: int, tasks_file: Path, n: int = 200) -> float:
    """Executions per second of the real sandbox on this benchmark's programs."""
    from persd.engine.tasks import iter_tasks
    from persd.runtime.sandbox import Sandbox, SandboxConfig

    tasks = [t for _, t in zip(range(n), iter_tasks(tasks_file))]
    async with Sandbox(SandboxConfig(workers=workers, timeout_s=10)) as sb:
        await asyncio.gather(*(sb.run(t.program(f"def {t.entry_point}(x):\n    return x * 2\n"))
                               for t in tasks[:workers * 4]))
        t0 = time.perf_counter()
        await asyncio.gather(*(sb.run(t.program(f"def {t.entry_point}(x):\n    return x + {k % 3}\n"))
                               for k, t in enumerate(tasks)))
        return len(tasks) / (time.perf_counter() - t0)


async def run_engine(args, tasks_file: Path, work: Path) -> dict:
    from persd.engine.collect.config import parse_args
    from persd.engine.collect.runner import Collector
    from persd.runtime.local_server import LocalOpenAIServer

    student = StudentServer(args.student_latency, args.student_concurrency)
    teacher = LocalOpenAIServer(teacher_answer, rpm=args.rpm, window_s=args.window)
    await student.start()
    await teacher.start()
    try:
        cfg = parse_args([
            "--tasks", str(tasks_file), "--out", str(work / "engine"), "--student.backend", "openai",
            "--student.url", student.url, "--student.model", "bench-student", "--teacher.base-url", teacher.base_url,
            "--teacher.model", "bench-teacher", "--teacher.rpm", str(args.rpm), "--teacher.tpm", "100000000",
            "--sandbox.workers", str(args.workers), "--max-in-flight", "512", "--student.max-concurrency", "256",
            "--teacher.max-in-flight", "256", "--progress", "none", "--shard-size", "100"], environ={})
        t0 = time.perf_counter()
        collector = Collector(cfg, install_signals=False)
        rc = await collector.run()
        total = time.perf_counter() - t0
        assert rc == 0
        wall = collector.work_ended - collector.work_started  # like the phases: backends already up
    finally:
        await student.stop()
        await teacher.stop()
    res = [orjson.loads(x) for p in sorted((work / "engine" / "shards").glob("*.results.jsonl"))
           for x in p.read_bytes().splitlines()]
    calls = sum(r["teacher_calls"] for r in res)
    execs = len(res) + calls
    return {"wall_s": wall, "wall_with_startup_s": total, "teacher_calls": calls, "executions": execs,
            "refined": sum(r["outcome"] == "refined" for r in res)}


async def run_phases(args, tasks_file: Path, work: Path) -> dict:
    """The same work as manual phases, with the same backends and the engine's own prompts."""
    from persd.engine import lessons
    from persd.engine.collect.config import CollectConfig
    from persd.engine.collect.studentio import extract, student_request
    from persd.engine.tasks import iter_tasks
    from persd.runtime.local_server import LocalOpenAIServer
    from persd.runtime.sandbox import Sandbox, SandboxConfig
    from persd.runtime.student import StudentConfig, create_student
    from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig

    student_srv = StudentServer(args.student_latency, args.student_concurrency)
    teacher_srv = LocalOpenAIServer(teacher_answer, rpm=args.rpm, window_s=args.window)
    await student_srv.start()
    await teacher_srv.start()
    cfg = CollectConfig(tasks=str(tasks_file), out=str(work / "phases"), student=StudentConfig(model="bench-student"))
    tasks = list(iter_tasks(tasks_file))
    phases = {}
    try:
        async with Sandbox(SandboxConfig(workers=args.workers, timeout_s=10)) as sb, \
                TeacherClient(TeacherConfig(base_url=teacher_srv.base_url, model="bench-teacher", rpm=args.rpm,
                                            tpm=100_000_000, max_in_flight=256,
                                            journal_path=work / "phases-journal.jsonl")) as teacher, \
                create_student(StudentConfig(backend="openai", model="bench-student", url=student_srv.url,
                                             max_concurrency=256)) as student:
            t = time.perf_counter()
            outs = await asyncio.gather(*(student.generate(student_request(task, cfg, 0)) for task in tasks))
            phases["student"] = time.perf_counter() - t
            programs = [extract(task, o.texts[0], False) for task, o in zip(tasks, outs)]
            t = time.perf_counter()
            results = await asyncio.gather(*(sb.run(task.program(p)) for task, p in zip(tasks, programs)))
            phases["execute"] = time.perf_counter() - t
            failed = [(task, p, r) for task, p, r in zip(tasks, programs, results) if r.status != "passed"]
            t = time.perf_counter()
            answers = await asyncio.gather(*(teacher.chat(ChatRequest(
                messages=lessons.refine_messages(task, p, r.feedback), temperature=0.0, max_tokens=1024))
                for task, p, r in failed))
            phases["teacher"] = time.perf_counter() - t
            t = time.perf_counter()
            verified = await asyncio.gather(*(sb.run(task.program(extract(task, a.texts[0], True)))
                                              for (task, _, _), a in zip(failed, answers)))
            phases["verify"] = time.perf_counter() - t
    finally:
        await student_srv.stop()
        await teacher_srv.stop()
    return {"wall_s": sum(phases.values()), "phases": phases, "teacher_calls": len(failed),
            "refined": sum(v.status == "passed" for v in verified)}


# ------------------------------------------------------------------ instant backends (child processes)


def instant_child(n: int, work: Path, one_core: bool) -> dict:
    """Run collect on `n` synthetic tasks with instant backends in this process; report speed and peak RSS."""
    if one_core and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import shutil

    from persd.bench.instant import instant_backends, write_synthetic_tasks
    from persd.engine.collect.config import parse_args
    from persd.engine.collect.runner import Collector

    shutil.rmtree(work / f"instant-{n}", ignore_errors=True)
    tasks = write_synthetic_tasks(work / f"synthetic-{n}.jsonl", n)
    cfg = parse_args(["--tasks", str(tasks), "--out", str(work / f"instant-{n}"), "--student.model", "instant",
                      "--teacher.base-url", "http://127.0.0.1:9/v1", "--progress", "none", "--shard-size", "500"],
                     environ={})
    t0 = time.perf_counter()
    rc = run_async(Collector(cfg, open_backends=instant_backends, install_signals=False).run())
    wall = time.perf_counter() - t0
    return {"tasks": n, "rc": rc, "wall_s": wall, "tasks_per_s": n / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn_instant(n: int, work: Path, one_core: bool = True) -> dict:
    cmd = [sys.executable, "-m", "persd.bench.engine", "--child-instant", str(n), "--work", str(work)]
    if not one_core:
        cmd.append("--all-cores")
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"instant child failed: {out.stderr[-2000:]}")
    return orjson.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ main


def main(argv: list[str]) -> int:
    p = parser_for("bench engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=240, help="tasks in the capacity run (default 240)")
    p.add_argument("--student-latency", type=float, default=0.25, help="seconds per student request (default 0.25)")
    p.add_argument("--student-concurrency", type=int, default=8, help="student requests at once (default 8)")
    p.add_argument("--rpm", type=float, default=0,
                   help="teacher RPM (default: so the teacher's time equals the student's)")
    p.add_argument("--window", type=float, default=1.0, help="the teacher server's limit window in seconds (default 1)")
    p.add_argument("--workers", type=int, default=0, help="sandbox workers (default: one per core)")
    p.add_argument("--instant-tasks", type=int, default=20_000, help="tasks in the orchestration run (default 20000)")
    p.add_argument("--memory-small", type=int, default=1_000,
                   help="the small run of the memory comparison (default 1000)")
    p.add_argument("--skip-capacity", action="store_true")
    p.add_argument("--out", default="runs/bench/engine.json")
    p.add_argument("--child-instant", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--all-cores", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_instant:
        print(orjson.dumps(instant_child(args.child_instant, Path(args.work), not args.all_cores)).decode())
        return 0
    args.workers = args.workers or os.cpu_count() or 1
    student_time = math.ceil(args.tasks / args.student_concurrency) * args.student_latency
    expected_calls = args.tasks - len(range(0, args.tasks, 3))
    if not args.rpm:
        args.rpm = round(expected_calls * 60 / student_time)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))
    report: dict = {"cores": os.cpu_count(), "args": {k: v for k, v in vars(args).items() if not k.startswith("child")}}
    with tempfile.TemporaryDirectory(prefix="persd-bench-engine-") as tmp:
        work = Path(tmp)
        if not args.skip_capacity:
            tasks_file = write_tasks(work / "tasks.jsonl", args.tasks)
            sb_rate = run_async(sandbox_throughput(args.workers, tasks_file))
            eng = run_async(run_engine(args, tasks_file, work))
            ph = run_async(run_phases(args, tasks_file, work))
            bound = {
                "student": student_time,
                "teacher": eng["teacher_calls"] * 60 / args.rpm,
                "sandbox": eng["executions"] / sb_rate,
            }
            slowest = max(bound, key=bound.get)
            report["capacity"] = {
                "bound_s": bound, "slowest": slowest, "sandbox_exec_per_s": sb_rate, "engine": eng, "phases": ph,
                "engine_over_bound": eng["wall_s"] / bound[slowest], "speedup_vs_phases": ph["wall_s"] / eng["wall_s"],
            }
            t = Table(title=f"collect vs its bound and vs phase by phase "
                            f"({args.tasks} tasks, {args.workers} sandbox workers)")
            for col in ("run", "wall s", "vs bound", "notes"):
                t.add_column(col, justify="left" if col in ("run", "notes") else "right")
            t.add_row("bound (slowest resource)", f"{bound[slowest]:.2f}", "1.00x",
                      ", ".join(f"{k} {v:.2f}s" for k, v in bound.items()))
            t.add_row("persd collect (streaming)", f"{eng['wall_s']:.2f}", f"{eng['wall_s'] / bound[slowest]:.2f}x",
                      f"{eng['teacher_calls']} teacher calls, {eng['executions']} executions")
            t.add_row("phase by phase", f"{ph['wall_s']:.2f}", f"{ph['wall_s'] / bound[slowest]:.2f}x",
                      ", ".join(f"{k} {v:.2f}s" for k, v in ph["phases"].items()))
            console.print(t)
            console.print(f"streaming is {ph['wall_s'] / eng['wall_s']:.2f}x faster than phase by phase; "
                          f"{100 * (eng['wall_s'] / bound[slowest] - 1):.1f}% over the bound")
        big = spawn_instant(args.instant_tasks, work)
        small = spawn_instant(args.memory_small, work)
        report["instant"] = {"large": big, "small": small, "rss_ratio": big["peak_rss_mb"] / small["peak_rss_mb"]}
        t = Table(title="instant backends, one core")
        for col in ("tasks", "wall s", "tasks/s", "peak RSS MB"):
            t.add_column(col, justify="right")
        for r in (small, big):
            t.add_row(str(r["tasks"]), f"{r['wall_s']:.2f}", f"{r['tasks_per_s']:.0f}", f"{r['peak_rss_mb']:.1f}")
        console.print(t)
        console.print(f"peak memory at {args.instant_tasks} tasks is "
                      f"{100 * (report['instant']['rss_ratio'] - 1):+.1f}% "
                      f"of that at {args.memory_small}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    console.print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
