"""Providers count every request that reaches them against the limit, refused and failed ones too
(issue 22): the client keeps the charge of every attempt the server answered, whatever the status,
and of a connection dropped after sending; it gives back only an attempt that never reached the
server. The local server counts at admission, before its injected faults, as a provider does."""
from __future__ import annotations

import asyncio
import socket

import pytest
from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig, TeacherError


def ask(text: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], max_tokens=20)


async def test_random_429s_and_5xx_count_in_the_window_and_the_client_stays_within_it():
    # 1,200 RPM over 1 s windows (20 a window, token buckets as providers run them); 15% 429s and
    # 15% 5xx, each counted when admitted. persd at its defaults: no window over 20, no refusal by
    # the limit. (Refunding the refused attempts, as before, sends ~1.4x the limit's attempts.)
    # One setting is not the default: the server shares this process's event loop on a shared CI
    # machine, where it reads an arrival late after the client has written it (the wire log sees
    # only the client's side): jitter_s, a little above the default 10 ms, is what it meets.
    plan = FaultPlan(p_429=0.15, retry_after_s=0.2, p_500=0.08, p_503=0.07, seed=7)
    async with LocalOpenAIServer(rpm=1200, window_s=1.0, faults=plan, latency_s=0.02) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=1200, jitter_s=0.015)
        async with TeacherClient(cfg) as teacher:
            answers = await asyncio.gather(*(teacher.chat(ask(f"q{i}")) for i in range(60)))
            refunds = teacher.limiter.refunds
    assert [a.text for a in answers] == [f"echo: q{i}" for i in range(60)]
    refused = [a for a in server.log if a.fault in ("429", "500", "503")]
    assert len(refused) >= 10 and all(a.admitted for a in refused)  # the server counted them
    assert server.stats["rate_limited"] == 0
    most, _ = server.max_in_window()
    assert most <= 20
    assert refunds == 0


async def test_answered_failures_and_dropped_connections_keep_their_charge():
    plan = FaultPlan(script=["500", "drop", "429", "503"], retry_after_s=0.01)
    async with LocalOpenAIServer(rpm=60_000, window_s=1.0, faults=plan) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=60_000, max_in_flight=1,
                            retry=RetryPolicy(base_delay_s=0.01, max_delay_s=0.02))
        async with TeacherClient(cfg) as teacher:
            answer = await teacher.chat(ask("one"))
            limiter = teacher.limiter
    assert answer.text == "echo: one" and len(server.log) == 5
    assert all(a.admitted for a in server.log)
    assert limiter.refunds == 0 and not any(p.refunded for p in limiter._sent)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_refused_connection_is_refunded():
    # Nothing listens: no attempt reaches a server, so none may use the limit. At 6 RPM one kept
    # charge would hold the next attempt back 10 s; refunded, the schedule is as if none was sent.
    cfg = TeacherConfig(base_url=f"http://127.0.0.1:{_closed_port()}/v1", model="gpt-4o-mini", rpm=6,
                        retry=RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.02))
    async with TeacherClient(cfg) as teacher:
        with pytest.raises(TeacherError, match="connection"):
            await teacher.chat(ask("nobody"))
        limiter = teacher.limiter
        assert teacher.metrics.attempts == 4 and limiter.refunds == 4
        wait = limiter.try_acquire(1)
    assert not isinstance(wait, float) or wait < 1.0
