"""The one place a backend's exception is judged: this request's failure, or the backend's.

Every call of the student, the sandbox and the teacher (collect, paper mode and eval alike) runs
under `guard(resource)`:

- a failure of this one request that retrying cannot change (`request_failure` says which: today
  a request the student rejects, too long a prompt, say) raises `TaskFailed`: its task ends with
  outcome `error` (an eval sample with status `error`) and the run goes on;
- anything else (a teacher refusing the key, the budget reached, a student unreachable after its
  retries, a broken sandbox) is the backend's failure and raises `BackendFailure`: the run stops with
  resumable state. A teacher whose journal cannot be written is a `DiskError` (what fills a disk).

Cancellation passes through untouched.
"""
from __future__ import annotations

from persd.engine.collect.shards import DiskError, disk_error
from persd.runtime.errors import PersdError
from persd.runtime.student.base import RequestRejected


class BackendFailure(PersdError):
    """A resource failed for good (not a task's fault): the run stops; rerun to resume."""


class TaskFailed(Exception):
    """One request failed in a way its retry cannot change: only its task fails.

    `reason` is the line the task's result shows; `cause` the backend's exception."""

    def __init__(self, resource: str, cause: BaseException):
        self.resource, self.cause = resource, cause
        super().__init__(f"{resource} rejected the request: {cause}")

    @property
    def reason(self) -> str:
        return str(self)


def request_failure(resource: str, exc: BaseException) -> bool:
    """True when `exc` fails this request only (its task fails, the run goes on); False when the
    backend itself is broken (the run stops). The one classification of backend failures."""
    return isinstance(exc, RequestRejected)


class guard:
    """`async with guard("student", task_id):` one backend call; its failure re-raised as `TaskFailed`
    or `BackendFailure` (or `DiskError` for an OSError writing `journal`, the teacher's)."""

    __slots__ = ("resource", "task_id", "journal")

    def __init__(self, resource: str, task_id: str | None = None, journal: str | None = None):
        self.resource, self.task_id, self.journal = resource, task_id, journal

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, (TaskFailed, BackendFailure, DiskError)):
            return False  # no failure, a cancellation, or one judged already: as it is
        if request_failure(self.resource, exc):
            raise TaskFailed(self.resource, exc) from exc
        if self.journal is not None and isinstance(exc, OSError):
            raise disk_error(exc, self.journal) from exc
        if isinstance(exc, PersdError):
            raise BackendFailure(f"{self.resource}: {exc}") from exc
        where = f" on task {self.task_id}" if self.task_id else ""
        raise BackendFailure(f"{self.resource} failed{where}: {type(exc).__name__}: {exc}") from exc
