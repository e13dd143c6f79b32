"""The pacer's burst tolerance: it catches up after a shared cool-down, yet no window the provider
enforces ever goes over the limit (simulated clock, then against the sliding-window server)."""
from __future__ import annotations

import asyncio
import heapq
import itertools
import random

import pytest
from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, RateLimiter, TeacherClient, TeacherConfig
from persd.runtime.teacher.limiter import Permit

FOREIGN = "foreign"
FAST = RetryPolicy(max_attempts=8, base_delay_s=0.01, max_delay_s=0.05, deadline_s=30, request_timeout_s=5)


class Sim:
    """A backlog of requests driven through `RateLimiter.try_acquire` on a simulated clock.

    `refuse(i)` -> None, or (seconds until the refusal comes back, cool-down it asks for) for
    attempt i; a refused attempt is refunded then, and retried at the back of the queue. A
    cool-down of FOREIGN is a 429 whose headers show room left: `on_429` sorts it out (AIMD).
    `late(i)` is the timer lateness of each wake-up. Answers settle `latency` after sending."""

    def __init__(self, rpm=1200, headroom=0.95, window_s=0.5, jitter_s=0.001, latency=0.01):
        self.now = 1000.0
        self.limiter = RateLimiter(rpm, None, headroom=headroom, window_s=window_s, jitter_s=jitter_s,
                                   clock=lambda: self.now)
        self.latency = latency
        self.events: list = []
        self.seq = itertools.count()
        self.admitted: list[float] = []
        self.sent: list[float] = []  # every attempt, refused ones included
        self.foreign = 0

    def at(self, t, fn):
        heapq.heappush(self.events, (t, next(self.seq), fn))

    def run(self, n, refuse=lambda i: None, late=lambda i: 0.0) -> list[float]:
        todo, attempt = n, 0
        while todo or self.events:
            got = self.limiter.try_acquire(1, self.now) if todo else None
            if got is None or isinstance(got, float):
                wake = self.now + got + late(attempt) if isinstance(got, float) else float("inf")
                if self.events and self.events[0][0] <= wake:
                    t, _, fn = heapq.heappop(self.events)
                    self.now = max(self.now, t)
                    fn()
                else:
                    self.now = wake
                continue
            permit, sent, todo = got, self.now, todo - 1
            self.sent.append(sent)
            refusal = refuse(attempt)
            attempt += 1
            if refusal is None:
                self.admitted.append(sent)
                self.at(sent + self.latency, lambda p=permit: self.limiter.settle(p))
            else:
                delay, cool = refusal

                def refused(p=permit, cool=cool):
                    nonlocal todo
                    if cool == FOREIGN:
                        self.limiter.on_429(p, {"x-ratelimit-remaining-requests": "5"}, 2.0, 1.0)
                        self.foreign += 1
                    elif cool:
                        self.limiter.cool_down(cool)
                    self.limiter.refund(p)
                    todo += 1  # retried behind the others
                self.at(sent + delay, refused)
        return self.admitted


