"""Smooth RPM/TPM pacing with a bounded burst tolerance and one shared cool-down.

**Schedule.** One GCRA ("virtual scheduling") per budget. Each budget keeps a theoretical
arrival time `tat`; a request may leave at `now >= tat - tolerance`, and then pushes `tat` to
`max(tat, now) + cost` (cost: one emission interval `60 / (rpm * headroom)` for requests,
`tokens * 60 / (tpm * headroom)` for tokens). Callers queue FIFO behind one lock; a refund, a
reconciliation or a cool-down wakes the head of the queue to recompute its wait.

**Why no window goes over the limit.** For GCRA with interval T and tolerance tau, n requests
that leave within any span shorter than W satisfy (n - 1) * T - tau < W, so n <= ceil((W + tau) / T).
A provider enforcing `rpm` over windows of W seconds admits W * rpm / 60 = W / (T * headroom)
requests per window, which is never exceeded as long as

    tau + jitter <= W * (1 / headroom - 1)

where `jitter` is how much requests may bunch up between the permit and the server. So the
headroom buys a time budget per window, `W * (1/headroom - 1)` (15.2 ms for W = 1 s at 0.985),
and this limiter spends it as: `jitter_s` (default 10 ms) for what happens after a request leaves
(the network, the server's own reading), the rest as tolerance, capped at `max_burst` emission
intervals so that long windows (W = 60 s) still pace smoothly:

    tolerance = min(max_burst * T, W * (1 / headroom - 1) - jitter_s), at least 0

`window_s` is the *shortest* window the provider may enforce (default 1 s: "600 RPM enforced as
10 per second"). The same tolerance (in seconds) applies to the token schedule.

**The wire log: the bound for when requests really leave.** The bound above is about permits. A
request leaves later than its permit when the machine is loaded (the event loop runs the sending
code late) or a connection is set up first (TCP, TLS: the first requests after an idle spell), and a
late request sits closer to the ones after it: 21 of 20 in a 1 s window at the server, measured at
load 4 to 10 on 2 CPUs. So the client reports each request's time on the wire (`wired`, from the
HTTP client's trace, just before its bytes are written) and `persd.runtime.teacher.wirelog` keeps the
last `W + jitter_s` seconds of them: a permit is also held back until the requests and tokens on the
wire in that span leave room for one more (a request alone in it always fits). Until a request is
reported on the wire it counts at its permit's time, where the schedule's bound meets the log's
exactly: on time, the log never binds (tested); it only delays the request a window after a late
one, by as much as that one was late. Lateness of the client is therefore measured, not budgeted;
`jitter_s` only has to cover the way from the socket to the server's clock.

**What the tolerance buys.** Lateness up to `tolerance` does not push the schedule back: timer
lateness on a loaded machine, a short wait behind the token schedule, and above all the shared
cool-down after a 429 (Retry-After of a few ms): after it the pacer catches up on the slots the
cool-down held back, up to `tolerance` seconds' worth, instead of losing them for good. More
cannot be banked safely: after any gap, a catch-up of more than `W * (1/headroom - 1)` puts the
window that starts at the end of the gap over the limit, however long the gap was. Idle time
beyond the tolerance is never banked, so a minute's budget never leaves in a burst.

**Cold start.** `cold_start_s` (default 0) starts the schedule that late after an idle spell, once
per spell: for a client whose requests cannot be reported on the wire. With the wire log a first
request delayed by its connection's set-up holds back only the request a window after it.

**Refunds and reconciliation are exact.** Every charge stays in a short ledger until its fate is
known. Providers count every request that reaches them against the limit, refused (429) and
failed (5xx) ones too, so only an attempt that never reached the server (connection refused, DNS,
not sent) is re-costed at 0 (`refund`); an answer's `usage` replaces its token estimate; `tat` is
then recomputed by replaying the schedule over the ledger. That is the schedule as if the server's
view had been known from the start, so a refund never credits more than the slot really freed (a
late refund cannot open a burst), and over-estimated tokens come back in full. A settled charge
at the head of the ledger is folded into the starting point; the ledger holds roughly the requests
in flight.

**Server headers.** `x-ratelimit-limit-*` below our configured limit lowers our pace (and the
last window's sends are re-costed at the lower limit, so the switch itself cannot overfill a
window); `x-ratelimit-remaining-*` at zero pauses everyone until `x-ratelimit-reset-*`. A positive
`remaining` is not used to send early: it is stale by the requests in flight and, at OpenAI, it
counts the minute's budget while shorter windows may be enforced.

**Two kinds of 429** (`on_429`). A 429 that says *this client* is over its budget (the answer's
`x-ratelimit-remaining-*` has no room for the request, or our own record of the last window's
sends shows the window was already full) pauses everyone: the next request would be refused too.
Any other 429 (a shared
organisation limit, an overloaded provider, a gateway) says nothing about our budget: only that
request waits for its Retry-After, the others keep their schedule, and the pace is cut
multiplicatively and recovered additively (`persd.runtime.http.AIMD`, at most one cut per round
trip). While the pace is below 1, a third schedule spaces *every attempt*, refused ones included,
at `pace * attempt_margin` times the limit on average (a window's worth of burst allowed): the
request schedule alone would keep sending the limit's worth of attempts into a provider that is
refusing them (or, where a provider does not count its refusals, as many as come back). The margin
(1.25) and the burst leave room for the refused attempts a client at its full budget sends anyway
(a provider's few random 429s and 5xx, retried at once), so a lone cut binds nothing and costs
nothing; a sustained overload cuts again every round trip and the attempts fall well below the
limit. At pace 1 that schedule is off. The pace only ever slows sending, so the window guarantee
above holds whatever it does.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from persd.runtime.http import AIMD
from persd.runtime.teacher.wirelog import WireLog

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
LOG_SLACK_S = 1e-6  # the wire log lets this much overlap pass: the schedule's own bound meets it exactly


def parse_reset(value: str | None) -> float | None:
    """'1s', '6m0s', '20ms', '0.5' -> seconds (OpenAI's x-ratelimit-reset-* format)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


@dataclass(eq=False)
class Permit:
    """One attempt's charge on the two schedules (seconds), kept until the server's answer says
    what it really cost: refunded (not counted), reconciled (usage) or settled (as charged)."""

    sent_at: float
    tokens: int
    req_cost: float = 0.0
    tok_cost: float = 0.0
    refunded: bool = False
    settled: bool = False
    folded: bool = False  # no longer in the ledger: a later refund or give-back is ignored (conservative)
    wire_at: float | None = None  # when its bytes were written (the wire log's time); None until known


class RateLimiter:
    MAX_LEDGER = 2048  # charges awaiting their fate; beyond, the oldest are taken as final

    def __init__(self, rpm: float, tpm: float | None, *, headroom: float = 0.985, window_s: float = 1.0,
                 jitter_s: float = 0.01, max_burst: float = 2.0, aimd: AIMD | None = None,
                 attempt_margin: float = 1.25, cold_start_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.rpm_config, self.tpm_config = float(rpm), (float(tpm) if tpm else None)
        self.rpm_limit, self.tpm_limit = self.rpm_config, self.tpm_config
        self.headroom = headroom
        self.window_s, self.jitter_s, self.max_burst = window_s, jitter_s, max_burst
        self.attempt_margin, self.cold_start_s = attempt_margin, cold_start_s
        self.clock = clock
        self._tat_req = self._tat_tok = 0.0    # the schedules now
        self._tat_att = 0.0                    # the schedule of attempts (refused ones too), under AIMD
        self._cold_at = float("-inf")          # when the schedule last started from idle
        self._base_req = self._base_tok = 0.0  # the schedules before the ledger's first charge
        self._floor_req = self._floor_tok = 0.0  # lower bounds from a re-costing (limits lowered)
        self._ledger: deque[Permit] = deque()
        self._sent: deque[Permit] = deque()  # every charge of the last window (own-budget check)
        self.log = WireLog()  # the last window's requests by their time on the wire (the hard check)
        self.log_holds = 0    # requests the log held back (they would have crowded a late one)
        self._log_held = False
        self.aimd = aimd if aimd is not None else AIMD(clock=clock)
        self.aimd.clock = clock
        self._cool_until = 0.0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.cooldowns = 0
        self.refunds = 0  # attempts that never reached the server, given back
        self.waiting = 0

    @property
    def pace(self) -> float:
        """The share of the limits sent now: 1 unless foreign 429s said the provider is overloaded."""
        return self.aimd.value

    @property
    def _req_interval(self) -> float:
        return 60.0 / (self.rpm_limit * self.headroom)

    @property
    def _tok_interval(self) -> float:
        return 60.0 / (self.tpm_limit * self.headroom) if self.tpm_limit else 0.0

    @property
    def tolerance_s(self) -> float:
        """How early a request may leave against the schedule (see the module docstring)."""
        budget = self.window_s * (1.0 / self.headroom - 1.0) - self.jitter_s
        return max(0.0, min(self.max_burst * self._req_interval, budget))

    @property
    def cooling_down(self) -> float:
        """Seconds left of the shared cool-down (0 when none)."""
        return max(0.0, self._cool_until - self.clock())

    async def acquire(self, tokens: int) -> Permit:
        """Wait (FIFO) until a request of `tokens` may leave, then charge it."""
        self.waiting += 1
        try:
            async with self._lock:
                while True:
                    got = self.try_acquire(tokens)
                    if isinstance(got, Permit):
                        return got
                    self._changed.clear()
                    try:
                        await asyncio.wait_for(self._changed.wait(), got)
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.waiting -= 1

    def try_acquire(self, tokens: int, now: float | None = None) -> Permit | float:
        """Charge a request of `tokens` and return its Permit if it may leave now, else return the
        seconds to wait (nothing charged). `acquire` is this plus FIFO waiting."""
        now = self.clock() if now is None else now
        tolerance = self.tolerance_s
        pace = self.pace
        attempts = self._tat_att - self.window_s if pace < 1.0 else 0.0  # the average, a window's burst
        wait = max(self._cool_until, self._tat_req - tolerance, self._tat_tok - tolerance, attempts) - now
        if wait > 0:
            return wait
        tpm_window = self.tpm_limit * self.window_s / 60.0 if self.tpm_limit else None
        held = self.log.wait(now, self.window_s + self.jitter_s, self.rpm_limit * self.window_s / 60.0,
                             tpm_window, tokens)
        if held > LOG_SLACK_S:
            self._log_held = True  # the head of the queue: counted once, when it leaves
            return held
        self.log_holds += self._log_held
        self._log_held = False
        # every attempt, refused or not, at pace * the limit while the provider is overloaded
        start = max(self._tat_att, now) if pace < 1.0 else now
        self._tat_att = start + self._req_interval / (pace * self.attempt_margin)
        permit = Permit(now, tokens, self._req_interval, tokens * self._tok_interval)
        if self._tat_req <= now and self._tat_tok <= now:  # idle: nothing earlier can matter again
            # a cold start after a window or more with nothing due, not after a late wake-up
            idle = not self._ledger and not self._sent or max(self._tat_req, self._tat_tok) + self.window_s <= now
            cold = self.cold_start_s if idle else 0.0
            self._fold(len(self._ledger))
            self._base_req = self._base_tok = self._tat_req = self._tat_tok = now + cold
            if cold:
                self._cold_at = now
        self._tat_req = max(self._tat_req, now) + permit.req_cost
        self._tat_tok = max(self._tat_tok, now) + permit.tok_cost
        self._ledger.append(permit)
        if len(self._ledger) > self.MAX_LEDGER:
            self._fold(1)
        self._sent.append(permit)
        self.log.granted(permit)
        while self._sent and self._sent[0].sent_at <= now - 2 * self.window_s:
            self._sent.popleft()
        return permit

    def refund(self, permit: Permit) -> None:
        """This attempt never reached the server (connection refused, DNS, not sent), so nothing
        counted it: the schedule becomes what it would have been without it."""
        if permit.refunded or permit.settled:
            return
        permit.refunded = True
        self.refunds += 1
        self.log.dropped(permit)
        if not permit.folded:
            permit.req_cost = permit.tok_cost = 0.0
            self._replay()
        self.settle(permit)

    def reconcile(self, permit: Permit, actual_tokens: int) -> None:
        """Charge the server's `usage` instead of the estimate (give back, or charge extra)."""
        if permit.refunded or permit.settled:
            return
        extra, old = actual_tokens - permit.tokens, permit.tokens
        permit.tokens = actual_tokens
        self.log.retokened(permit, old)
        if not permit.folded:
            permit.tok_cost = actual_tokens * self._tok_interval
            self._replay()
        elif extra > 0 and self.tpm_limit:
            self._tat_tok = max(self._tat_tok, self.clock()) + extra * self._tok_interval
        self.settle(permit)

    def wired(self, permit: Permit, at: float | None = None) -> None:
        """The attempt's request was written to the socket at `at` (default: now): the wire log
        counts it from then. Wire times only ever come later than grants, so no waiter is woken."""
        self.log.wired(permit, self.clock() if at is None else at)

    def settle(self, permit: Permit) -> None:
        """This attempt's charge is final as it stands (the server may have counted it)."""
        if not permit.settled:
            permit.settled = True
            self._fold(0)

    def _fold(self, force: int) -> None:
        """Move settled charges (and `force` more) from the ledger's head into the base."""
        while self._ledger and (force > 0 or self._ledger[0].settled):
            p = self._ledger.popleft()
            p.folded, force = True, force - 1
            self._base_req = max(self._base_req, p.sent_at) + p.req_cost
            self._base_tok = max(self._base_tok, p.sent_at) + p.tok_cost

    def _replay(self) -> None:
        req, tok = self._base_req, self._base_tok
        for p in self._ledger:
            req = max(req, p.sent_at) + p.req_cost
            tok = max(tok, p.sent_at) + p.tok_cost
        self._tat_req, self._tat_tok = max(req, self._floor_req), max(tok, self._floor_tok)
        self._changed.set()

    def _recost(self) -> None:
        """The limits were lowered: the schedule becomes at least what the last window's sends
        would have left at the new limits, so they and the next ones fit the new windows."""
        horizon = self.clock() - self.window_s
        req = tok = self._cold_at + self.cold_start_s if self._cold_at > horizon else float("-inf")
        for p in self._sent:
            if p.sent_at > horizon and not p.refunded:
                req = max(req, p.sent_at) + self._req_interval
                tok = max(tok, p.sent_at) + p.tokens * self._tok_interval
        self._floor_req, self._floor_tok = max(self._floor_req, req), max(self._floor_tok, tok)
        self._tat_req, self._tat_tok = max(self._tat_req, req), max(self._tat_tok, tok)
        self._changed.set()

    def window_full(self, permit: Permit) -> bool:
        """Our own record: the window that ends with this attempt already held the limit's worth
        of requests or tokens before it, so the attempt itself was over (a 429 is then ours)."""
        at = _on_wire(permit)
        start = at - self.window_s
        before = [p for p in self._sent if start < _on_wire(p) <= at and p is not permit and not p.refunded]
        if len(before) + 1 > self.rpm_limit * self.window_s / 60.0:
            return True
        if self.tpm_limit:
            return sum(p.tokens for p in before) + permit.tokens > self.tpm_limit * self.window_s / 60.0
        return False

    def on_429(self, permit: Permit | None, headers: Mapping[str, str] | None,
               retry_after_s: float | None, default_s: float) -> bool:
        """Sort a 429 out (see the module docstring); returns True when it was about our budget.

        Ours: everyone pauses until the server says a request fits again (its Retry-After, else the
        reset of the exhausted limit, else `default_s`). Not ours: the pace is cut (AIMD) and nobody
        pauses; the caller retries that request alone after its Retry-After."""
        self.observe(headers, pause=False)
        exhausted = _exhausted(headers, permit.tokens if permit is not None else 1)
        own = exhausted is not None or (permit is not None and self.window_full(permit))
        if own:
            wait = retry_after_s if retry_after_s is not None else (exhausted or default_s)
            self.cool_down(wait)
        elif permit is not None and self.aimd.cut(permit.sent_at):
            self._changed.set()
        return own

    def cool_down(self, seconds: float) -> None:
        """Hold every caller back for `seconds` (one shared pause, extended, never stacked)."""
        until = self.clock() + max(0.0, seconds)
        if until > self._cool_until:
            self._cool_until = until
            self.cooldowns += 1
            self._changed.set()

    def observe(self, headers: Mapping[str, str] | None, pause: bool = True) -> None:
        """Follow the server's own view of our limits when it sends x-ratelimit-* headers."""
        if not headers:
            return
        lowered = False
        for kind in ("requests", "tokens"):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if limit and limit > 0:
                if kind == "requests" and limit < self.rpm_config:
                    lowered |= limit < self.rpm_limit
                    self.rpm_limit = limit
                elif kind == "tokens" and self.tpm_config and limit < self.tpm_config:
                    lowered |= self.tpm_limit is not None and limit < self.tpm_limit
                    self.tpm_limit = limit
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            if pause and remaining is not None and remaining <= 0:
                reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.cool_down(reset)
        if lowered:
            self._recost()


def _on_wire(permit: Permit) -> float:
    return permit.wire_at if permit.wire_at is not None else permit.sent_at


def _exhausted(headers: Mapping[str, str] | None, tokens: int) -> float | None:
    """When the headers say there is no room left for a request of `tokens`: seconds until the
    exhausted limit resets (0.0 if they do not say); None when they show room, or say nothing."""
    if not headers:
        return None
    for kind, need in (("requests", 1), ("tokens", tokens)):
        remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
        if remaining is not None and remaining < need:
            return parse_reset(headers.get(f"x-ratelimit-reset-{kind}")) or 0.0
    return None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
