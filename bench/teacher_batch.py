"""`persd bench teacher --mode batch`: the Batch API teacher against the sync client (issue 23's measure).

N failing tasks' refinement requests (the engine's own prompt: task, student code, error; a few hundred
tokens each) go through `BatchTeacher` to the local server's Batch API, which completes each batch
`--batch-delay` seconds after it is created; then, in the same run and against the same server, the same
requests through the sync `TeacherClient` (unlimited unless `--rpm`/`--tpm` are given). Both price their
answers from the same table (`--model`'s entry) and journal them as the engine does.

Reported: teacher cost batch/sync (from each client's metrics), lines the server received across
all uploaded batch files per task and the number of files and batches, batch wall time minus the
server's delay (the client's own overhead: collecting, uploading, polling, reading, journaling),
the sync wall time, and this process's RSS while the N requests wait on their batch. The server runs
in a child process (as in `--peer curator`), so the RSS is the client's own and the two do not share an
event loop; its counters come back over a pipe, its timestamps on the same monotonic clock.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
from persd.bench.served import ServedChild, stdin_lines
from persd.engine import lessons
from persd.engine.aio import run_async
from persd.engine.tasks import Task
from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig
from persd.runtime.teacher.batch import BatchTeacher
from persd.runtime.teacher.local_batch import BatchPlan
from persd.runtime.teacher.pricing import PriceTable
from rich.console import Console
from rich.table import Table

OUT = Path("runs/bench/teacher-batch.json")
WORDS = ("list of integers string return the number of elements sorted order each pair whose sum index "
         "first last value given positive negative empty count distinct maximum minimum characters").split()
ERRORS = ("AssertionError", "IndexError: list index out of range", "TypeError: 'NoneType' object is not iterable",
          "KeyError: 0", "ZeroDivisionError: division by zero", "RecursionError: maximum recursion depth exceeded")


# ------------------------------------------------------------------ the requests and the teacher's answers


def make_requests(n: int, seed: int, max_tokens: int = 1024) -> list[ChatRequest]:
    """One first refinement turn per failing task, built by the engine's own `lessons.refine_messages`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name = f"solve_{i}"
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90)))
        header = f"def {name}(items: list[int], k: int) -> int:\n"
        task = Task(task_id=f"bench/{i}", shape="generic",
                    instruction=f"Write a function `{name}` that, for a {words}.", prompt=header,
                    header=header, entry_point=name, test_program="")
        body = "\n".join(f"    {rng.choice(('total', 'best', 'seen', 'j'))} = "
                         f"{rng.choice(('items[k]', 'sorted(items)', 'len(items) - k', 'k * 2', 'None'))}"
                         for _ in range(rng.randint(6, 16)))
        attempt = f"{header}{body}\n    return total\n"
        failing = rng.randint(1, 20)
        feedback = (f"Traceback (most recent call last):\n  File \"test.py\", line {failing + 3}, in <module>\n"
                    f"    assert {name}([{', '.join(str(rng.randint(-9, 99)) for _ in range(6))}], {failing}) == "
                    f"{rng.randint(0, 50)}\n{rng.choice(ERRORS)}")
        out.append(ChatRequest(messages=lessons.refine_messages(task, attempt, feedback), temperature=0.0,
                               max_tokens=max_tokens))
    return out


def responder(body: dict) -> str:
    """The teacher's corrected program: depends on the request only, so both modes answer the same tokens."""
    text = body["messages"][-1]["content"]
    start = text.index("def solve_")
    name = text[start + 4: text.index("(", start)]
    return (f"```python\ndef {name}(items: list[int], k: int) -> int:\n    seen = set()\n    count = 0\n"
            "    for x in items:\n        if k - x in seen:\n            count += 1\n        seen.add(x)\n"
            "    return count\n```")


@dataclass
class Watch:
    """When the server answered its first and last batch line (the bench's responder notes it)."""

    first: float | None = None
    last: float | None = None
    calls: int = 0

    def __call__(self, body: dict) -> str:
        now = time.monotonic()
        self.first = now if self.first is None else self.first
        self.last, self.calls = now, self.calls + 1
        return responder(body)


