"""The wire log (issue 22): a request that leaves later than its permit (a loaded machine, a new
connection) must not crowd the requests after it into one window. The limiter keeps the last
window's requests by their time on the wire, fed by the HTTP client's trace, and holds back the
request that would make a window too full."""
from __future__ import annotations

import asyncio

import pytest
from persd.runtime import http
from persd.runtime.http import RetryPolicy, retry_delay
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, RateLimiter, TeacherClient, TeacherConfig
from persd.runtime.teacher.limiter import Permit
from persd.runtime.teacher.wirelog import WireLog


def ask(text: str) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], max_tokens=20)


def drive(limiter: RateLimiter, now: list[float], n: int, lag: dict[int, float]) -> list[Permit]:
    """Grant `n` permits as soon as the limiter allows (simulated clock); request i is written
    `lag[i]` seconds after its permit (0 when not named), the others at once."""
    permits = []
    while len(permits) < n:
        got = limiter.try_acquire(1)
        if isinstance(got, float):
            now[0] += got
            continue
        permits.append(got)
        limiter.wired(got, got.sent_at + lag.get(len(permits) - 1, 0.0))
    return permits


def test_a_request_written_late_holds_back_the_one_a_window_after_it():
    now = [100.0]
    limiter = RateLimiter(1200, None, headroom=0.985, window_s=1.0, jitter_s=0.01, clock=lambda: now[0])
    permits = drive(limiter, now, 40, lag={3: 0.12})  # the 4th leaves 120 ms after its permit
    wires = sorted(p.wire_at for p in permits)
    spans = [wires[i + 20] - wires[i] for i in range(len(wires) - 20)]  # 21 requests: one over a window
    assert min(spans) >= 1.0 + 0.01 - 1e-6  # never 21 within the window plus the jitter allowance
    assert limiter.log_holds >= 1
    # the schedule alone would have let the 24th leave 0.9 s after the late one: the log held it
    assert permits[23].sent_at - permits[3].wire_at >= 1.01 - 1e-6


def test_on_time_requests_are_never_held_by_the_log():
    # the schedule's own bound meets the log's exactly: without lateness the log binds nothing,
    # whether the requests are reported on the wire or not (a caller without a trace)
    for wire in (True, False):
        now = [0.0]
        limiter = RateLimiter(1200, 600_000, headroom=0.985, window_s=1.0, jitter_s=0.01,
                              clock=lambda now=now: now[0])
        granted = 0
        while granted < 200:
            got = limiter.try_acquire(200)
            if isinstance(got, float):
                now[0] += got
                continue
            granted += 1
            if wire:
                limiter.wired(got, got.sent_at)
        assert limiter.log_holds == 0


def test_the_log_counts_requests_and_tokens_by_their_time_on_the_wire():
    def permit(at: float, tokens: int) -> Permit:
        return Permit(sent_at=at, tokens=tokens)

    log = WireLog()
    first = permit(0.0, 600)
    log.granted(first)
    log.wired(first, 0.3)  # left late: counted from 0.3
    assert log.wait(1.0, 1.01, max_requests=10, max_tokens=1000, tokens=500) == pytest.approx(0.31)
    assert log.wait(1.0, 1.01, max_requests=10, max_tokens=1000, tokens=400) == 0.0
    big = permit(0.0, 5000)
    alone = WireLog()
    assert alone.wait(0.0, 1.01, max_requests=10, max_tokens=1000, tokens=5000) == 0.0  # alone, any size
    alone.granted(big)
    assert alone.wait(0.5, 1.01, max_requests=10, max_tokens=1000, tokens=1) == pytest.approx(0.51)
    alone.dropped(big)  # refunded: it never left, it takes no room
    assert alone.wait(0.5, 1.01, max_requests=10, max_tokens=1000, tokens=1) == 0.0
    first.tokens, old = 100, first.tokens  # the answer's usage replaced the estimate
    log.retokened(first, old)
    assert log.wait(1.0, 1.01, max_requests=10, max_tokens=1000, tokens=900) == 0.0
    full = WireLog()
    for i in range(3):
        p = permit(0.1 * i, 1)
        full.granted(p)
        full.wired(p, 0.1 * i)
    assert full.wait(0.5, 1.01, max_requests=3, max_tokens=None, tokens=1) == pytest.approx(0.51)
    assert full.wait(1.2, 1.01, max_requests=3, max_tokens=None, tokens=1) == 0.0  # the first has left it


async def test_a_late_request_does_not_crowd_a_window_at_the_server():
    # 600 RPM over 1 s windows (10 a window). One request leaves 300 ms after its permit, as on a
    # machine whose event loop is busy: the schedule alone would put 11 requests into 0.7 s at the
    # server; with the wire log the request a window after the late one waits for it.
    async with LocalOpenAIServer(rpm=600, window_s=1.0, latency_s=0.01) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=600, jitter_s=0.05)
        async with TeacherClient(cfg) as teacher:
            limiter = teacher.limiter
            granted = limiter.acquire
            order = iter(range(10_000))

            async def late_fifth(tokens: int) -> Permit:
                got = await granted(tokens)
                if next(order) == 4:
                    await asyncio.sleep(0.3)  # the injected lateness under test, not a synchronisation
                return got

            limiter.acquire = late_fifth
            await asyncio.gather(*(teacher.chat(ask(f"q{i}")) for i in range(25)))
            wired = [p.wire_at is not None and p.wire_at >= p.sent_at for p in limiter._sent]
    assert wired and all(wired)  # the trace reported every request on the wire
    most, _ = server.max_in_window()
    assert most <= 10 and server.stats["rate_limited"] == 0
    assert limiter.log_holds >= 1


def test_retry_after_is_waited_exactly_unless_spread():
    policy = RetryPolicy()

    class High:
        def random(self) -> float:
            return 1.0

    assert retry_delay(policy, 1, 2.0, High(), spread=False) == 2.0
    assert retry_delay(policy, 1, 2.0, High(), spread=True) == pytest.approx(2.2)
    assert 0.25 <= retry_delay(policy, 1, None) <= 0.5  # no Retry-After: the back-off


async def test_the_teacher_waits_a_retry_after_exactly(monkeypatch):
    # its limiter spaces every attempt already; random extra only makes the last retry later
    spreads = []

    def recorded(policy, attempt, retry_after, rng=None, spread=True):
        spreads.append((retry_after, spread))
        return retry_delay(policy, attempt, retry_after, rng, spread)

    monkeypatch.setattr(http, "retry_delay", recorded)
    plan = FaultPlan(script=["429"], retry_after_s=0.05)
    async with LocalOpenAIServer(rpm=60_000, faults=plan) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=60_000)
        async with TeacherClient(cfg) as teacher:
            assert (await teacher.chat(ask("one"))).text == "echo: one"
    assert spreads == [(0.05, False)]
