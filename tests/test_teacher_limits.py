"""Pacing: no window over the limit, one shared cool-down on 429, the in-flight cap, server headers."""
from __future__ import annotations

import asyncio

from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, RateLimiter, TeacherClient, TeacherConfig
from persd.runtime.teacher.limiter import parse_reset

FAST = RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.05, deadline_s=20, request_timeout_s=5)


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


async def test_no_sliding_window_over_the_rpm_limit():
    # 1200 RPM enforced over 0.5 s windows: at most 10 requests in any half second.
    async with LocalOpenAIServer(rpm=1200, window_s=0.5, limit_mode="sliding", latency_s=0.01) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=1200, tpm=None,
                            headroom=0.95, retry=FAST)
        async with TeacherClient(cfg) as teacher:
            answers = await asyncio.gather(*(teacher.chat(ask(f"q{i}")) for i in range(30)))
            snap = teacher.metrics.snapshot()
    assert [a.text for a in answers] == [f"echo: q{i}" for i in range(30)]
    assert server.stats["rate_limited"] == 0 and snap["http_429"] == 0
    most, _ = server.max_in_window()
    assert most <= 10


async def test_tpm_is_paced_on_estimates_and_reconciled_with_usage():
    # Prompts of varied size, max_tokens far above the real answer (the estimate over-counts),
    # token bucket of one 0.5 s window; the client must never be refused.
    async with LocalOpenAIServer(lambda body: "y" * 80, tpm=60_000, window_s=0.5, latency_s=0.01) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=100_000, tpm=60_000, retry=FAST)
        async with TeacherClient(cfg) as teacher:
            await asyncio.gather(*(teacher.chat(ask(f"{i:03d}" + "p" * (40 * (i % 7)), max_tokens=60))
                                   for i in range(40)))
            snap = teacher.metrics.snapshot()
    assert server.stats["rate_limited"] == 0 and snap["http_429"] == 0
    assert len(server.answered) == 40
    assert snap["tokens_in"] + snap["tokens_out"] == sum(a.tokens for a in server.answered)


async def test_an_own_budget_429_holds_every_caller_for_its_retry_after():
    # The 429 says the budget is used up (x-ratelimit-remaining-requests: 0): the next request
    # would be refused too, so nobody is sent until the server says one fits again.
    plan = FaultPlan(script=["429"], retry_after_s=0.3, exhausted_429=True)
    async with LocalOpenAIServer(faults=plan) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=600, tpm=None, retry=FAST)
        async with TeacherClient(cfg) as teacher:
            await asyncio.gather(*(teacher.chat(ask(f"c{i}")) for i in range(8)))
            snap = teacher.metrics.snapshot()
    t429 = next(a.t for a in server.log if a.fault == "429")
    later = [a for a in server.log if a.t > t429]
    assert len(later) == 8
    # nothing at all was sent during the shared cool-down, not only the rejected request's retry
    assert all(a.t >= t429 + 0.3 for a in later)
    assert snap["http_429"] == 1 and snap["http_429_own"] == 1 and snap["retries_by_cause"] == {"http_429": 1}


async def test_a_foreign_429_holds_only_its_own_request():
    # A 429 whose headers show room left (an overloaded provider, a shared organisation limit):
    # only that request waits its 2 s Retry-After; the others keep being sent meanwhile.
    plan = FaultPlan(script=["429"], retry_after_s=2.0)
    async with LocalOpenAIServer(rpm=60_000, window_s=1.0, faults=plan) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=60_000, tpm=None,
                            max_in_flight=4, retry=FAST)
        async with TeacherClient(cfg) as teacher:
            await asyncio.gather(*(teacher.chat(ask(f"c{i}")) for i in range(12)))
            snap = teacher.metrics.snapshot()
            paused = teacher.limiter.cooldowns
    first = server.log[0]
    assert first.fault == "429"
    retry = next(a for a in server.log[1:] if a.body == first.body)
    others = [a for a in server.log[1:] if a is not retry]
    assert len(others) == 11 and retry is server.log[-1]
    assert retry.t >= first.t + 2.0  # the refused request honoured its Retry-After...
    assert all(a.t < first.t + 2.0 for a in others)  # ...while the 11 others were all sent meanwhile
    assert paused == 0 and snap["http_429"] == 1 and snap["http_429_own"] == 0


async def test_in_flight_cap():
    live = peak = 0
    gate = asyncio.Event()

    async def responder(body: dict) -> str:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        if live == 3:
            gate.set()
        await gate.wait()  # hold answers until the cap is reached, so the cap is really tested
        await asyncio.sleep(0)
        live -= 1
        return "ok"

    async with LocalOpenAIServer(responder) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=60_000, tpm=None,
                            max_in_flight=3, retry=FAST)
        async with TeacherClient(cfg) as teacher:
            await asyncio.gather(*(teacher.chat(ask(f"f{i}")) for i in range(12)))
    assert peak == 3


async def test_server_headers_lower_the_pace_and_pause_at_zero_remaining():
    limiter = RateLimiter(rpm=1000, tpm=100_000)
    limiter.observe({"x-ratelimit-limit-requests": "500", "x-ratelimit-limit-tokens": "50000",
                     "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "250ms"})
    assert limiter.rpm_limit == 500 and limiter.tpm_limit == 50_000
    assert 0.2 < limiter.cooling_down <= 0.25
    limiter.observe({"x-ratelimit-limit-requests": "5000"})  # never raised above the configured limit
    assert limiter.rpm_limit == 500


def test_parse_reset():
    assert parse_reset("1s") == 1.0 and parse_reset("6m0s") == 360.0
    assert parse_reset("20ms") == 0.02 and parse_reset("0.5") == 0.5 and parse_reset("") is None


async def test_limits_announced_only_in_headers_never_overfill_a_window():
    # Told 4800 RPM, the server enforces 1200 per minute and says so only in its x-ratelimit-*
    # headers. The sends that left at 4800 before the first answer came back are re-costed at
    # 1200, so that 1 s window and every later one holds at most 20 requests. (A token bucket of
    # one window, as providers run, would have let more through: the server does not protect it.)
    async with LocalOpenAIServer(rpm=1200, window_s=1.0, latency_s=0.1) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=4800, tpm=None, headroom=0.95,
                            jitter_s=0.03, cold_start_s=0.0, retry=FAST)
        async with TeacherClient(cfg) as teacher:
            await asyncio.gather(*(teacher.chat(ask(f"h{i}")) for i in range(45)))
            limit = teacher.limiter.rpm_limit
    assert limit == 1200
    fast = [a.t for a in server.log if a.t < server.log[0].t + 0.1]
    assert len(fast) >= 3  # the first answer took a while: several left at the higher pace
    assert server.stats["rate_limited"] == 0
    most, _ = server.max_in_window()
    assert most <= 20