@dataclass
class Memory:
    """RSS samples of this process (psutil) while a phase runs."""

    before: int = 0
    peak: int = 0
    waiting: int | None = None  # once every request of the batch phase is at the server, waiting

    def sample(self) -> int:
        rss = psutil.Process().memory_info().rss
        self.peak = max(self.peak, rss)
        return rss


async def sample_until(memory: Memory, done: asyncio.Future, waiting=None, every_s: float = 0.02) -> None:
    """Samples RSS until `done`; the first sample at which `waiting()` holds is kept as `memory.waiting`."""
    while not done.done():
        rss = memory.sample()
        if memory.waiting is None and waiting is not None and waiting():
            memory.waiting = rss
        await asyncio.sleep(every_s)


# ------------------------------------------------------------------ the server, in a child process

SERVER_FLAGS = ("rpm", "tpm", "window", "limit_mode", "p_429", "p_5xx", "retry_after_ms", "latency", "seed",
                "batch_delay")


def server_for(spec: dict, watch: Watch) -> LocalOpenAIServer:
    half = spec["p_5xx"] / 2
    plan = FaultPlan(p_429=spec["p_429"], p_500=half, p_503=half, retry_after_s=spec["retry_after_ms"] / 1000,
                     seed=spec["seed"])
    return LocalOpenAIServer(watch, rpm=spec["rpm"], tpm=spec["tpm"], window_s=spec["window"],
                             limit_mode=spec["limit_mode"], faults=plan, latency_s=spec["latency"], record=False,
                             batch=BatchPlan(delay_s=spec["batch_delay"]))


def server_stats(server: LocalOpenAIServer, watch: Watch) -> dict:
    """What the server received: input files (every file no batch wrote), their lines, batches, chat posts."""
    api = server.batch
    assert api is not None
    written = {f for b in api.batches.values() for f in (b.output_file_id, b.error_file_id) if f}
    inputs = [data for fid, data in api.files.items() if fid not in written]
    return {"files_uploaded": len(inputs), "upload_bytes": sum(map(len, inputs)),
            "lines_uploaded": sum(1 for data in inputs for line in data.splitlines() if line.strip()),
            "lines_accepted": sum(api.lines_received.values()), "batches": len(api.batches),
            "posts": len(server.log), "first_line_at": watch.first, "last_line_at": watch.last}


def served(args: argparse.Namespace) -> ServedChild:
    """The bench's server in a child process (bench/served.py); `ask("stats")` reads its counters."""
    return ServedChild("persd.bench.teacher_batch", "serve", json.dumps({k: getattr(args, k) for k in SERVER_FLAGS}))


async def serve(spec: dict) -> None:
    """Child side of `served`: print the URL, then one line of counters per line read, until stdin closes."""
    watch = Watch()
    async with server_for(spec, watch) as server:
        print(server.base_url, flush=True)
        async for _ in stdin_lines():
            print(json.dumps(server_stats(server, watch)), flush=True)


# ------------------------------------------------------------------ the two phases


def teacher_config(args: argparse.Namespace, url: str, journal: Path) -> TeacherConfig:
    # unlimited sync: a pace far above what the server can answer (the server then has no limits either)
    return TeacherConfig(base_url=url, model=args.model, rpm=args.rpm or 1e9, tpm=args.tpm,
                         max_in_flight=args.max_in_flight, limit_window_s=args.window, journal_path=journal,
                         retry=RetryPolicy(base_delay_s=0.05))


