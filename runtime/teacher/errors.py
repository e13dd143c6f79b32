"""Teacher failures the engine can tell apart: a refused budget versus a teacher that cannot answer."""
from __future__ import annotations

from persd.runtime.errors import PersdError, RequestFailed


class TeacherError(PersdError):
    """A non-retryable answer (400/401/403/404) or retries exhausted; carries status, body and URL."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "", url: str = ""):
        self.status, self.body, self.url = status, body, url
        super().__init__(message)


class TeacherRequestFailed(TeacherError, RequestFailed):
    """One teacher request failed for good for its own content (`cause`: context too long, content
    filter, undecodable answer, ...): that task fails, the run goes on. Still a TeacherError, so code
    that stops on every teacher error keeps doing so."""

    def __init__(self, cause: str, message: str, *, status: int | None = None, body: str = "", url: str = ""):
        self.cause, self.message = cause, message
        self.status, self.body, self.url = status, body, url
        PersdError.__init__(self, f"{cause}: {message}")


class BudgetExceeded(PersdError):
    """The next request could push spending past `max_cost_usd`: it was not sent.

    Sticky: once raised, every later uncached request is refused too, so a job stops cleanly
    while requests already in flight finish (the overspend is bounded by what was in flight).
    """

    def __init__(self, spent_usd: float, reserved_usd: float, request_usd: float, limit_usd: float):
        self.spent_usd, self.reserved_usd = spent_usd, reserved_usd
        self.request_usd, self.limit_usd = request_usd, limit_usd
        super().__init__(
            f"teacher budget reached: spent ${spent_usd:.4f} (+${reserved_usd:.4f} in flight); "
            f"the next request could cost up to ${request_usd:.4f}, over max_cost_usd ${limit_usd:.4f} "
            f"(the max-cost budget)"
        )
