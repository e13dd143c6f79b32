"""One bad answer fails its task, never the run: where the engine draws the line, and the breaker.

A backend raises `persd.runtime.errors.RequestFailed` for a failure that is about one request (its
content or its answer: context too long, refused content, a content-filter stop, an answer that cannot
be read even leniently after the retries). The one guard around each backend call
(engine/collect/guard.py) turns it into `TaskFailed`: that task (collect) or sample (eval) is recorded
as failed with the cause and the provider's message, journaled like any finished work (a rerun does not
send it again), and the run goes on. Everything else a backend raises (5xx or timeouts after the
retries, refused connections, 401/403/404, the budget) says the server, the connection or the settings
are broken: the run stops resumably, as before.

The breaker stops the run when failures are not explained by single requests: once the last
`threshold` requests to one backend (the student, or the teacher) all failed (a success of that
backend in between resets its count), that failure raises `TooManyFailures` (a PersdError: the run
stops, exit 1, rerun to resume) instead. Until a streak is settled, the failures in it are held: the
caller journals a failed task through `hold`, which writes it once that backend answers a request
again (the failures were the requests' own) or when the run ends normally (`flush`), and never where
the breaker trips (`drop`: they were the first signs of a broken server, and a rerun redoes them).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

from persd.runtime.errors import REQUEST_CAUSES, PersdError, RequestFailed

CAUSES: dict[str, str] = {
    **REQUEST_CAUSES,
    "prompt_too_long": "the teacher's prompt cannot fit its context even with the attempt and error cut "
                       "(failed before sending)",
}
DEFAULT_THRESHOLD = 20


class TaskFailed(Exception):
    """One request failed in a way its retry cannot change: only its task (or eval sample) fails.

    `cause` names why (CAUSES), `message` is what the backend said, `by` the resource. Deliberately not
    a PersdError: the handlers that stop the run on a PersdError let it pass."""

    def __init__(self, cause: str, message: str, by: str):
        self.cause, self.message, self.by = cause, message, by
        super().__init__(f"{by}: {cause}: {message}")

    @property
    def reason(self) -> str:
        """The line a collect task's result shows."""
        return f"{self.by} rejected the request: {self.message}"

    def record(self) -> dict:
        """The `failure` field of a result line."""
        return {"cause": self.cause, "by": self.by, "message": self.message[:2000]}


class TooManyFailures(PersdError):
    """The breaker tripped: many requests in a row failed, so the fault is not theirs."""


@dataclass
class FailurePolicy:
    """Counts failed requests by cause and holds the breaker. `threshold` 0 turns the breaker off."""

    threshold: int = DEFAULT_THRESHOLD
    streaks: Counter = field(default_factory=Counter)  # per backend: failed requests since its last success
    counts: Counter = field(default_factory=Counter)
    tripped: bool = False
    held: dict[str, list[Callable[[], None]]] = field(default_factory=lambda: defaultdict(list))

    def ok(self, by: str) -> None:
        self.streaks[by] = 0
        for write in self.held.pop(by, ()):  # the streak was the requests' own: their tasks failed for real
            write()

    def hold(self, by: str, write: Callable[[], None]) -> bool:
        """Journal a failed task's result with `write` once `by`'s streak is settled. False (the caller writes
        now) where no streak is open, e.g. a request of that backend succeeded since the failure."""
        if self.tripped:  # the run is stopping on a broken server: not this task's failure, redo it
            return True
        if not self.streaks[by]:
            return False
        self.held[by].append(write)
        return True

    def flush(self) -> None:
        """The run ended normally: every failure held is its task's."""
        for by in list(self.held):
            for write in self.held.pop(by):
                write()

    def drop(self) -> int:
        """The run stopped on a fault of a server: forget what was held (a rerun redoes those tasks)."""
        n = sum(len(v) for v in self.held.values())
        self.held.clear()
        return n

    def failed(self, exc: RequestFailed, by: str) -> TaskFailed:
        """Count one failed request; the task failure to raise, or TooManyFailures once the breaker trips."""
        self.counts[exc.cause] += 1
        self.streaks[by] += 1
        if self.threshold and self.streaks[by] >= self.threshold:
            self.tripped = True
            raise TooManyFailures(
                f"the last {self.streaks[by]} {by} requests all failed (last: {exc.cause}: {exc.message[:300]}): that "
                f"is not one bad request but a broken server or setting, so the run stops (the breaker's "
                f"threshold is {self.threshold})")
        return TaskFailed(exc.cause, exc.message, by)

    def report(self) -> dict:
        return {"threshold": self.threshold, "streaks": dict(self.streaks), "tripped": self.tripped,
                "held": sum(len(v) for v in self.held.values()),
                "failed_requests": dict(sorted(self.counts.items()))}


def cause_of(result: dict) -> str | None:
    """The failure cause a result line (collect) or a sample's line (eval) carries, if any."""
    failure = result.get("failure")
    if isinstance(failure, dict):
        return str(failure.get("cause") or "unknown")
    return None
