"""`persd bench eval`'s stand-in GPU really costs its latency and serves at most its slots at once (its
override of a server method went dead once when the local servers were merged, and the bench then
measured an instant student without saying so)."""
from __future__ import annotations

import asyncio

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

        answers = await asyncio.gather(*(complete(tasks[i % 2].prompt) for i in range(6)))
    assert 1 <= gpu.peak_generating <= 2  # it held slots, never more than two (6 requests were in flight)
    assert gpu.generated == 6  # each request held a slot for the latency once, whatever its choices
    assert all(len(a["choices"]) == 3 for a in answers)
    assert answers[0]["choices"][0]["text"] == tasks[0].reference[len(tasks[0].prompt):]
