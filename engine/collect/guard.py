"""The one place a backend's exception is judged: this request's failure, or the backend's.

Every call of the student, the sandbox and the teacher (collect, paper mode and eval alike) runs
under `guard(resource)` (engine/collect/steps.py):

- a failure of this one request that retrying cannot change (`request_failure` names its cause:
  today a request the student rejects, too long a prompt, say) raises `TaskFailed`: its task ends
  with outcome `error` (an eval sample with status `error`) and the run goes on;
- anything else (a teacher refusing the key, the budget reached, a student unreachable after its
  retries, a broken sandbox) is the backend's failure and raises `BackendFailure`: the run stops with
  resumable state. A teacher whose journal cannot be written is a `DiskError` (what fills a disk).

Cancellation passes through untouched. Where the run counts failed requests (a breaker that stops
the run once every recent request of a backend failed), it hands the guard a `FailurePolicy`: the
guard reports each success (`ok`) and lets it turn each request failure into the `TaskFailed` to
raise (`failed`, which may raise instead to stop the run).
"""
from __future__ import annotations

from typing import Protocol

from persd.engine.collect.shards import DiskError, disk_error
from persd.runtime.errors import PersdError
from persd.runtime.student.base import RequestRejected


class BackendFailure(PersdError):
    """A resource failed for good (not a task's fault): the run stops; rerun to resume."""


class TaskFailed(Exception):
    """One request failed in a way its retry cannot change: only its task (or eval sample) fails.

    `cause` names why (`request_failure`), `message` is what the backend said, `by` the resource.
    Deliberately not a PersdError: the handlers that stop the run on a PersdError let it pass."""

    def __init__(self, cause: str, message: str, by: str):
        self.cause, self.message, self.by = cause, message, by
        super().__init__(f"{by}: {cause}: {message}")

    @property
    def reason(self) -> str:
        """The line a collect task's result shows."""
        return f"{self.by} rejected the request: {self.message}"

    def record(self) -> dict:
        return {"cause": self.cause, "by": self.by, "message": self.message[:2000]}


class FailurePolicy(Protocol):
    """Counts a run's failed requests per resource (and may stop the run when they are not one request's fault)."""

    def ok(self, by: str) -> None: ...

    def failed(self, exc: Exception, by: str) -> TaskFailed: ...


def request_failure(resource: str, exc: BaseException) -> str | None:
    """The cause when `exc` fails this request only (its task fails, the run goes on); None when the
    backend itself is broken (the run stops). The one classification of backend failures."""
    if isinstance(exc, RequestRejected):
        return getattr(exc, "cause", None) or "rejected"
    return None


class guard:
    """`async with guard("student", task_id):` one backend call; its failure re-raised as `TaskFailed`
    or `BackendFailure` (or `DiskError` for an OSError writing `journal`, the teacher's)."""

    __slots__ = ("resource", "task_id", "journal", "failures")

    def __init__(self, resource: str, task_id: str | None = None, journal: str | None = None,
                 failures: FailurePolicy | None = None):
        self.resource, self.task_id, self.journal, self.failures = resource, task_id, journal, failures

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            if self.failures is not None:
                self.failures.ok(self.resource)
            return False
        if not isinstance(exc, Exception) or isinstance(exc, (TaskFailed, BackendFailure, DiskError)):
            return False  # a cancellation, or a failure judged already: as it is
        cause = request_failure(self.resource, exc)
        if cause is not None:
            if self.failures is not None:
                raise self.failures.failed(exc, self.resource) from exc
            raise TaskFailed(cause, str(exc), self.resource) from exc
        if self.journal is not None and isinstance(exc, OSError):
            raise disk_error(exc, self.journal) from exc
        if isinstance(exc, PersdError):
            raise BackendFailure(f"{self.resource}: {exc}") from exc
        where = f" on task {self.task_id}" if self.task_id else ""
        raise BackendFailure(f"{self.resource} failed{where}: {type(exc).__name__}: {exc}") from exc
