"""One limiter per resource: a concurrency bound plus the figures the progress display and benchmarks read.

    student = Limiter("student", 64)
    async with student:
        out = await backend.generate(req)

Stages overlap by themselves: a task waiting on the teacher holds no student slot.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque


class Limiter:
    __slots__ = ("name", "capacity", "_sem", "in_use", "waiting", "done", "busy_s", "_since", "_recent")

    def __init__(self, name: str, capacity: int):
        if capacity < 1:
            raise ValueError(f"{name}: capacity must be >= 1")
        self.name = name
        self.capacity = capacity
        self._sem = asyncio.Semaphore(capacity)
        self.in_use = 0
        self.waiting = 0
        self.done = 0
        self.busy_s = 0.0  # sum over slots of time held
        self._since: float = 0.0
        self._recent: deque[float] = deque(maxlen=4096)  # completion times, for a per-second rate

    async def __aenter__(self) -> "Limiter":
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.in_use += 1
        return self

    async def __aexit__(self, *exc) -> None:
        self.in_use -= 1
        self.done += 1
        self._sem.release()

    def timed(self) -> "_Timed":
        return _Timed(self)

    def rate(self, window_s: float = 10.0) -> float:
        """Completions per second over the last `window_s` seconds."""
        now = time.monotonic()
        recent = self._recent
        while recent and now - recent[0] > window_s:
            recent.popleft()
        return len(recent) / window_s if recent else 0.0

    def snapshot(self) -> dict:
        return {
            "capacity": self.capacity,
            "in_use": self.in_use,
            "waiting": self.waiting,
            "done": self.done,
            "busy_s": round(self.busy_s, 3),
            "per_s": round(self.rate(), 2),
        }


class _Timed:
    """`async with limiter.timed():` also accounts busy time and the completion rate."""

    __slots__ = ("lim", "t0")

    def __init__(self, lim: Limiter):
        self.lim = lim
        self.t0 = 0.0

    async def __aenter__(self) -> Limiter:
        await self.lim.__aenter__()
        self.t0 = time.monotonic()
        return self.lim

    async def __aexit__(self, *exc) -> None:
        t1 = time.monotonic()
        self.lim.busy_s += t1 - self.t0
        self.lim._recent.append(t1)
        await self.lim.__aexit__(*exc)
