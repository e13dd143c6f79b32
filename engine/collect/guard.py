"""The one place a backend's exception is judged: this request's failure, or the backend's.

Every call of the student, the sandbox and the teacher (collect, paper mode and eval alike) runs
under `guard(resource)` (engine/collect/steps.py):

- a failure of this one request that retrying cannot change (a `RequestFailed` of the runtime: too
  long a context, refused content, a content-filter stop, an answer unreadable even leniently;
  persd.engine.failures) raises `TaskFailed`: its task ends with outcome `error` or `unresolved` (an
  eval sample with status `error`) and the run goes on;
- anything else (a teacher refusing the key, the budget reached, a student unreachable after its
  retries, a broken sandbox) is the backend's failure and raises `BackendFailure`: the run stops with
  resumable state. A teacher whose journal cannot be written is a `DiskError` (what fills a disk).

Cancellation passes through untouched. Where the run counts failed requests (the breaker that stops
the run once every recent request of a backend failed), it hands the guard its `FailurePolicy`: the
guard reports each success (`ok`) and lets it turn each request failure into the `TaskFailed` to
raise (`failed`, which raises `TooManyFailures` instead once the breaker trips).
"""
from __future__ import annotations

from persd.engine.collect.shards import DiskError, disk_error
from persd.engine.failures import FailurePolicy, TaskFailed
from persd.runtime.errors import PersdError, RequestFailed


class BackendFailure(PersdError):
    """A resource failed for good (not a task's fault): the run stops; rerun to resume."""


def request_failure(resource: str, exc: BaseException) -> str | None:
    """The cause when `exc` fails this request only (its task fails, the run goes on); None when the
    backend itself is broken (the run stops). The one classification of backend failures: the
    runtime's RequestFailed (runtime/errors.py draws the line per status and body)."""
    if isinstance(exc, RequestFailed):
        return exc.cause or "rejected"
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
            message = getattr(exc, "message", None) or str(exc)
            if self.failures is not None and isinstance(exc, RequestFailed):
                raise self.failures.failed(exc, self.resource) from exc
            raise TaskFailed(cause, message, self.resource) from exc
        if self.journal is not None and isinstance(exc, OSError):
            raise disk_error(exc, self.journal) from exc
        if isinstance(exc, PersdError):
            raise BackendFailure(f"{self.resource}: {exc}") from exc
        where = f" on task {self.task_id}" if self.task_id else ""
        raise BackendFailure(f"{self.resource} failed{where}: {type(exc).__name__}: {exc}") from exc
