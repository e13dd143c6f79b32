"""Errors that end a command with a message instead of a traceback.

`PersdError` is a failure with a known cause (exit 1); `UsageError` is the user's
mistake: a bad flag, a bad file, a bad line (exit 2). Both print one clear message.
"""
from __future__ import annotations

import re
from typing import Callable


class PersdError(Exception):
    exit_code = 1


class UsageError(PersdError):
    exit_code = 2


class InputError(UsageError):
    """A bad record in an input file: names the file, the line and the field."""

    def __init__(self, path: str, line: int, message: str, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")


class ConfigError(UsageError):
    """A configuration value that cannot work. It names the FIELD (runtime knows nothing of flags);
    the command line renames it to the flag or the file and key the user wrote. The message may name
    other fields of the same section as `{field}`: they are renamed the same way."""

    def __init__(self, field: str, message: str, section: str = ""):
        self.field, self.template, self.section = field, message, section
        super().__init__(f"{section} {field}: {self.message}" if section else f"{field}: {self.message}")

    def text(self, name_of: Callable[[str], str] = str) -> str:
        return re.sub(r"\{([a-z_.]+)\}", lambda m: name_of(m.group(1)), self.template)

    @property
    def message(self) -> str:
        return self.text()

    def renamed(self, name: str, name_of: Callable[[str], str] = str) -> "UsageError":
        return UsageError(f"{name}: {self.text(name_of)}")


# -- one request's failure ---------------------------------------------------------------------

# Why one request failed for good, as `RequestFailed.cause` names it. Each is about *this* request
# (its content, or its answer): sending it again gets the same answer, other requests may be fine.
REQUEST_CAUSES: dict[str, str] = {
    "context_too_long": "the prompt (with the tokens asked for) is over the model's context",
    "too_large": "the request body is over the server's size limit (HTTP 413)",
    "invalid_request": "the server refused this request's content (HTTP 400/422)",
    "content_filter": "the provider's content filter refused or cut the answer",
    "undecodable": "the answer could not be read, even leniently, after the retries",
    "unsupported_parameter": "the model refuses a parameter persd could not adapt",
    "rejected": "the student refused this request (prompt too long for it, bad parameters)",
}


class RequestFailed(PersdError):
    """One request failed for a reason that cannot change on retry and is not the server's fault:
    the task (or sample) it belongs to fails with `cause`, the run goes on. `message` is what the
    provider said; `status` its HTTP status where there was one."""

    def __init__(self, cause: str, message: str, *, status: int | None = None):
        self.cause, self.message, self.status = cause, message, status
        super().__init__(f"{cause}: {message}")


_CONTEXT_CODES = ("context_length_exceeded", "string_above_max_length", "context_window_exceeded")
_CONTEXT_WORDS = ("maximum context length", "context length", "context window", "too many tokens",
                  "prompt is too long", "reduce the length")
_FILTER_CODES = ("content_filter", "content_policy_violation", "invalid_prompt", "responsible_ai_policy_violation")
_PARAM_CODES = ("unsupported_parameter", "unsupported_value")
REQUEST_STATUS = frozenset({400, 413, 422})  # the request's content, never the server's state


def classify_status(status: int, code: str, message: str) -> str | None:
    """The cause of a non-retryable answer that is about this request, or None where the status says
    something about the whole run instead (401 key, 403 access, 404 model or URL: every request
    would get it)."""
    if status not in REQUEST_STATUS:
        return None
    low = f"{code} {message}".lower()
    if status == 413:
        return "too_large"
    if code in _CONTEXT_CODES or any(w in low for w in _CONTEXT_WORDS):
        return "context_too_long"
    if code in _PARAM_CODES or "unsupported parameter" in low or "unsupported value" in low:
        return "unsupported_parameter"
    if code in _FILTER_CODES or "content management policy" in low or "content filter" in low:
        return "content_filter"
    return "invalid_request"
