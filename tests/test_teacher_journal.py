"""Durable answers: nothing paid for twice, across a restart and across kill -9."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap

import orjson
from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, Journal, TeacherClient, TeacherConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ask(i: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"task {i}"}], temperature=0.7, sample_index=i % 2)


def config(url: str, journal) -> TeacherConfig:
    return TeacherConfig(base_url=url, model="gpt-4o-mini", rpm=60_000, tpm=None, journal_path=journal,
                         retry=RetryPolicy(base_delay_s=0.01))


async def test_restart_answers_from_the_journal_without_calls(tmp_path):
    journal = tmp_path / "journal.jsonl"
    async with LocalOpenAIServer() as server:
        async with TeacherClient(config(server.base_url, journal)) as teacher:
            first = await asyncio.gather(*(teacher.chat(ask(i)) for i in range(10)))
        sent = len(server.received)
        async with TeacherClient(config(server.base_url, journal)) as teacher:
            second = await asyncio.gather(*(teacher.chat(ask(i)) for i in range(10)))
            assert teacher.metrics.snapshot()["cached_hits"] == 10
    assert sent == 10 and len(server.received) == 10
    assert all(s.cached for s in second) and [s.texts for s in second] == [f.texts for f in first]
    assert "sk-" not in journal.read_text()  # answers only; no key, no headers


async def test_torn_last_line_is_tolerated(tmp_path):
    path = tmp_path / "journal.jsonl"
    good = orjson.dumps({"key": "k1", "response": {"texts": ["a"]}}) + b"\n"
    path.write_bytes(good + b"not json\n" + good.replace(b"k1", b"k2") + b'{"key": "k3", "resp')
    journal = Journal(path).open()
    assert set(journal.index) == {"k1", "k2"} and journal.torn_tail and journal.skipped_lines == 1
    await journal.append("k4", {"texts": ["d"]})
    await journal.close()
    lines = path.read_bytes().splitlines()
    assert orjson.loads(lines[-1])["key"] == "k4"  # the torn fragment was cut, not glued to
    assert set(Journal(path).open().index) == {"k1", "k2", "k4"}


CHILD = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from persd.runtime.http import RetryPolicy
    from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig

    async def main():
        cfg = TeacherConfig(base_url={url!r}, model="gpt-4o-mini", rpm=60_000, tpm=None,
                            journal_path={journal!r}, max_in_flight=4, retry=RetryPolicy(base_delay_s=0.01))
        async with TeacherClient(cfg) as teacher:
            async def one(i):
                await teacher.chat(ChatRequest(messages=[{{"role": "user", "content": f"task {{i}}"}}],
                                               temperature=0.7, sample_index=i % 2))
                print("done", i, flush=True)
            await asyncio.gather(*(one(i) for i in range({n})))
    asyncio.run(main())
""")


async def test_kill_9_then_rerun_never_pays_twice(tmp_path):
    journal = tmp_path / "journal.jsonl"
    n, kill_after = 40, 12
    async with LocalOpenAIServer(latency_s=0.005) as server:
        code = CHILD.format(repo=REPO, url=server.base_url, journal=str(journal), n=n)
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE)
        done = 0
        while done < kill_after:
            line = await child.stdout.readline()
            assert line, "child ended early"
            done += line.startswith(b"done")
        child.send_signal(signal.SIGKILL)
        await child.wait()
        before_restart = len(server.received)
        keys_done = set(Journal(journal).open().index)
        assert len(keys_done) >= kill_after

        async with TeacherClient(config(server.base_url, journal)) as teacher:
            answers = await asyncio.gather(*(teacher.chat(ask(i)) for i in range(n)))
    resent = server.received[before_restart:]
    resent_keys = {ask(int(b["messages"][0]["content"].split()[1])).key("gpt-4o-mini") for b in resent}
    assert not resent_keys & keys_done  # nothing journaled was asked again
    assert sum(a.cached for a in answers) == len(keys_done)
    assert len(resent) == n - len(keys_done)
    assert [a.text for a in answers] == [f"echo: task {i}" for i in range(n)]
