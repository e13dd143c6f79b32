"""`persd bench eval`'s stand-in GPU really costs its latency and serves at most its slots at once (its
override of a server method went dead once when the local servers were merged, and the bench then
measured an instant student without saying so)."""
from __future__ import annotations

import asyncio
import time

import aiohttp
from persd.bench.eval import ScriptedGPU
from persd.engine.tasks import iter_tasks


async def test_scripted_gpu_holds_a_slot_for_its_latency_per_request():
    tasks = list(iter_tasks("humaneval"))[:2]
    gpu = ScriptedGPU(tasks, latency_s=0.2, slots=2)
    async with gpu as url, aiohttp.ClientSession() as session:
        async def complete(prompt: str) -> dict:
            body = {"model": "scripted-gpu", "prompt": prompt, "n": 3, "max_tokens": 64}
            async with session.post(f"{url}/completions", json=body) as resp:
                assert resp.status == 200
                return await resp.json()

        t0 = time.perf_counter()
        answers = await asyncio.gather(*(complete(tasks[i % 2].prompt) for i in range(6)))
        elapsed = time.perf_counter() - t0
    assert 1 <= gpu.peak_generating <= 2  # never more than its slots (6 requests were in flight)
    # six requests through two slots, 0.2 s each: at least three rounds (a lower bound: sleeps never end early)
    assert elapsed >= 3 * 0.2
    assert all(len(a["choices"]) == 3 for a in answers)  # one slot-time per request, not per choice
    assert answers[0]["choices"][0]["text"] == tasks[0].reference[len(tasks[0].prompt):]
