"""BatchTeacher (issue 23, core) against the local server's Batch API, over real HTTP."""
from __future__ import annotations

import asyncio

import pytest
from persd.runtime.errors import ConfigError
from persd.runtime.local_server import LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig
from persd.runtime.teacher.batch import BatchTeacher
from persd.runtime.teacher.local_batch import BatchPlan


def ask(i: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=50)


def cfg(server, tmp_path, name: str) -> TeacherConfig:
    return TeacherConfig(base_url=server.base_url, model="local", journal_path=tmp_path / f"{name}.jsonl")


async def test_batch_answers_equal_sync_ones_and_each_line_is_sent_once(tmp_path):
    async with LocalOpenAIServer(batch=BatchPlan(delay_s=0.05)) as server:
        async with TeacherClient(cfg(server, tmp_path, "sync")) as sync:
            expected = [a.to_record() for a in await asyncio.gather(*(sync.chat(ask(i)) for i in range(6)))]
        async with BatchTeacher(cfg(server, tmp_path, "batch"), tmp_path / "state.jsonl", flush_s=0.05) as teacher:
            got = [a.to_record() for a in await asyncio.gather(*(teacher.chat(ask(i)) for i in range(6)))]
            batches = list(teacher.submitted)
    assert got == expected
    assert len(batches) == 1 and all(n == 1 for n in server.batch.lines_received.values())


async def test_errored_and_expired_lines_go_into_a_later_batch(tmp_path):
    key2 = ask(2).key("local")
    async with LocalOpenAIServer(batch=BatchPlan(fail_lines=frozenset({key2}), expire_after=4)) as server:
        async with BatchTeacher(cfg(server, tmp_path, "b"), tmp_path / "state.jsonl", flush_s=0.05,
                                max_line_tries=3) as teacher:
            answers = await asyncio.gather(*(teacher.chat(ask(i)) for i in range(6)))
    assert [a.text for a in answers] == [f"echo: q{i}" for i in range(6)]
    assert server.batch.lines_received[key2] == 2  # retried once after its error
    assert server.batch.lines_received[ask(5).key("local")] == 2  # left by the expiry, resubmitted once
    assert server.batch.lines_received[ask(0).key("local")] == 1  # finished before the expiry: kept


async def test_a_rerun_reattaches_to_its_batch_and_sends_nothing_again(tmp_path):
    async with LocalOpenAIServer(batch=BatchPlan(delay_s=0.5)) as server:
        first = BatchTeacher(cfg(server, tmp_path, "j"), tmp_path / "state.jsonl", flush_s=0.01)
        await first.__aenter__()
        calls = [asyncio.ensure_future(first.chat(ask(i))) for i in range(3)]
        while not first.submitted:
            await asyncio.sleep(0.01)
        await first.__aexit__()  # stopped with the batch in flight (as after kill -9: state is on disk)
        for c in calls:
            c.cancel()
        async with BatchTeacher(cfg(server, tmp_path, "j"), tmp_path / "state.jsonl", flush_s=0.01) as again:
            answers = await asyncio.gather(*(again.chat(ask(i)) for i in range(3)))
            assert again.submitted == []
    assert [a.text for a in answers] == ["echo: q0", "echo: q1", "echo: q2"]
    assert list(server.batch.lines_received.values()) == [1, 1, 1] and len(server.batch.batches) == 1


async def test_a_server_without_a_batch_api_is_one_sentence(tmp_path):
    async with LocalOpenAIServer() as server:
        with pytest.raises(ConfigError, match="has no Batch API"):
            async with BatchTeacher(cfg(server, tmp_path, "n"), tmp_path / "state.jsonl"):
                pass