async def run_batch(args: argparse.Namespace, server: ServedChild, requests: list[ChatRequest], work: Path) -> dict:
    memory = Memory()
    files = math.ceil(len(requests) / args.batch_max_requests)
    async with BatchTeacher(teacher_config(args, server.url, work / "batch.journal.jsonl"), work / "batches.jsonl",
                            max_requests=args.batch_max_requests, flush_s=args.batch_flush_s) as teacher:
        memory.before = memory.sample()
        t0 = time.monotonic()
        calls = [asyncio.ensure_future(teacher.chat(r)) for r in requests]
        answered_at: list[float] = []
        for call in calls:
            call.add_done_callback(lambda _: answered_at.append(time.monotonic()))
        await asyncio.sleep(0)  # every call has run up to its wait: its request is enqueued
        if args.batch_flush == "all-waiting":
            teacher.flush()  # every task waits on the teacher: close the file now (the engine's rule)
        everything = asyncio.gather(*calls, return_exceptions=True)
        sampler = asyncio.ensure_future(sample_until(
            memory, everything, waiting=lambda: len(teacher.submitted) >= files and not answered_at))
        results = await everything
        wall = time.monotonic() - t0
        await sampler
        metrics = teacher.metrics
    seen = await server.ask("stats")
    failed = sum(isinstance(r, BaseException) for r in results)
    first, last = seen["first_line_at"], seen["last_line_at"]
    row = {
        "client": "batch", "requests": len(requests), "answered": len(results) - failed, "failed": failed,
        "wall_s": round(wall, 3), "server_delay_s": args.batch_delay,
        "overhead_s": round(wall - args.batch_delay, 3),
        # the breakdown: until the server began answering (less its delay), the server answering, after it
        "submit_s": round(first - t0 - args.batch_delay, 3) if first is not None else None,
        "server_answering_s": round(last - first, 3) if first is not None else None,
        "after_last_answer_s": round(t0 + wall - last, 3) if last is not None else None,
        # of which: until the client's first caller had its answer (the poll's lag, the download), then the rest
        "until_first_caller_s": round(min(answered_at) - last, 3) if answered_at and last is not None else None,
        "first_to_last_caller_s": round(max(answered_at) - min(answered_at), 3) if answered_at else None,
        "files_uploaded": seen["files_uploaded"], "batches": seen["batches"],
        "lines_uploaded": seen["lines_uploaded"], "lines_accepted": seen["lines_accepted"],
        "requests_per_task": round(seen["lines_uploaded"] / len(requests), 6),
        "tokens_in": metrics.tokens_in, "tokens_out": metrics.tokens_out, "cost_usd": metrics.cost_usd,
        "rss_before_mb": _mb(memory.before), "uploaded_mb": _mb(seen["upload_bytes"]),
        "rss_waiting_mb": _mb(memory.waiting) if memory.waiting is not None else None,
        "rss_peak_mb": _mb(memory.peak),
        # what each waiting request holds in the client (the requests themselves were built before)
        "client_bytes_per_request": round((memory.waiting - memory.before) / len(requests))
        if memory.waiting is not None else None,
    }
    return row


async def run_sync(args: argparse.Namespace, server: ServedChild, requests: list[ChatRequest], work: Path) -> dict:
    memory = Memory()
    posts = (await server.ask("stats"))["posts"]
    async with TeacherClient(teacher_config(args, server.url, work / "sync.journal.jsonl")) as teacher:
        memory.before = memory.sample()
        t0 = time.monotonic()
        everything = asyncio.gather(*(teacher.chat(r) for r in requests), return_exceptions=True)
        sampler = asyncio.ensure_future(sample_until(memory, everything))
        results = await everything
        wall = time.monotonic() - t0
        await sampler
        metrics = teacher.metrics
    failed = sum(isinstance(r, BaseException) for r in results)
    sent = (await server.ask("stats"))["posts"] - posts
    return {
        "client": "sync", "requests": len(requests), "answered": len(results) - failed, "failed": failed,
        "wall_s": round(wall, 3), "attempts": sent, "requests_per_task": round(sent / len(requests), 6),
        "tokens_in": metrics.tokens_in, "tokens_out": metrics.tokens_out, "cost_usd": metrics.cost_usd,
        "rss_before_mb": _mb(memory.before), "rss_peak_mb": _mb(memory.peak),
    }


