"""`persd bench student`: throughput of the student backends, each against its own baseline.

- hf:     requests/s with dynamic batching (all requests in flight) against one request at a
          time, same backend, same model, same run.
- openai: requests/s the client issues against an instant local server in another process
          (target >= 1,000/s, so the client never holds back a vLLM server).
- vllm:   completion tokens/s through the backend (AsyncLLM, all requests in flight) against
          vLLM's own offline `LLM.generate` on the same prompts (target >= 90%).

Prints a table and writes JSON (default runs/bench/student.json). The model defaults to the
tiny random-weight model, written to a temporary directory.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from persd.config import parser_for
from persd.engine.aio import run_async
from persd.runtime.student import SamplingParams, StudentConfig, StudentRequest, create_student


@dataclass
class Result:
    name: str
    metric: str
    value: float
    baseline_name: str
    baseline: float
    ratio: float
    target: str
    ok: bool | None
    detail: dict[str, Any] = field(default_factory=dict)


def bench_prompts(count: int) -> list[str]:
    """Code-shaped prompts of varied length (a header and a docstring, as HumanEval's)."""
    words = "return the sorted list of unique values found in the input and ignore negative numbers".split()
    out = []
    for i in range(count):
        doc = " ".join(words[: 4 + i % len(words)])
        out.append(f"def task_{i}(values: list[int]) -> list[int]:\n    \"\"\"{doc.capitalize()}.\"\"\"\n")
    return out


# ------------------------------------------------------------------ hf


async def bench_hf(model: str, requests: int, max_tokens: int) -> Result:
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=max_tokens, seed=0)
    reqs = [StudentRequest(prompt=p, params=params) for p in bench_prompts(requests)]
    student = create_student(StudentConfig(backend="hf", model=model, max_batch_size=requests))
    async with student:
        await asyncio.gather(*(student.generate(r) for r in reqs[:4]))  # warm-up
        calls0 = student.stats.generate_calls
        t0 = time.perf_counter()
        batched = await asyncio.gather(*(student.generate(r) for r in reqs))
        t_batched = time.perf_counter() - t0
        calls = student.stats.generate_calls - calls0
        t0 = time.perf_counter()
        single = [await student.generate(r) for r in reqs]
        t_single = time.perf_counter() - t0
    rps_b, rps_s = requests / t_batched, requests / t_single
    return Result(
        "hf batching", "requests/s", rps_b, "one at a time", rps_s, rps_b / rps_s, "> 1x", rps_b > rps_s,
        {"requests": requests, "max_tokens": max_tokens, "generate_calls_batched": calls,
         "tokens_batched": sum(o.completion_tokens for o in batched),
         "tokens_single": sum(o.completion_tokens for o in single),
         "seconds_batched": t_batched, "seconds_single": t_single},
    )


# ------------------------------------------------------------------ openai client


async def _start_fake_server() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "persd.runtime.local_server", "--fake-student", "--port", "0",
        stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"the local server did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


async def bench_openai(requests: int, concurrency: int) -> Result:
    proc, url = await _start_fake_server()
    try:
        student = create_student(StudentConfig(backend="openai", url=url, model="fake-model",
                                               max_concurrency=concurrency))
        params = SamplingParams(max_tokens=64, temperature=0.2, stop=["\ndef "])
        prompts = bench_prompts(64)
        async with student:
            slots = asyncio.Semaphore(concurrency)  # the engine's own bound on requests in flight

            async def one(i: int) -> None:
                async with slots:
                    await student.generate(StudentRequest(prompt=prompts[i % 64], params=params))

            await asyncio.gather(*(one(i) for i in range(min(500, requests))))  # warm-up: open the pool
            t0, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(one(i) for i in range(requests)))
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        proc.terminate()
        await proc.wait()
    rps = requests / elapsed
    return Result("openai client", "requests/s", rps, "target", 1000.0, rps / 1000.0, ">= 1000/s", rps >= 1000,
                  {"requests": requests, "concurrency": concurrency, "seconds": elapsed,
                   "client_cpu_seconds": cpu, "requests_per_client_cpu_second": requests / cpu,
                   "retries": student.stats.retries})


# ------------------------------------------------------------------ vllm


def _vllm_config(model: str, max_model_len: int, kv_gib: float) -> StudentConfig:
    on_cpu = _no_gpu()
    return StudentConfig(backend="vllm", model=model, max_model_len=max_model_len, enforce_eager=on_cpu,
                         kv_cache_gib=kv_gib if on_cpu else None, max_concurrency=1024, seed=0)


def _no_gpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


async def _timed_backend(student: Any, prompts: list[str], params: SamplingParams) -> tuple[float, int]:
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(student.generate(StudentRequest(prompt=p, params=params)) for p in prompts))
    return time.perf_counter() - t0, sum(o.completion_tokens for o in outs)


def _timed_offline(llm: Any, prompts: list[str], params: SamplingParams) -> tuple[float, int]:
    from vllm import SamplingParams as VSamplingParams

    sp = VSamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                         max_tokens=params.max_tokens, seed=params.seed)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)  # blocks the loop: the backend is idle meanwhile
    return time.perf_counter() - t0, sum(len(c.token_ids) for o in outs for c in o.outputs)


