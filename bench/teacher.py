"""`persd bench teacher`: the teacher client against a rate-limited, faulty local server.

N requests against a local OpenAI-compatible server limited to R RPM and T TPM (enforced over
`--window` seconds), with injected 429s (`--p-429`, Retry-After `--retry-after-ms`) and 5xx
(`--p-5xx`). Reports sustained throughput as a fraction of the limit and the 429s the client
provoked itself (the server's real limit refusals, not the injected ones), for persd's client
and, in the same run, a naive client (an asyncio.Semaphore with fixed-delay retries).
With `--peer curator`, a fixed set of scenarios against bespokelabs-curator instead
(`persd.bench.teacher_peer`). With `--mode batch`, the Batch API teacher against the sync client
(`persd.bench.teacher_batch`).
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

import aiohttp
import orjson
from persd.config import parser_for
from persd.engine.aio import run_async
from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig
from rich.console import Console
from rich.table import Table

_DEFAULTS = TeacherConfig()  # the bench's persd flags default to the teacher's own defaults
WORDS = "def return for while list dict sorted value index result check assert range yield".split()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = parser_for("bench teacher", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("sync", "batch"), default="sync",
                   help="sync: persd's client against a naive one; batch: the Batch API teacher against the sync "
                        "client, same requests and server (persd.bench.teacher_batch)")
    p.add_argument("--n", type=int, help="requests per client (default 600, batch mode 1000; with --peer, "
                                         "each scenario's own)")
    p.add_argument("--rpm", type=float, help="server limit, requests per minute (default 1200; batch mode: "
                                             "unlimited)")
    p.add_argument("--tpm", type=float, help="server limit, tokens per minute (default 240000; batch mode: "
                                             "unlimited)")
    p.add_argument("--window", type=float, default=1.0, help="seconds over which the server enforces limits")
    p.add_argument("--limit-mode", choices=("bucket", "sliding"), default="bucket")
    p.add_argument("--p-429", type=float, help="injected 429 rate (default 0.05; batch mode 0)")
    p.add_argument("--p-5xx", type=float, help="injected 500/503 rate (default 0.03; batch mode 0)")
    p.add_argument("--retry-after-ms", type=float, default=20, help="Retry-After of injected 429s")
    p.add_argument("--latency", type=float, default=0.05, help="server seconds per answer")
    p.add_argument("--max-in-flight", type=int, default=_DEFAULTS.max_in_flight)
    p.add_argument("--headroom", type=float, default=_DEFAULTS.headroom,
                   help="persd paces at this fraction of the limits")
    p.add_argument("--jitter", type=float, default=_DEFAULTS.jitter_s,
                   help="persd's network jitter allowance, seconds (its burst tolerance is "
                        "window * (1/headroom - 1) - jitter); persd is told the server's --window")
    p.add_argument("--naive-concurrency", type=int, default=64)
    p.add_argument("--naive-delay", type=float, default=1.0, help="naive client's fixed retry delay")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--peer", choices=("curator",),
                   help="run each --scenarios case with persd and this peer client (its own virtualenv, "
                        "created once under --peer-dir) against the same server, and print one table")
    p.add_argument("--scenarios", default="all", help="with --peer: comma list of ra0.1,ra0.5,ra2,burst,tpm,headers")
    p.add_argument("--peer-dir", type=Path, default=Path("runs/peers"), help="where peer virtualenvs are cached")
    p.add_argument("--model", default="gpt-4o-mini", help="batch mode: the teacher model, priced from the table")
    p.add_argument("--batch-delay", type=float, default=5.0,
                   help="batch mode: seconds the server takes to complete a batch")
    p.add_argument("--batch-max-requests", type=int, default=50_000, help="batch mode: requests per batch file")
    p.add_argument("--batch-flush-s", type=float, default=5.0, help="batch mode: seconds a file stays open")
    p.add_argument("--batch-flush", choices=("all-waiting", "timer"), default="all-waiting",
                   help="batch mode: close the file once every request waits (the engine's rule), or only by "
                        "size and --batch-flush-s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench/teacher.json"))
    args = p.parse_args(argv)
    batch = args.mode == "batch"
    if batch and args.peer:
        p.error("--mode batch and --peer are separate benches: give one")
    if args.n is None and not args.peer:
        args.n = 1000 if batch else 600
    if not batch:  # sync mode's defaults (the batch bench's sync baseline runs unlimited and fault-free)
        args.rpm = 1200 if args.rpm is None else args.rpm
        args.tpm = 240_000 if args.tpm is None else args.tpm
    args.p_429 = (0.0 if batch else 0.05) if args.p_429 is None else args.p_429
    args.p_5xx = (0.0 if batch else 0.03) if args.p_5xx is None else args.p_5xx
    if batch:
        from persd.runtime.teacher.pricing import PriceTable
        if PriceTable().lookup(args.model) is None:
            p.error(f"--model {args.model}: not in the price table, so both costs would be 0 (give a priced model)")
    if batch and (args.batch_delay < 0 or args.batch_max_requests < 1 or args.batch_flush_s <= 0):
        p.error("--batch-delay must not be negative, --batch-max-requests and --batch-flush-s must be positive")
    if (args.n is not None and args.n < 1) or (args.rpm is not None and args.rpm <= 0) \
            or (args.tpm is not None and args.tpm <= 0) or args.window <= 0:
        p.error("--n, --rpm, --tpm and --window must be positive")
    if args.peer:
        from persd.bench.teacher_peer import parse_scenarios
        try:
            parse_scenarios(args.scenarios)
        except ValueError as exc:
            p.error(str(exc))
    elif args.scenarios != "all":
        p.error("--scenarios needs --peer")
    return args


def make_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"task {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) for i in range(n)]


def responder(body: dict) -> str:
    return "x = 1\n" * 60  # ~90 tokens


def server_for(args: argparse.Namespace) -> LocalOpenAIServer:
    half = args.p_5xx / 2
    plan = FaultPlan(p_429=args.p_429, p_500=half, p_503=half, retry_after_s=args.retry_after_ms / 1000,
                     seed=args.seed)
    return LocalOpenAIServer(responder, rpm=args.rpm, tpm=args.tpm, window_s=args.window,
                             limit_mode=args.limit_mode, faults=plan, latency_s=args.latency)


async def run_persd(args: argparse.Namespace, prompts: list[str]) -> dict:
    async with server_for(args) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=args.rpm, tpm=args.tpm,
                            max_in_flight=args.max_in_flight, headroom=args.headroom,
                            limit_window_s=args.window, jitter_s=args.jitter,
                            retry=RetryPolicy(base_delay_s=0.05))
        async with TeacherClient(cfg) as teacher:
            t0 = time.monotonic()
            results = await asyncio.gather(*(teacher.chat(ChatRequest(messages=[{"role": "user", "content": p}],
                                                                      max_tokens=150)) for p in prompts),
                                           return_exceptions=True)
            wall = time.monotonic() - t0
            snap = teacher.metrics.snapshot()
        failed = sum(isinstance(r, BaseException) for r in results)
        return summarise("persd", args, server, wall, len(results) - failed, failed,
                         retries=sum(snap["retries_by_cause"].values()))


async def run_naive(args: argparse.Namespace, prompts: list[str]) -> dict:
    """What many scripts do: a semaphore, no pacing, a fixed pause before each retry."""
    async with server_for(args) as server:
        gate = asyncio.Semaphore(args.naive_concurrency)
        url = server.base_url + "/chat/completions"
        retries = 0

        async def one(session: aiohttp.ClientSession, prompt: str) -> bool:
            nonlocal retries
            body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}],
                                 "max_tokens": 150})
            async with gate:
                for _ in range(100):
                    try:
                        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                            data = await r.read()
                            if r.status == 200 and orjson.loads(data).get("choices"):
                                return True
                    except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError):
                        pass
                    retries += 1
                    await asyncio.sleep(args.naive_delay)
            return False

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.naive_concurrency)) as session:
            t0 = time.monotonic()
            ok = await asyncio.gather(*(one(session, p) for p in prompts))
            wall = time.monotonic() - t0
        return summarise("naive", args, server, wall, sum(ok), len(ok) - sum(ok), retries=retries)


def summarise(name: str, args: argparse.Namespace, server: LocalOpenAIServer, wall: float,
              done: int, failed: int, retries: int) -> dict:
    answered = server.answered
    tokens = sum(a.tokens for a in answered)
    rpm = done / wall * 60
    tpm = tokens / wall * 60
    most_req, most_tok = server.max_in_window()
    admitted = [a.t for a in server.log if a.admitted]
    span = admitted[-1] - admitted[0] if len(admitted) > 1 else 0.0
    sustained = (len(admitted) - 1) / span * 60 if span > 0 else 0.0
    return {
        "client": name, "requests": args.n, "answered": done, "failed": failed, "wall_s": round(wall, 2),
        "rpm_achieved": round(rpm, 1), "rpm_fraction": round(rpm / args.rpm, 4),
        "tpm_achieved": round(tpm, 1), "tpm_fraction": round(tpm / args.tpm, 4),
        "limit_fraction": round(max(rpm / args.rpm, tpm / args.tpm), 4),
        "sustained_rpm": round(sustained, 1), "sustained_fraction": round(sustained / args.rpm, 4),
        "attempts": len(server.log), "retries": retries,
        "self_429": server.stats["rate_limited"],
        "self_429_pct": round(100 * server.stats["rate_limited"] / args.n, 2),
        "injected_429": server.stats["429"], "injected_5xx": server.stats["500"] + server.stats["503"],
        "max_requests_in_window": most_req, "window_request_limit": args.rpm * args.window / 60,
        "max_tokens_in_window": most_tok, "window_token_limit": args.tpm * args.window / 60,
    }


def show(rows: list[dict], args: argparse.Namespace) -> None:
    table = Table(title=f"teacher: {args.n} requests, {args.rpm:g} RPM / {args.tpm:g} TPM over {args.window:g}s "
                        f"windows ({args.limit_mode}), {args.p_429:.0%} 429 + {args.p_5xx:.0%} 5xx injected")
    for col in ("client", "wall s", "RPM", "% of RPM", "sustained % of RPM", "% of TPM", "self 429s", "self 429 %",
                "retries", "answered", "failed"):
        table.add_column(col, justify="right" if col != "client" else "left")
    for r in rows:
        table.add_row(r["client"], f"{r['wall_s']:.1f}", f"{r['rpm_achieved']:.0f}", f"{100 * r['rpm_fraction']:.1f}",
                      f"{100 * r['sustained_fraction']:.1f}",
                      f"{100 * r['tpm_fraction']:.1f}", str(r["self_429"]), f"{r['self_429_pct']:.2f}",
                      str(r["retries"]), str(r["answered"]), str(r["failed"]))
    Console(width=150).print(table)


async def run(args: argparse.Namespace) -> list[dict]:
    prompts = make_prompts(args.n, args.seed)
    rows = [await run_persd(args, prompts)]
    if not args.skip_naive:
        rows.append(await run_naive(args, prompts))
    return rows


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.peer:
        from persd.bench import teacher_peer
        return teacher_peer.main(args)
    if args.mode == "batch":
        from persd.bench import teacher_batch
        return teacher_batch.main(args)
    rows = run_async(run(args))
    show(rows, args)
    persd = rows[0]
    report = {"bench": "teacher", "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "results": rows,
              "targets": {"sustained_fraction_min": 0.95, "self_429_pct_max": 1.0,
                          "met": persd["sustained_fraction"] >= 0.95 and persd["self_429_pct"] < 1.0}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"wrote {args.out}")
    return 0