def most_in_window(times: list[float], window: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_tolerance_is_the_window_slack_left_by_the_headroom():
    limiter = RateLimiter(1200, None, headroom=0.98, window_s=1.0, jitter_s=0.005)
    assert limiter.tolerance_s == pytest.approx(1.0 * (1 / 0.98 - 1) - 0.005)  # 15.4 ms
    assert RateLimiter(1200, None, headroom=1.0).tolerance_s == 0.0  # no headroom, no burst
    # a long window is capped at max_burst emission intervals: a minute never leaves in a burst
    long = RateLimiter(1200, None, headroom=0.98, window_s=60.0, max_burst=2)
    assert long.tolerance_s == pytest.approx(2 * 60 / (1200 * 0.98))


def test_the_pacer_catches_up_after_a_cool_down_within_its_tolerance():
    clean = Sim().run(60)
    tolerance = Sim().limiter.tolerance_s  # 24.3 ms: 0.5 s * (1/0.95 - 1) - 1 ms
    short = Sim().run(60, refuse=lambda i: (0.002, 0.015) if i == 20 else None)  # 17 ms held back
    assert len(short) == 60
    assert short[-1] - short[0] == pytest.approx(clean[-1] - clean[0], abs=1e-9)  # nothing lost
    long = Sim().run(60, refuse=lambda i: (0.002, 0.060) if i == 20 else None)  # 62 ms held back
    lost = (long[-1] - long[0]) - (clean[-1] - clean[0])
    assert lost == pytest.approx(0.062 - tolerance, abs=1e-9)  # only what exceeds the tolerance
    rigid = Sim(jitter_s=1.0)  # tolerance 0: the old behaviour, every cool-down lost for good
    assert rigid.limiter.tolerance_s == 0.0
    r_clean = Sim(jitter_s=1.0).run(60)
    r_short = rigid.run(60, refuse=lambda i: (0.002, 0.015) if i == 20 else None)
    assert (r_short[-1] - r_short[0]) - (r_clean[-1] - r_clean[0]) == pytest.approx(0.017, abs=1e-9)


def test_a_late_refund_gives_back_the_slot_it_freed_not_a_burst():
    # The refusal of attempt 5 comes back 120 ms later, after two more requests have left (at
    # +53 and +105 ms). Replaying the schedule without it frees its slot as it was then; giving
    # back "one interval" now (the naive refund) would let the next request leave at +120 ms,
    # 15 ms behind the last one.
    sim = Sim()
    times = sim.run(20, refuse=lambda i: (0.120, 0.0) if i == 5 else None)
    interval, tolerance = 60 / (1200 * 0.95), sim.limiter.tolerance_s
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= interval - tolerance - 1e-9
    assert most_in_window(times, 0.5) <= 10


@pytest.mark.parametrize("seed", range(6))
def test_no_window_over_the_limit_whatever_the_faults_and_timer_lateness(seed):
    rng = random.Random(seed)

    def refuse(i):
        if rng.random() < 0.15:  # 429s (own and foreign) and 5xx, answered fast or slowly
            return (rng.choice([0.001, 0.003, 0.02, 0.08, 0.3]), rng.choice([0.0, 0.01, 0.02, 0.05, FOREIGN]))
        return None

    for window, rpm, headroom in ((0.5, 1200, 0.95), (1.0, 1200, 0.98), (1.0, 600, 0.98)):
        sim = Sim(rpm=rpm, headroom=headroom, window_s=window)
        times = sim.run(300, refuse=refuse, late=lambda i: rng.choice([0.0, 0.0, 0.002, 0.01, 0.03]))
        assert len(times) == 300
        cap = rpm * window / 60
        assert most_in_window(times, window) <= cap, (window, rpm, headroom)


async def test_catch_up_against_the_sliding_window_server():
    # 1200 RPM enforced over strict 0.5 s sliding windows (10 requests), 25% injected 429s each
    # saying the budget is used up (another process on the key) and asking for a 30 ms cool-down;
    # the client is told the window. The refused attempts count in the window, as at a provider.
    # No self-provoked 429, no window over 10, and each cool-down costs the schedule less than the
    # cool-down itself. (The first attempt opens a connection and arrives late, so the first
    # window is kept by the cold start; the schedule is measured from the second attempt on.)
    plan = FaultPlan(p_429=0.25, retry_after_s=0.03, exhausted_429=True, seed=3)
    async with LocalOpenAIServer(rpm=1200, window_s=0.5, limit_mode="sliding", faults=plan,
                                 latency_s=0.01) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=1200, tpm=None,
                            headroom=0.95, limit_window_s=0.5, retry=FAST)
        async with TeacherClient(cfg) as teacher:
            answers = await asyncio.gather(*(teacher.chat(ChatRequest(messages=[{"role": "user", "content": f"q{i}"}]))
                                             for i in range(60)))
            tolerance = teacher.limiter.tolerance_s
    assert [a.text for a in answers] == [f"echo: q{i}" for i in range(60)]
    assert server.stats["rate_limited"] == 0
    most, _ = server.max_in_window()
    assert most <= 10
    admitted = [a.t for a in server.log if a.admitted][1:]
    cool_downs = sum(1 for a in server.log[1:] if a.fault == "429")
    assert len(admitted) == len(server.log) - 1  # every attempt was admitted: refused ones count
    assert cool_downs >= 5 and tolerance > 0.015
    lost_each = ((admitted[-1] - admitted[0]) - (len(admitted) - 1) * 60 / (1200 * 0.95)) / cool_downs
    assert lost_each < 0.03  # without the tolerance each would cost 30 ms + the refusal's round trip