async def test_a_crash_between_upload_and_the_recorded_batch_reattaches_through_the_list(tmp_path):
    # The file was uploaded and recorded, the provider created the batch, then the process died
    # before it wrote the batch id: the rerun finds the batch by its input file, creates none.
    import aiohttp
    import orjson
    from persd.runtime.teacher.batch import ENDPOINT

    async with LocalOpenAIServer(batch=BatchPlan(delay_s=0.05)) as server:
        config = cfg(server, tmp_path, "c")
        keys = [ask(i).key("local") for i in range(2)]
        data = b"".join(orjson.dumps({"custom_id": k, "method": "POST", "url": ENDPOINT,
                                      "body": ask(i).payload("local")}) + b"\n" for i, k in enumerate(keys))
        async with aiohttp.ClientSession() as session:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", data, filename="in.jsonl")
            async with session.post(server.base_url + "/files", data=form) as resp:
                file_id = (await resp.json())["id"]
            async with session.post(server.base_url + "/batches", json={
                    "input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"}) as resp:
                assert resp.status == 200
        (tmp_path / "state.jsonl").write_bytes(orjson.dumps({"file": file_id, "keys": keys}) + b"\n")
        async with BatchTeacher(config, tmp_path / "state.jsonl", flush_s=0.01) as again:
            answers = await asyncio.gather(*(again.chat(ask(i)) for i in range(2)))
    assert [a.text for a in answers] == ["echo: q0", "echo: q1"]
    assert len(server.batch.batches) == 1 and list(server.batch.lines_received.values()) == [1, 1]


async def test_batch_answers_cost_half_the_table_and_a_cancelled_batch_is_resubmitted(tmp_path, caplog):
    async with LocalOpenAIServer(batch=BatchPlan(delay_s=0.3)) as server:
        config = TeacherConfig(base_url=server.base_url, model="m", prices={"m": (1.0, 2.0)})
        async with TeacherClient(config) as sync:
            full = await sync.chat(ask(0))
        async with BatchTeacher(config, tmp_path / "state.jsonl", flush_s=0.01) as teacher:
            pending = asyncio.ensure_future(teacher.chat(ask(0)))
            while not teacher.submitted:
                await asyncio.sleep(0.01)
            server.batch.batches[teacher.submitted[0]].status = "cancelled"  # as if cancelled outside persd
            half = await pending
    assert half.cost_usd == pytest.approx(full.cost_usd * 0.5) and half.text == full.text
    assert len(server.batch.batches) == 2 and "cancelled outside persd" in caplog.text


