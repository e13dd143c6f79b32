"""Sends each call to the live replica with the fewest in flight, each replica bounded; survives replicas dying.

A replica is one Ray actor. Its states: `starting` (created, not yet answered a ping: loading its model,
or waiting for room on the cluster), `up` (takes work), `down` (a call failed because the actor or its
node died: Ray is restarting it; a probe pings it until it answers, then it is `up` again and its
restart is counted), `dead` (Ray will not restart it). A call that fails because its replica went down
is sent again to another one: the caller (the engine's journal) decides what is done, so nothing is lost
and, the driver holding the teacher, nothing is paid twice. When no replica is up for `wait_s` seconds,
the waiting calls fail with NoReplicaLeft.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from persd.runtime.errors import PersdError

log = logging.getLogger("persd.cluster")
PROBE_EVERY_S = 0.5
RATE_WINDOW_S = 10.0


class NoReplicaLeft(PersdError):
    """No replica of a pool has been up for the pool's wait: the cluster lost them all."""


@dataclass
class ReplicaStats:
    """One replica's figures (the live display's rows, the manifest's metrics)."""

    name: str
    bound: int
    state: str = "starting"
    node: str = ""
    in_flight: int = 0
    done: int = 0
    resent: int = 0  # calls it lost (it died under them), sent again elsewhere
    restarts: int = 0
    done_since_up: int = 0  # since it last came up (a restarted replica taking work again)
    busy_slot_s: float = 0.0  # integral of in_flight over time
    up_s: float = 0.0  # time spent up
    _since: float = field(default_factory=time.monotonic)
    _recent: deque = field(default_factory=lambda: deque(maxlen=4096))

    def _advance(self) -> None:
        now = time.monotonic()
        dt = now - self._since
        self.busy_slot_s += self.in_flight * dt
        if self.state == "up":
            self.up_s += dt
        self._since = now

    def rate(self) -> float:
        now = time.monotonic()
        while self._recent and now - self._recent[0] > RATE_WINDOW_S:
            self._recent.popleft()
        return len(self._recent) / RATE_WINDOW_S

    def row(self) -> dict[str, Any]:
        self._advance()
        util = self.busy_slot_s / (self.bound * self.up_s) if self.up_s > 0 else 0.0
        return {"name": self.name, "node": self.node, "state": self.state, "in_flight": self.in_flight,
                "bound": self.bound, "done": self.done, "per_s": round(self.rate(), 2), "restarts": self.restarts,
                "done_since_up": self.done_since_up, "resent": self.resent,
                "busy_slot_s": round(self.busy_slot_s, 3), "up_s": round(self.up_s, 3),
                "utilisation": round(min(1.0, util), 4)}


class Replica:
    def __init__(self, name: str, handle: Any, bound: int):
        self.handle = handle
        self.stats = ReplicaStats(name=name, bound=bound)
        self.probe: asyncio.Task | None = None

    def set_state(self, state: str) -> None:
        self.stats._advance()
        self.stats.state = state


