"""The requests of the last window as they actually left: the hard check behind the pacer's schedule.

The schedule (`persd.runtime.teacher.limiter`) decides when a request *may* leave; on a loaded
machine it leaves later: the event loop runs the sending code late, a new connection is set up
first. A request that leaves late sits closer to the ones after it, so a window the schedule kept
within the limit can still reach the server over it (measured: 21 of 20 in a 1 s window, at load 4
to 10 on 2 CPUs). The log keeps each request's time on the wire (`wired`, from the HTTP client's
trace; until then the time its permit was granted) and holds a request back until the requests
and tokens that left in the last `horizon` seconds leave room for it. The schedule keeps it from
binding on an idle machine; it only delays the requests that a late one would otherwise crowd.
"""
from __future__ import annotations

from collections import deque
from typing import Protocol


class Sent(Protocol):
    """What the log reads from a permit."""

    sent_at: float           # granted (provisional time on the wire)
    wire_at: float | None    # written to the socket, once known
    tokens: int


class WireLog:
    """Requests and tokens that left in the last `horizon` seconds, by their time on the wire."""

    def __init__(self) -> None:
        self._wired: deque[tuple[float, Sent]] = deque()  # in wire order (times come from one clock)
        self._pending: dict[int, Sent] = {}                 # granted, not written yet: at their grant time
        self._tokens = 0                                     # tokens of `_wired`, as the permits say now

    def granted(self, permit: Sent) -> None:
        self._pending[id(permit)] = permit

    def wired(self, permit: Sent, at: float) -> None:
        """`permit`'s request was written at `at` (the first time only)."""
        if permit.wire_at is not None:
            return
        permit.wire_at = at
        self._pending.pop(id(permit), None)
        self._wired.append((at, permit))
        self._tokens += permit.tokens

    def dropped(self, permit: Sent) -> None:
        """`permit`'s request never left (refunded): it takes no room."""
        self._pending.pop(id(permit), None)

    def retokened(self, permit: Sent, old: int) -> None:
        """`permit.tokens` changed from `old` (the answer's usage replaced the estimate)."""
        # still in the log: wired, and not older than its oldest entry (entries leave from the old end)
        if permit.wire_at is not None and self._wired and permit.wire_at >= self._wired[0][0]:
            self._tokens += permit.tokens - old

    def wait(self, now: float, horizon: float, max_requests: float, max_tokens: float | None, tokens: int) -> float:
        """Seconds until one more request of `tokens` leaves every window of `horizon` seconds within
        `max_requests` and `max_tokens` (0 when it fits now). A request alone in the window always fits,
        however large: the schedule spaces large requests, the log only keeps late ones apart."""
        start = now - horizon
        while self._wired and self._wired[0][0] <= start:
            _, old = self._wired.popleft()
            self._tokens -= old.tokens
        for key in [k for k, p in self._pending.items() if p.sent_at <= start]:
            del self._pending[key]  # not written a window after its grant: it counts when it is
        count = len(self._wired) + len(self._pending) + 1
        total = self._tokens + sum(p.tokens for p in self._pending.values()) + tokens

        def fits() -> bool:
            return count <= 1 or (count <= max(1, int(max_requests + 1e-9))
                                  and (max_tokens is None or total <= max_tokens))

        if fits():
            return 0.0
        # the oldest leave the window first: wired ones in order, pending ones at their grant time
        oldest = sorted([(at, p) for at, p in self._wired] + [(p.sent_at, p) for p in self._pending.values()],
                        key=lambda item: item[0]) if self._pending else self._wired
        for at, p in oldest:
            count -= 1
            total -= p.tokens
            if fits():
                return max(0.0, at - start)
        return 0.0  # not reached: the loop ends with count == 1
