"""Smooth RPM/TPM pacing with one shared cool-down.

A GCRA ("virtual scheduling") pacer per budget: request k may leave once the theoretical
arrival time `tat` has come, and pushes `tat` on by its cost (1 request, or its estimated
tokens). Idle time is never banked, so a minute's budget never leaves in a burst and any
sub-minute window the provider enforces stays under its share. Callers queue FIFO behind one
lock; a refund (an attempt the server rejected, or tokens the estimate overcounted) or a
cool-down wakes the head of the queue to recompute its wait.

Adapts to the server: `x-ratelimit-limit-*` below our configured limit lowers our pace;
`x-ratelimit-remaining-*` at zero pauses everyone until `x-ratelimit-reset-*`.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


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


@dataclass
class Permit:
    """One attempt's share of the budgets, to refund if the server rejects it."""

    sent_at: float
    tokens: int
    refunded: bool = False


class RateLimiter:
    def __init__(self, rpm: float, tpm: float | None, *, headroom: float = 0.98,
                 clock: Callable[[], float] = time.monotonic):
        self.rpm_config, self.tpm_config = float(rpm), (float(tpm) if tpm else None)
        self.rpm_limit, self.tpm_limit = self.rpm_config, self.tpm_config
        self.headroom = headroom
        self.slack_s = 0.015  # timer lateness absorbed without drifting the schedule
        self.clock = clock
        self._tat_req = self._tat_tok = 0.0
        self._cool_until = 0.0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.cooldowns = 0
        self.waiting = 0

    @property
    def _req_interval(self) -> float:
        return 60.0 / (self.rpm_limit * self.headroom)

    @property
    def _tok_interval(self) -> float:
        return 60.0 / (self.tpm_limit * self.headroom) if self.tpm_limit else 0.0

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
                    now = self.clock()
                    wait = max(self._cool_until, self._tat_req, self._tat_tok) - now
                    if wait <= 0:
                        break
                    self._changed.clear()
                    try:
                        await asyncio.wait_for(self._changed.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                self._tat_req = self._next(self._tat_req, now) + self._req_interval
                self._tat_tok = self._next(self._tat_tok, now) + tokens * self._tok_interval
                return Permit(now, tokens)
        finally:
            self.waiting -= 1

    def _next(self, tat: float, now: float) -> float:
        """Keep the nominal schedule when we woke a little late (timer lateness must not add up
        to lost throughput); after real idleness, restart from now (idle time is not banked)."""
        return tat if 0.0 <= now - tat <= self.slack_s else max(tat, now)

    def refund(self, permit: Permit) -> None:
        """The server rejected this attempt without counting it (429, 5xx): give its slot back."""
        if permit.refunded:
            return
        permit.refunded = True
        now = self.clock()
        if self._tat_req > now:  # the freed slot may be used at once, banking at most `slack_s`
            self._tat_req = max(now - self.slack_s, self._tat_req - self._req_interval)
        self._give_tokens(permit.tokens, now)

    def reconcile(self, permit: Permit, actual_tokens: int) -> None:
        """Charge the server's `usage` instead of the estimate (refund or extra charge)."""
        if permit.refunded:
            return
        delta = permit.tokens - actual_tokens
        permit.tokens = actual_tokens
        if delta > 0:
            self._give_tokens(delta, self.clock())
        elif delta < 0 and self.tpm_limit:
            self._tat_tok = max(self._tat_tok, self.clock()) - delta * self._tok_interval

    def _give_tokens(self, tokens: int, now: float) -> None:
        if self.tpm_limit and self._tat_tok > now and tokens > 0:
            self._tat_tok = max(now - self.slack_s, self._tat_tok - tokens * self._tok_interval)
        self._changed.set()

    def cool_down(self, seconds: float) -> None:
        """Hold every caller back for `seconds` (one shared pause, extended, never stacked)."""
        until = self.clock() + max(0.0, seconds)
        if until > self._cool_until:
            self._cool_until = until
            self.cooldowns += 1
            self._changed.set()

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """Follow the server's own view of our limits when it sends x-ratelimit-* headers."""
        if not headers:
            return
        for kind in ("requests", "tokens"):
            limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
            if limit and limit > 0:
                if kind == "requests" and limit < self.rpm_config:
                    self.rpm_limit = limit
                elif kind == "tokens" and self.tpm_config and limit < self.tpm_config:
                    self.tpm_limit = limit
            remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is not None and remaining <= 0:
                reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.cool_down(reset)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