class Router:
    """`await router.call("generate", request)`: the method's result, from whichever replica could serve it."""

    def __init__(self, kind: str, replicas: list[Replica], wait_s: float):
        self.kind = kind
        self.replicas = replicas
        self.wait_s = wait_s
        self._waiters: deque[asyncio.Future] = deque()  # calls and start() waiting for a change; see _wait_change
        self._none_up_since: float | None = time.monotonic()
        self.start_error: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, wait_all_s: float) -> None:
        """Ping every replica (each loads its backend on its first ping); return once all are up (or gone
        with their node), or once `wait_all_s` passed with at least one up (the others join when they
        answer). A replica whose start raises an error of its own (a wrong model path) fails the start
        with that error."""
        for r in self.replicas:
            r.probe = asyncio.create_task(self._probe(r, first=True))
        deadline = time.monotonic() + wait_all_s
        while True:
            if self.start_error is not None:
                raise self.start_error
            up = sum(r.stats.state == "up" for r in self.replicas)
            dead = sum(r.stats.state == "dead" for r in self.replicas)
            left = deadline - time.monotonic()
            if up and (up + dead == len(self.replicas) or left <= 0):
                return
            if dead == len(self.replicas):
                raise NoReplicaLeft(f"no Ray {self.kind} replica could start: the node(s) each was placed on are "
                                    f"gone (see `ray status`)")
            if left <= 0 and not up:
                raise NoReplicaLeft(f"no Ray {self.kind} replica started within {wait_all_s:g} s (the cluster "
                                    f"may lack the resources asked for each: see `ray status`)")
            await self._wait_change(max(0.05, left))

    def add(self, replica: Replica) -> None:
        """A replica started mid-run (a node joined): it takes work once it answers its first ping."""
        self.replicas.append(replica)
        if not self._closed:
            replica.probe = asyncio.create_task(self._probe(replica, first=False, new=True))

    async def close(self) -> None:
        """Stop every probe; a call failing after this starts none (the run is ending)."""
        self._closed = True
        probes = [r.probe for r in self.replicas if r.probe is not None and not r.probe.done()]
        for p in probes:
            p.cancel()
        await asyncio.gather(*probes, return_exceptions=True)

    # ------------------------------------------------------------------ calls

    async def call(self, method: str, *args: Any) -> Any:
        import ray

        while True:
            r = await self._pick()
            st = r.stats
            st._advance()
            st.in_flight += 1
            try:
                result = await getattr(r.handle, method).remote(*args)
            except ray.exceptions.RayTaskError as exc:  # the method itself raised: the caller's error
                raise _cause(exc) from None
            except ray.exceptions.RayError as exc:  # the actor (or its node) died under the call, or cannot be placed
                _raise_if_cancelled()
                st.resent += 1
                self._went_down(r, exc)
                continue
            finally:
                st._advance()
                st.in_flight -= 1
                self._wake(1)  # one slot freed: one waiting call, not all of them
            st.done += 1
            st.done_since_up += 1
            st._recent.append(time.monotonic())
            return result

    async def _pick(self) -> Replica:
        while True:
            up = [r for r in self.replicas if r.stats.state == "up"]
            free = [r for r in up if r.stats.in_flight < r.stats.bound]
            if free:
                return min(free, key=lambda r: (r.stats.in_flight / r.stats.bound, r.stats.in_flight))
            if up:
                await self._wait_change(None)
                continue
            since = self._none_up_since or time.monotonic()
            left = self.wait_s - (time.monotonic() - since)
            if left <= 0:
                raise NoReplicaLeft(self._lost_message())
            await self._wait_change(left)

    def _lost_message(self) -> str:
        dead = sum(r.stats.state == "dead" for r in self.replicas)
        down = len(self.replicas) - dead
        return (f"no Ray {self.kind} replica has been up for {self.wait_s:g} s ({down} waiting for Ray to restart "
                f"them where the cluster has room, {dead} gone for good)")

    def _notify(self) -> None:
        """A replica's state changed (up, down, dead, a start error): every waiter looks again."""
        self._wake(None)

    def _wake(self, n: int | None) -> None:
        """Wake the first `n` waiters (None: all), oldest first. A freed slot wakes one: with hundreds of calls
        waiting, waking them all on every answer made the driver's CPU per call grow with the queue."""
        while self._waiters and (n is None or n > 0):
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                if n is not None:
                    n -= 1

    async def _wait_change(self, timeout: float | None) -> None:
        """Until woken (a freed slot, a change of state) or `timeout` seconds. A future per waiter, not a
        Condition: the loop is the only thread, so nothing changes between a check and this wait, and a
        waiter cancelled here has no lock to take back (Python 3.11's Condition.wait can hang a cancelled
        waiter on it). A waiter cancelled after it was woken passes the wake on, so no freed slot is lost."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if timeout is None:
                await fut
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, timeout)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._wake(1)
            raise

    def _any_up(self) -> bool:
        return any(r.stats.state == "up" for r in self.replicas)

    def _went_down(self, r: Replica, exc: BaseException) -> None:
        if r.stats.state != "up":
            return
        log.warning("%s replica %s went down: %s", self.kind, r.stats.name, str(exc).splitlines()[0][:200])
        gone = _gone_for_good(exc)
        r.set_state("dead" if gone else "down")
        if not self._any_up():
            self._none_up_since = time.monotonic()
        if not gone and not self._closed:
            r.probe = asyncio.create_task(self._probe(r, first=False))

    async def _probe(self, r: Replica, first: bool, new: bool = False) -> None:
        """Ping until the replica answers (then it is up), or until Ray says it is gone for good."""
        import ray

        while not self._closed:
            try:
                node = await r.handle.ping.remote()
            except ray.exceptions.RayTaskError as exc:  # its backend would not start
                _raise_if_cancelled()
                if first and self.start_error is None:
                    self.start_error = _cause(exc)
                    self._notify()
                    return
                log.warning("%s replica %s failed to restart: %s", self.kind, r.stats.name, exc)
            except ray.exceptions.ActorUnschedulableError:  # pinned to a node that is gone: the others serve
                r.set_state("dead")
                self._notify()
                return
            except ray.exceptions.ActorDiedError as exc:
                if first and self.start_error is None and "max_restarts" not in str(exc):
                    self.start_error = PersdError(f"a Ray {self.kind} replica died while starting: "
                                                  f"{str(exc).splitlines()[0][:300]}")
                r.set_state("dead")
                self._notify()
                return
            except ray.exceptions.RayError:  # restarting: ask again shortly
                _raise_if_cancelled()
            else:
                if not first and not new:
                    r.stats.restarts += 1
                r.stats.node = str(node)
                r.stats.done_since_up = 0
                r.set_state("up")
                self._none_up_since = None
                self._notify()
                return
            await asyncio.sleep(PROBE_EVERY_S)

    def rows(self) -> list[dict[str, Any]]:
        return [r.stats.row() for r in self.replicas]


def _raise_if_cancelled() -> None:
    """Ray may report a cancelled await of an actor call as one of its own errors (the call was cancelled):
    a task asked to stop stops, rather than taking it for a replica gone down and trying again forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _gone_for_good(exc: BaseException) -> bool:
    """Ray will not bring this actor back: it is pinned to a node that is gone. (A died actor is probed:
    the probe's answer says whether Ray restarts it.)"""
    import ray

    return isinstance(exc, ray.exceptions.ActorUnschedulableError)


def _cause(exc: BaseException) -> BaseException:
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else PersdError(str(exc).splitlines()[-1][:500])
