"""The local server's Batch API (issue 23, first part), over real HTTP: upload, create, poll,
output and error files, validation failure naming the line, expiry keeping the finished lines,
cancel, and a server without the API."""
from __future__ import annotations

import asyncio

import aiohttp
import orjson
from persd.runtime.local_server import LocalOpenAIServer
from persd.runtime.teacher.local_batch import BatchPlan


def lines(n: int, url: str = "/v1/chat/completions") -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"k{i}", "method": "POST", "url": url,
                                  "body": {"model": "local", "messages": [{"role": "user", "content": f"q{i}"}]}})
                    + b"\n" for i in range(n))


async def submit(session: aiohttp.ClientSession, base: str, data: bytes) -> dict:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", data, filename="in.jsonl", content_type="application/jsonl")
    async with session.post(base + "/files", data=form) as resp:
        file_id = (await resp.json())["id"]
    async with session.post(base + "/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                     "completion_window": "24h"}) as resp:
        return await resp.json()


async def wait_done(session: aiohttp.ClientSession, base: str, batch_id: str) -> dict:
    while True:
        async with session.get(f"{base}/batches/{batch_id}") as resp:
            batch = await resp.json()
        if batch["status"] not in ("validating", "in_progress"):
            return batch
        await asyncio.sleep(0.01)  # polling, as a client does; the assertions are on the outcome only


async def content(session: aiohttp.ClientSession, base: str, file_id: str) -> list[dict]:
    async with session.get(f"{base}/files/{file_id}/content") as resp:
        return [orjson.loads(x) for x in (await resp.read()).splitlines()]


async def test_a_batch_is_answered_through_files_with_errored_lines_apart():
    async with LocalOpenAIServer(batch=BatchPlan(delay_s=0.05, fail_lines=frozenset({"k2"}))) as server:
        async with aiohttp.ClientSession() as session:
            created = await submit(session, server.base_url, lines(4))
            done = await wait_done(session, server.base_url, created["id"])
            out = await content(session, server.base_url, done["output_file_id"])
            err = await content(session, server.base_url, done["error_file_id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    assert [o["custom_id"] for o in out] == ["k0", "k1", "k3"]
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: q0"
    assert [e["custom_id"] for e in err] == ["k2"]
    assert server.batch.lines_received == {f"k{i}": 1 for i in range(4)}


async def test_expiry_keeps_the_finished_lines():
    async with LocalOpenAIServer(batch=BatchPlan(expire_after=2)) as server:
        async with aiohttp.ClientSession() as session:
            done = await wait_done(session, server.base_url, (await submit(session, server.base_url, lines(5)))["id"])
            out = await content(session, server.base_url, done["output_file_id"])
    assert done["status"] == "expired" and [o["custom_id"] for o in out] == ["k0", "k1"]


async def test_validation_failure_names_the_line_and_cancel_stops_a_batch():
    async with LocalOpenAIServer(batch=BatchPlan(delay_s=30)) as server:
        async with aiohttp.ClientSession() as session:
            bad = await submit(session, server.base_url, lines(2) + lines(1))  # k0 twice, on line 3
            slow = await submit(session, server.base_url, lines(2))
            async with session.post(f"{server.base_url}/batches/{slow['id']}/cancel") as resp:
                cancelled = await resp.json()
    assert bad["status"] == "failed"
    assert bad["errors"]["data"][0]["line"] == 3 and bad["errors"]["data"][0]["code"] == "duplicate_custom_id"
    assert cancelled["status"] == "cancelled" and cancelled["output_file_id"] is None


async def test_a_server_without_the_batch_api_answers_404():
    async with LocalOpenAIServer() as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.base_url + "/batches", json={}) as resp:
                assert resp.status == 404