async def bench_vllm(model: str, requests: int, max_tokens: int, kv_gib: float, rounds: int) -> Result:
    """Both engines stay up; timed runs alternate (backend, offline, offline, backend, ...) and
    the best of each counts, so load from elsewhere on the machine hits both alike."""
    from persd.runtime.student.vllm_backend import engine_args_kwargs
    from vllm import LLM

    cfg = _vllm_config(model, max_model_len=512, kv_gib=kv_gib)
    prompts = bench_prompts(requests)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=max_tokens, seed=0)
    warm = SamplingParams(temperature=0.8, max_tokens=8, seed=1)
    student = create_student(cfg)
    llm = None
    backend_runs: list[tuple[float, int]] = []
    offline_runs: list[tuple[float, int]] = []
    async with student:
        try:
            llm = LLM(disable_log_stats=True, **engine_args_kwargs(cfg))
            await _timed_backend(student, prompts[:32], warm)
            _timed_offline(llm, prompts[:32], warm)
            for i in range(rounds):  # B O O B B O ...: neither side always runs first
                if i % 2 == 0:
                    backend_runs.append(await _timed_backend(student, prompts, params))
                offline_runs.append(_timed_offline(llm, prompts, params))
                if i % 2 == 1:
                    backend_runs.append(await _timed_backend(student, prompts, params))
        finally:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None:
                core.shutdown()
    backend = max(tok / t for t, tok in backend_runs)
    offline = max(tok / t for t, tok in offline_runs)
    return Result("vllm backend", "tokens/s", backend, "offline LLM.generate", offline,
                  backend / offline, ">= 90%", backend / offline >= 0.9,
                  {"requests": requests, "max_tokens": max_tokens, "rounds": rounds,
                   "backend_runs_tokens_per_s": [tok / t for t, tok in backend_runs],
                   "offline_runs_tokens_per_s": [tok / t for t, tok in offline_runs],
                   "tokens_backend": backend_runs[-1][1], "tokens_offline": offline_runs[-1][1]})


# ------------------------------------------------------------------ main


def render(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="persd bench student")
    for col in ("benchmark", "metric", "value", "baseline", "baseline value", "ratio", "target", "ok"):
        table.add_column(col, justify="right" if col in ("value", "baseline value", "ratio") else "left")
    for r in results:
        ok = "-" if r.ok is None else ("yes" if r.ok else "NO")
        table.add_row(r.name, r.metric, f"{r.value:,.1f}", r.baseline_name, f"{r.baseline:,.1f}",
                      f"{r.ratio:.2f}x", r.target, ok)
    Console(width=None if sys.stdout.isatty() else 130).print(table)


async def run(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="persd-bench-") as tmp:
        model = args.model
        if not model:
            from persd.runtime.student.tiny_model import write_tiny_model

            model = str(write_tiny_model(Path(tmp) / "tiny", seed=0))
        if not args.skip_hf:
            results.append(await bench_hf(model, args.hf_requests, args.hf_max_tokens))
            print(f"hf: {results[-1].value:.1f} req/s batched vs {results[-1].baseline:.1f} one at a time", flush=True)
        if not args.skip_openai:
            results.append(await bench_openai(args.openai_requests, args.openai_concurrency))
            r = results[-1]
            print(f"openai client: {r.value:.0f} req/s against one server process "
                  f"({r.detail['requests_per_client_cpu_second']:.0f} req per client CPU-second)", flush=True)
        if not args.skip_vllm:
            results.append(await bench_vllm(model, args.vllm_requests, args.vllm_max_tokens, args.kv_cache_gib,
                                             args.vllm_rounds))
            print(f"vllm: {results[-1].value:.0f} tok/s backend vs {results[-1].baseline:.0f} offline", flush=True)
    return results


def main(argv: list[str]) -> int:
    parser = parser_for("bench student", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="model path for hf and vllm (default: the tiny model)")
    parser.add_argument("--out", default="runs/bench/student.json", help="where to write the JSON results")
    parser.add_argument("--skip-vllm", action="store_true", help="skip the vLLM benchmark (no vLLM, or short on time)")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--hf-requests", type=int, default=48)
    parser.add_argument("--hf-max-tokens", type=int, default=32)
    parser.add_argument("--openai-requests", type=int, default=10000)
    parser.add_argument("--openai-concurrency", type=int, default=256)
    parser.add_argument("--vllm-requests", type=int, default=256)
    parser.add_argument("--vllm-max-tokens", type=int, default=64)
    parser.add_argument("--vllm-rounds", type=int, default=4, help="timed runs of each, alternating; best counts")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0, help="vLLM KV cache on CPU (GiB)")
    args = parser.parse_args(argv)
    if not args.skip_vllm:
        from persd.runtime.student.vllm_backend import import_vllm

        import_vllm()  # a clear message (suggesting --skip-vllm) before any work
    t0 = time.perf_counter()
    results = run_async(run(args))
    render(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "bench": "student",
        "command": "persd bench student " + " ".join(argv),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds": time.perf_counter() - t0,
        "results": [asdict(r) for r in results],
    }
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")
    return 0
