"""`persd bench eval`: samples/s of `persd eval` (generation and execution overlapped, task by task)
against the same evaluation done the common way: generate every sample first, then check them all.

Both modes run the same engine code (engine/evaluation: the same requests, extraction, sandbox and
journal) in one process, on one warm sandbox and one student; only the order of the work differs.

The default student is a scripted OpenAI-compatible server on 127.0.0.1 that stands in for a GPU
server: it answers HumanEval with the canonical body (even samples) or a wrong one (odd samples)
after a fixed latency per request, with at most --slots requests served at once (a continuous-
batching engine's batch), so generation costs wall time but no CPU here. Pass --student-backend and
--student-model (vllm or hf) or --student-url (openai) to measure a real student instead.
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
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
from persd.config import parser_for
from persd.engine.aio import run_async
from persd.engine.evaluation.config import EvalConfig
from persd.engine.evaluation.runner import evaluate, student_config
from persd.engine.tasks import iter_tasks
from persd.runtime.sandbox import Sandbox, SandboxConfig
from persd.runtime.student import StudentConfig


def build_parser() -> argparse.ArgumentParser:
    p = parser_for("bench eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="humaneval")
    p.add_argument("--limit", type=int, default=80, help="tasks (default 80)")
    p.add_argument("--n", type=int, default=5, help="samples per task (default 5)")
    p.add_argument("--refine-steps", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=400.0, help="scripted student: ms per request (default 400)")
    p.add_argument("--slots", type=int, default=8, help="scripted student: requests served at once (default 8)")
    p.add_argument("--student-backend", choices=("scripted", "vllm", "hf", "openai"), default="scripted")
    p.add_argument("--student-model")
    p.add_argument("--student-url")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-tokens", type=int, default=384)
    p.add_argument("--sandbox-workers", type=int, default=0, help="default: one per core")
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating (default 2)")
    p.add_argument("--json", default="runs/bench/eval.json", help="where to write the figures")
    return p


class ScriptedGPU:
    """A FakeOpenAIServer whose answers take `latency_s`, at most `slots` at a time: each request holds one of
    `slots` for `latency_s` before its choices are written (the server awaits an async reply)."""

    def __init__(self, tasks, latency_s: float, slots: int):
        from persd.runtime.local_server import FakeOpenAIServer

        bodies = {t.prompt: (t.reference or "")[len(t.prompt):] for t in tasks}
        gate = asyncio.Semaphore(slots)
        self.generating = self.peak_generating = self.generated = 0  # requests in a slot now / at most / in all

        async def reply(payload: dict, index: int) -> str:
            if index == 0:  # the request's first choice: the simulated GPU's time for the whole request
                async with gate:
                    self.generating += 1
                    self.generated += 1
                    self.peak_generating = max(self.peak_generating, self.generating)
                    try:
                        await asyncio.sleep(latency_s)
                    finally:
                        self.generating -= 1
            prompt = payload.get("prompt") or ""
            body = next((b for p, b in bodies.items() if prompt.endswith(p)), "    return None\n")
            return body if index % 2 == 0 or "### INCORRECT CODE" in prompt else "    return None\n"

        self.server = FakeOpenAIServer(reply=reply, record=False, model="scripted-gpu")

    async def __aenter__(self) -> str:
        return await self.server.start()

    async def __aexit__(self, *exc) -> None:
        await self.server.close()


@dataclass
class Row:
    mode: str
    run: int
    samples: int
    executions: int
    seconds: float
    samples_per_s: float
    pass_at_1: float
    final_pass_at_1: float


async def bench(args: argparse.Namespace) -> list[Row]:
    tasks = list(iter_tasks(args.tasks))[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="persd-bench-eval-"))
    cfg = EvalConfig(tasks=args.tasks, out="", limit=args.limit, n=args.n, temperature=args.temperature,
                     max_tokens=args.max_tokens, refine_steps=args.refine_steps, max_in_flight=args.max_in_flight,
                     progress="none", sandbox=SandboxConfig(workers=args.sandbox_workers),
                     student=StudentConfig(model=args.student_model, url=args.student_url,
                                           backend="auto" if args.student_backend == "scripted"
                                           else args.student_backend))
    rows: list[Row] = []
    async with contextlib.AsyncExitStack() as stack:
        if args.student_backend == "scripted":
            url = await stack.enter_async_context(ScriptedGPU(tasks, args.latency_ms / 1000, args.slots))
            cfg.student = StudentConfig(backend="openai", model="scripted-gpu", url=url)
        from persd.runtime.student import create_student

        sandbox = await stack.enter_async_context(
            Sandbox(cfg.sandbox))
        student = await stack.enter_async_context(create_student(student_config(cfg)))
        await evaluate(replace(cfg, out=str(work / "warm"), limit=2, n=1), student, sandbox)  # warm both
        for run in range(args.repeats):
            for mode in ("pipelined", "phased") if run % 2 == 0 else ("phased", "pipelined"):
                out = work / f"{mode}-{run}"
                t0 = time.perf_counter()
                summary = await evaluate(replace(cfg, out=str(out)), student, sandbox, mode=mode)
                seconds = time.perf_counter() - t0
                samples = summary["samples"]
                rows.append(Row(mode, run, samples, summary["run"]["executions"], round(seconds, 3),
                                round(samples / seconds, 2), round(summary["pass@1"], 4),
                                round(summary["steps"][-1]["pass@1"], 4)))
                print(f"{mode:>9} run {run}: {samples} samples in {seconds:.2f}s ({samples / seconds:.1f}/s)",
                      file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


def report(rows: list[Row], args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.table import Table

    best = {m: max((r for r in rows if r.mode == m), key=lambda r: r.samples_per_s) for m in ("pipelined", "phased")}
    speedup = best["pipelined"].samples_per_s / best["phased"].samples_per_s
    student = (f"scripted GPU stand-in ({args.latency_ms:g} ms/request, {args.slots} at once)"
               if args.student_backend == "scripted"
               else f"{args.student_backend} {args.student_model or args.student_url}")
    table = Table(title=f"persd bench eval: {args.tasks} x{args.limit} tasks, n={args.n}, refine steps "
                        f"{args.refine_steps}; student: {student}; {os.cpu_count()} CPUs")
    for col in ("mode", "run", "samples", "execs", "seconds", "samples/s", "pass@1", "final"):
        table.add_column(col, justify="right")
    for r in rows:
        label = "overlapped" if r.mode == "pipelined" else "gen, then check"
        table.add_row(label, str(r.run), str(r.samples), str(r.executions), f"{r.seconds:.2f}",
                      f"{r.samples_per_s:.1f}", f"{100 * r.pass_at_1:.1f}%", f"{100 * r.final_pass_at_1:.1f}%")
    console = Console()
    console.print(table)
    console.print(f"best of each: {best['pipelined'].samples_per_s:.1f} vs {best['phased'].samples_per_s:.1f} "
                  f"samples/s: x{speedup:.2f}")
    return {"bench": "eval", "args": vars(args), "cpus": os.cpu_count(), "student": student,
            "rows": [r.__dict__ for r in rows], "speedup": round(speedup, 3)}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    rows = run_async(bench(args))
    data = report(rows, args)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    print(f"figures: {path}")
    return 0