def test_foreign_429s_cut_the_pace_then_it_recovers_additively():
    now = [0.0]
    limiter = RateLimiter(1200, None, headroom=1.0, clock=lambda: now[0])
    interval, up = 60 / 1200, limiter.aimd.recover_per_s
    room = {"x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "400ms"}
    sent = limiter.try_acquire(1)
    now[0] = 0.1
    assert limiter.on_429(sent, room, 2.0, 1.0) is False  # not about our budget
    assert limiter.cooling_down == 0.0 and limiter.pace == pytest.approx(0.9)
    # the answers to attempts already in flight at the cut do not cut again
    limiter.on_429(Permit(0.05, 1), room, 2.0, 1.0)
    assert limiter.pace == pytest.approx(0.9) and limiter.aimd.cuts == 1
    limiter.refund(sent)
    first = limiter.try_acquire(1)
    assert isinstance(first, Permit)  # the refund gave the slot back, and nobody pauses
    assert limiter.try_acquire(1) == pytest.approx(interval)  # one cut leaves room for the refused attempts
    def send() -> Permit:
        got = limiter.try_acquire(1)
        if isinstance(got, float):
            now[0] += got + 1e-9
            got = limiter.try_acquire(1)
        assert isinstance(got, Permit)
        return got

    # an overload that goes on: each attempt sent after the last cut is refused and cuts again
    for _ in range(6):
        got = send()
        limiter.refund(got)
        limiter.on_429(got, room, 2.0, 1.0)
    assert limiter.aimd.cuts == 7 and limiter.pace < 0.6
    pace, cut_at = limiter.pace, now[0]
    # every attempt, refused or not, now leaves at pace * margin * the limit on average (a window's
    # burst allowed): over 5 s (the pace held still), well under what the limit allows
    limiter.aimd.recover_per_s = 1e-12
    sent_at = []
    while now[0] < cut_at + 5.0:
        got = send()
        sent_at.append(now[0])
        limiter.refund(got)
    assert len(sent_at) <= (5.0 + limiter.window_s) * pace * limiter.attempt_margin / interval + 2
    assert len(sent_at) < 0.8 * 5.0 / interval
    limiter.aimd.recover_per_s = up
    now[0] = cut_at
    now[0] = cut_at + 0.2
    assert limiter.pace == pytest.approx(pace + up * 0.2)  # additive recovery, per second
    now[0] = cut_at + (1 - pace) / up + 0.01
    assert limiter.pace == 1.0


def test_an_own_budget_429_pauses_everyone_until_the_reset():
    now = [0.0]
    limiter = RateLimiter(1200, 100_000, clock=lambda: now[0])
    sent = limiter.try_acquire(300)
    # no Retry-After: the reset of the exhausted limit says how long
    assert limiter.on_429(sent, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "250ms"},
                          None, 1.0) is True
    assert limiter.cooling_down == pytest.approx(0.25) and limiter.pace == 1.0
    # tokens: remaining below what this request needs is the budget too; Retry-After wins
    assert limiter.on_429(sent, {"x-ratelimit-remaining-requests": "9", "x-ratelimit-remaining-tokens": "120",
                                 "x-ratelimit-reset-tokens": "3s"}, 0.6, 1.0) is True
    assert limiter.cooling_down == pytest.approx(0.6) and limiter.pace == 1.0


def test_our_own_record_says_a_429_was_ours_when_the_window_was_full():
    # No headers at all: a 429 for an attempt that left when the last window already held the
    # limit's worth (20 at 1200 RPM over 1 s, possible only after the limit was lowered under
    # us) is ours; one sent into a window with room is not.
    now = [0.0]
    limiter = RateLimiter(2400, None, headroom=1.0, window_s=1.0, clock=lambda: now[0])
    permits = []
    for i in range(21):
        now[0] = i * 0.0251
        got = limiter.try_acquire(1)
        assert isinstance(got, Permit)
        permits.append(got)
    assert limiter.on_429(permits[5], None, 0.5, 1.0) is False  # 6th in its window: room
    assert limiter.cooling_down == 0.0
    limiter.rpm_limit = 1200
    assert limiter.on_429(permits[20], None, 0.5, 1.0) is True  # 21st in 0.5 s, limit 20 a window
    assert limiter.cooling_down == pytest.approx(0.5)


def test_an_overload_gets_fewer_requests_and_the_pace_comes_back():
    # Every attempt sent in [1 s, 3 s) of the run is refused by an overloaded provider (not
    # our budget); the refusal comes back after 50 ms. The pace falls to a fraction of the limit
    # during the overload, and is back at the limit within a few seconds after it.
    def run(decrease):
        sim = Sim(rpm=1200, headroom=0.98, window_s=1.0)
        sim.limiter.aimd.decrease = decrease
        start = sim.now

        def refuse(i):
            return (0.05, FOREIGN) if 1.0 <= sim.now - start < 3.0 else None
        sim.run(160, refuse=refuse)
        rel = [t - start for t in sim.sent]
        return sim, rel

    sim, rel = run(0.9)
    limit_rate = 1200 / 60
    assert sum(2.0 <= t < 3.0 for t in rel) < 0.6 * limit_rate  # in its 2nd second: well under the limit
    after = sorted(t for t in rel if t >= 3.0)
    late = [t for t in after if t >= after[0] + 4.0]  # 4 s after the overload: full pace again
    gaps = [b - a for a, b in zip(late, late[1:])]
    assert gaps and max(gaps) == pytest.approx(60 / (1200 * 0.98), rel=1e-6)
    assert most_in_window(sim.admitted, 1.0) <= 20
    # without the cut (exact refunds alone), the overloaded provider would get more than the limit
    _, rel_flat = run(0.999999)
    assert sum(1.0 <= t < 3.0 for t in rel_flat) > 2.0 * limit_rate


def test_after_idle_the_schedule_starts_cold_start_late():
    # The first requests after an idle spell open connections and may reach the server late:
    # the schedule starts cold_start_s later, once per idle spell, not for every request.
    now = [0.0]
    limiter = RateLimiter(1200, None, headroom=1.0, cold_start_s=0.1, clock=lambda: now[0])
    assert isinstance(limiter.try_acquire(1), Permit)  # the first leaves at once
    assert limiter.try_acquire(1) == pytest.approx(0.1 + 0.05)
    now[0] = 0.16  # a late wake-up is not an idle spell
    assert isinstance(limiter.try_acquire(1), Permit)
    assert limiter.try_acquire(1) == pytest.approx(0.05)  # then the plain interval
    now[0] = 10.0  # idle again: one more cold start
    assert isinstance(limiter.try_acquire(1), Permit)
    assert limiter.try_acquire(1) == pytest.approx(0.15)