CHILD = """
import asyncio, sys
from pathlib import Path
from persd.runtime.teacher import ChatRequest, TeacherConfig
from persd.runtime.teacher.batch import BatchTeacher

async def main(url, tmp):
    config = TeacherConfig(base_url=url, model="local", journal_path=Path(tmp) / "k.jsonl")
    async with BatchTeacher(config, Path(tmp) / "state.jsonl", flush_s=0.01) as teacher:
        await asyncio.gather(*(teacher.chat(ChatRequest(messages=[{"role": "user", "content": f"q{i}"}],
                                                        max_tokens=50)) for i in range(3)))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_kill_9_while_a_batch_is_in_flight_then_rerun_submits_nothing_twice(tmp_path):
    # The child is killed as soon as its batch id is on disk (the batch takes 1 s at the server);
    # the rerun re-attaches, reads the answers and submits nothing. (Whenever the kill lands, no
    # line may reach the server twice: that is what is asserted, not a timing.)
    import sys

    async with LocalOpenAIServer(batch=BatchPlan(delay_s=1.0)) as server:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, server.base_url, str(tmp_path))
        state = tmp_path / "state.jsonl"
        while not (state.exists() and b'"batch"' in state.read_bytes()):
            await asyncio.sleep(0.02)
        child.kill()
        assert await child.wait() == -9
        async with BatchTeacher(cfg(server, tmp_path, "k"), state, flush_s=0.01) as again:
            answers = await asyncio.gather(*(again.chat(ask(i)) for i in range(3)))
            assert again.submitted == []
    assert [a.text for a in answers] == ["echo: q0", "echo: q1", "echo: q2"]
    assert len(server.batch.batches) == 1 and list(server.batch.lines_received.values()) == [1, 1, 1]


async def test_a_validation_failure_stops_with_the_providers_message_and_line(tmp_path):
    from persd.runtime.teacher import TeacherError

    async with LocalOpenAIServer(batch=BatchPlan(invalid_line=2)) as server:
        async with BatchTeacher(cfg(server, tmp_path, "v"), tmp_path / "state.jsonl", flush_s=0.01) as teacher:
            with pytest.raises(TeacherError, match=r"injected validation failure \(line 2, invalid_request\)"):
                await asyncio.gather(*(teacher.chat(ask(i)) for i in range(3)))


async def test_flush_closes_the_file_at_once(tmp_path):
    async with LocalOpenAIServer(batch=BatchPlan()) as server:
        async with BatchTeacher(cfg(server, tmp_path, "f"), tmp_path / "state.jsonl", flush_s=3600) as teacher:
            pending = asyncio.gather(*(teacher.chat(ask(i)) for i in range(2)))
            while len(teacher._queue) < 2:  # both callers enqueued
                await asyncio.sleep(0)
            teacher.flush()  # without it, the file would wait an hour
            answers = await pending
    assert [a.text for a in answers] == ["echo: q0", "echo: q1"]


async def test_an_enqueued_token_limit_waits_and_retries_smaller(tmp_path):
    async with LocalOpenAIServer(batch=BatchPlan(delay_s=0.05, max_enqueued=2)) as server:
        async with BatchTeacher(cfg(server, tmp_path, "t"), tmp_path / "state.jsonl", flush_s=0.01,
                                limit_wait_s=0.05) as teacher:
            answers = await asyncio.gather(*(teacher.chat(ask(i)) for i in range(4)))
    assert [a.text for a in answers] == [f"echo: q{i}" for i in range(4)]
    refused = [b for b in server.batch.batches.values() if b.status == "failed"]
    assert refused and refused[0].errors["data"][0]["code"] == "token_limit_exceeded"
    assert all(b.counts["total"] <= 2 for b in server.batch.batches.values() if b.status == "completed")
    assert list(server.batch.lines_received.values()) == [1, 1, 1, 1]  # each line answered once


async def _collect(tmp_path, out: str, *extra: str) -> tuple[int, str]:
    import sys

    from helpers import write_doubling_tasks

    tasks = tmp_path / "tasks.jsonl"
    if not tasks.exists():
        write_doubling_tasks(tasks, 3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "persd", "collect", "--tasks", str(tasks), "--out", str(tmp_path / out),
        "--progress", "plain", *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 600)
    return proc.returncode, err.decode()


@pytest.mark.slow
async def test_collect_in_batch_mode_writes_the_records_of_sync_mode(tmp_path):
    # The offline stand-in teacher is deterministic (and serves the Batch API in batch mode).
    assert (await _collect(tmp_path, "sync"))[0] == 0
    code, err = await _collect(tmp_path, "batch", "--teacher.mode", "batch", "--teacher.batch-flush-s", "0.2")
    assert code == 0, err[-2000:]
    shard = "shards/shard-00000.jsonl"
    assert (tmp_path / "batch" / shard).read_bytes() == (tmp_path / "sync" / shard).read_bytes()
    assert b'"batch"' in (tmp_path / "batch/work/teacher.journal.batches.jsonl").read_bytes()


async def test_collect_in_batch_mode_against_a_server_without_the_batch_api_is_one_sentence_exit_2(tmp_path):
    async with LocalOpenAIServer() as server:
        code, err = await _collect(tmp_path, "out", "--teacher.mode", "batch", "--teacher.base-url", server.base_url,
                                   "--teacher.model", "local")
    assert code == 2 and "--teacher.base-url" in err and "has no Batch API" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


async def test_max_cost_reserves_each_lines_worst_case_at_batch_prices(tmp_path):
    from persd.runtime.teacher import BudgetExceeded

    async with LocalOpenAIServer(batch=BatchPlan()) as server:
        # worst case of one request: ~10 prompt tokens + 50 max_tokens at $1000/$1000 per 1M = ~$0.06,
        # $0.03 at batch prices: $0.07 holds two of them (one at sync prices)
        config = TeacherConfig(base_url=server.base_url, model="m", prices={"m": (1000.0, 1000.0)}, max_cost_usd=0.07)
        async with BatchTeacher(config, tmp_path / "state.jsonl", flush_s=0.01) as teacher:
            got = await asyncio.gather(*(teacher.chat(ask(i)) for i in range(3)), return_exceptions=True)
            spent = teacher.budget.spent
    assert [type(g).__name__ for g in got] == ["ChatResponse", "ChatResponse", "BudgetExceeded"]
    assert isinstance(got[2], BudgetExceeded) and len(server.batch.lines_received) == 2
    assert spent == pytest.approx(sum(g.cost_usd for g in got[:2]))


PAPER_TASKS = [  # one task whose tests the teacher writes (a second teacher call), one with its tests given
    {"task_id": "CodeAlpaca/0", "instruction": "Sort a list of numbers and double each.", "entry_point": "sort_double",
     "header": "import math\r\ndef sort_double(nums):\n",
     "reference": "import math\r\ndef sort_double(nums):\r\n    return [2 * x for x in sorted(nums)]\r\n"},
    {"task_id": "io/1", "instruction": "Print the sum of two numbers.", "entry_point": "show_sum",
     "reference": "def show_sum(a, b):\n    print(a + b)\n",
     "test_list": [{"input": "show_sum(1, 2)", "output": "3\n"}, {"input": "show_sum(2, 2)", "output": "4\n"}]},
]


@pytest.mark.slow
async def test_paper_mode_in_batch_mode_writes_sync_modes_records_without_waiting_for_the_flush_timer(tmp_path):
    import sys

    import orjson

    tasks = tmp_path / "paper.jsonl"
    tasks.write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in PAPER_TASKS))

    async def collect(out: str, *extra: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "persd", "collect", "--preset", "paper", "--tasks", str(tasks), "--out",
            str(tmp_path / out), "--max-tokens", "16", "--sandbox.workers", "1", "--progress", "none", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 600)
        return proc.returncode, err.decode()

    assert (await collect("sync"))[0] == 0
    # an hour's flush timer and room for 50,000 lines: each file is closed because every task waits on it
    code, err = await collect("batch", "--teacher.mode", "batch", "--teacher.batch-flush-s", "3600")
    assert code == 0, err[-2000:]
    shard = "shards/shard-00000.jsonl"
    assert (tmp_path / "batch" / shard).read_bytes() == (tmp_path / "sync" / shard).read_bytes() != b""
    results = [orjson.loads(x) for x in (tmp_path / "batch/shards/shard-00000.results.jsonl").read_bytes().splitlines()]
    assert any(r.get("generated_tests") for r in results)  # the teacher-written tests went through a batch too
    metrics = orjson.loads((tmp_path / "batch/metrics.json").read_bytes())["teacher"]
    assert metrics["mode"] == "batch" and metrics["batch_files"] >= 2 and metrics["cost_usd_sync"] == 0
    # persd status lists the run's batches (as the run last saw them); persd report shows the spend apart
    import subprocess

    status = subprocess.run([sys.executable, "-m", "persd", "status", str(tmp_path / "batch"), "--json"],
                            capture_output=True, text=True, timeout=120)
    batches = orjson.loads(status.stdout)["partitions"][0]["batches"]
    assert status.returncode == 0 and len(batches) == metrics["batch_files"]
    assert all(b["ended"] and b["status"] == "completed" and b["requests"] >= 1 for b in batches)
    assert sum(b["counts"]["completed"] for b in batches) == metrics["batch_submitted"]
    table = subprocess.run([sys.executable, "-m", "persd", "status", str(tmp_path / "batch")],
                           capture_output=True, text=True, timeout=120)
    assert "teacher batches" in table.stdout and batches[0]["id"] in table.stdout


async def test_the_batch_price_factor_reaches_the_batch_teacher_and_above_one_is_refused(tmp_path):
    from types import SimpleNamespace

    from helpers import write_doubling_tasks
    from persd.engine.collect.backends import open_teacher
    from persd.engine.collect.config import parse_args
    from persd.runtime.errors import UsageError

    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    base = ["--tasks", str(tasks), "--out", str(tmp_path / "o"), "--teacher.mode", "batch", "--progress", "none"]
    cfg = parse_args([*base, "--teacher.batch-price-factor", "0.6"], environ={})
    async with open_teacher(cfg, SimpleNamespace(notes=[], secrets=[])) as teacher:
        assert isinstance(teacher, BatchTeacher) and teacher.price_factor == 0.6
    assert parse_args(base, environ={}).teacher.batch_price_factor == 0.5  # OpenAI's discount by default
    with pytest.raises((UsageError, ConfigError), match="batch-price-factor"):
        parse_args([*base, "--teacher.batch-price-factor", "2"], environ={})
