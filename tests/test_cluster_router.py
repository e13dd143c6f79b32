"""The router's waiting, without a cluster: replicas are stand-ins for Ray actor handles (`method.remote(...)`
returns an awaitable, as Ray's ObjectRef is). A freed slot wakes one waiting call, not every one, and a call
cancelled after it was woken passes its turn on, so no freed slot is left unused."""
from __future__ import annotations

import asyncio

import pytest
from persd.runtime.cluster.router import Replica, Router

pytest.importorskip("ray")  # the router catches Ray's exception types


class Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return self.fn(*args)


class Actor:
    """A replica that answers `generate(x)` once the test opens its gate, counting what it holds at once."""

    def __init__(self, gate: asyncio.Event):
        self.gate, self.in_flight, self.peak = gate, 0, 0
        self.generate, self.ping = Method(self._generate), Method(self._ping)

    async def _ping(self):
        return "node"

    async def _generate(self, x):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)  # an answer comes back in a later turn of the loop, as a remote one does
            return x * 2
        finally:
            self.in_flight -= 1


async def yield_until(cond, limit: int = 10_000) -> None:
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0)  # let the other tasks run (a turn of the loop, not a timer)
    raise AssertionError("the condition never held")


async def test_a_freed_slot_wakes_one_waiting_call_not_all():
    gate = asyncio.Event()
    actors = [Actor(gate), Actor(gate)]
    router = Router("student", [Replica(f"r{i}", a, bound=3) for i, a in enumerate(actors)], wait_s=5)
    await router.start(wait_all_s=5)
    waits = 0
    wait = router._wait_change

    async def counted(timeout):
        nonlocal waits
        waits += 1
        await wait(timeout)

    router._wait_change = counted
    calls = [asyncio.ensure_future(router.call("generate", i)) for i in range(200)]
    await yield_until(lambda: len(router._waiters) == 194)  # 6 in flight (2 replicas x 3), the rest waiting
    gate.set()
    assert await asyncio.gather(*calls) == [2 * i for i in range(200)]
    assert max(a.peak for a in actors) == 3  # each replica's bound held
    # each waiting call waits about once; waking every waiter on every answer made this ~200 x 194 / 2
    assert waits < 3 * 200, waits
    await router.close()


async def test_a_call_cancelled_after_its_wake_passes_the_slot_on():
    gate = asyncio.Event()
    gate.set()  # the replica answers at once
    router = Router("student", [Replica("r0", Actor(gate), bound=1)], wait_s=5)
    await router.start(wait_all_s=5)
    stats = router.replicas[0].stats
    stats.in_flight = 1  # a call holds the only slot
    woken, next_in_line = (asyncio.ensure_future(router.call("generate", k)) for k in (2, 3))
    await yield_until(lambda: len(router._waiters) == 2)
    stats.in_flight = 0  # that call ended: its slot
    router._wake(1)  # ... wakes the oldest waiter,
    woken.cancel()  # ... which is cancelled before it runs: nothing else will ever wake the next one
    with pytest.raises(asyncio.CancelledError):
        await woken
    assert await asyncio.wait_for(next_in_line, 10) == 6  # a guard, not a timer: it fails only if stuck
    await router.close()