def _mb(n: int) -> float:
    return round(n / 2**20, 2)


def _or_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


async def run(args: argparse.Namespace) -> tuple[dict, dict]:
    requests = make_requests(args.n, args.seed)
    with tempfile.TemporaryDirectory(prefix="persd-bench-batch-") as tmp:
        async with served(args) as server:
            batch = await run_batch(args, server, requests, Path(tmp))  # first: its peak RSS is its own
            sync = await run_sync(args, server, requests, Path(tmp))
    return batch, sync


# ------------------------------------------------------------------ report


def show(batch: dict, sync: dict, targets: dict, args: argparse.Namespace) -> None:
    limits = "unlimited" if args.rpm is None and args.tpm is None else f"{args.rpm} RPM / {args.tpm} TPM"
    table = Table(title=f"teacher batch vs sync: {args.n} refinement requests, {args.model}, batches complete "
                        f"{args.batch_delay:g} s after creation; sync {limits}, {args.latency * 1000:g} ms per answer")
    for col in ("client", "cost $", "cost / sync", "sent per task", "files", "batches", "wall s", "overhead s",
                "peak RSS MB", "waiting RSS MB", "client B/request", "answered", "failed"):
        table.add_column(col, justify="left" if col == "client" else "right")
    table.add_row("batch", f"{batch['cost_usd']:.4f}", f"{targets['cost_ratio']:.4f}",
                  f"{batch['requests_per_task']:g}", str(batch["files_uploaded"]), str(batch["batches"]),
                  f"{batch['wall_s']:.2f}", f"{batch['overhead_s']:.2f}", f"{batch['rss_peak_mb']:.1f}",
                  _or_dash(batch["rss_waiting_mb"]), _or_dash(batch["client_bytes_per_request"]),
                  str(batch["answered"]), str(batch["failed"]))
    table.add_row("sync", f"{sync['cost_usd']:.4f}", "1", f"{sync['requests_per_task']:g}", "-", "-",
                  f"{sync['wall_s']:.2f}", "-", f"{sync['rss_peak_mb']:.1f}", "-", "-", str(sync["answered"]),
                  str(sync["failed"]))
    console = Console(width=170)
    console.print(table)
    console.print(f"batch overhead {batch['overhead_s']:.2f} s = submit {batch['submit_s']} s + server answering "
                  f"{batch['server_answering_s']} s + after its last answer {batch['after_last_answer_s']} s "
                  f"(until the first caller is answered {batch['until_first_caller_s']} s: the poll, backing off "
                  f"from 0.05 s by 1.5x, and the download; first to last caller {batch['first_to_last_caller_s']} s)")
    if not targets["met"]:
        console.print(f"[red]targets missed: {', '.join(targets['missed'])}[/red]")


def main(args: argparse.Namespace) -> int:
    batch, sync = run_async(run(args))
    ratio = batch["cost_usd"] / sync["cost_usd"] if sync["cost_usd"] else float("nan")
    price = PriceTable().lookup(args.model)
    missed = [name for name, ok in (("cost_ratio <= 0.5", round(ratio, 9) <= 0.5),
                                    ("requests_per_task == 1.0", batch["requests_per_task"] == 1.0),
                                    ("every request answered", batch["failed"] == sync["failed"] == 0))
              if not ok]
    targets = {"cost_ratio": round(ratio, 9), "cost_ratio_max": 0.5, "requests_per_task_target": 1.0,
               "met": not missed, "missed": missed}
    show(batch, sync, targets, args)
    out = args.out if args.out != Path("runs/bench/teacher.json") else OUT
    limits = "unlimited" if args.rpm is None and args.tpm is None else {"rpm": args.rpm, "tpm": args.tpm}
    report = {"bench": "teacher-batch",
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "price_per_1m_tokens": list(price) if price else None,
              "sync_limits": limits,
              "results": [batch, sync], "targets": targets}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # the server child: python -m persd.bench.teacher_batch serve SPEC_JSON
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        run_async(serve(json.loads(sys.argv[2])))
