"""Retrying JSON POSTs for OpenAI-compatible servers, shared by the teacher and the student's `openai` backend.

One place decides what is transient (429, 408, 409, 5xx, timeouts, dropped or truncated
connections, bodies that are not JSON or fail `validate`) and how long to wait (exponential
back-off with jitter, or the server's own `Retry-After`), so no caller re-invents it. Hooks let
a caller pace each attempt (`before_attempt`) and react to every answer (`after_attempt`: a
shared cool-down after a 429, rate-limit headers, refunds), without this module knowing why.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
import orjson
from persd.runtime.errors import PersdError, classify_status
from persd.runtime.options import opt, positive_float, positive_int

RETRYABLE_STATUS = frozenset({408, 409, 429})
BODY_LIMIT = 2000  # characters of a server's body kept in errors


@dataclass
class RetryPolicy:
    """Bounded retries: at most `max_attempts` sends and `deadline_s` seconds per request.

    Time a caller spends waiting in `before_attempt` (its rate limiter) is not counted against
    the deadline: a request queued behind a long job must not expire before it is ever sent.
    """

    max_attempts: int = opt(8, help="sends per request before the run stops (resumably)", changes_results=False,
                            type=positive_int)
    base_delay_s: float = opt(0.5, help="first retry backoff in seconds, doubling up to max_delay_s",
                              changes_results=False, type=positive_float)
    max_delay_s: float = opt(30.0, help="cap on one retry backoff, in seconds", changes_results=False,
                             type=positive_float)
    deadline_s: float = opt(600.0, help="seconds one request may spend on retries (rate-limit waits excluded)",
                            changes_results=False, type=positive_float)
    request_timeout_s: float = opt(300.0, help="seconds one send waits for the answer before it is retried (a "
                                   "server that accepts and never answers)", changes_results=False,
                                   type=positive_float)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `attempt` (1-based): exponential, capped, 'equal jitter'."""
        cap = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return cap * (0.5 + 0.5 * (rng or random).random())


DEFAULT_RETRY = RetryPolicy()


OVERLOAD_STATUS = frozenset({429, 503, 529})  # "too much right now", as opposed to a fault


@dataclass
class AIMD:
    """A share in (floor, 1] of what a caller may send: cut multiplicatively on an overload answer,
    recovered additively with time (as TCP's congestion window, per second instead of per RTT).

    `cut(sent_at)` reacts at most once per round trip: only an overload answer to an attempt sent
    *after* the last cut counts, so the answers to the burst already in flight when the server
    got overloaded cut once, not once each. Sparse overloads (a provider's random 429s) thus cost
    a small dip, a sustained one halves and halves again down to `floor` within a few round trips.
    `clock` is shared with the caller so tests can drive it.
    """

    decrease: float = 0.9        # share kept at each cut
    recover_per_s: float = 0.5   # share regained per second after a cut
    floor: float = 0.05
    clock: Callable[[], float] = time.monotonic
    cuts: int = field(default=0, init=False)
    _value: float = field(default=1.0, init=False)             # the share right after the last cut
    _cut_at: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        if not (0 < self.decrease < 1 and self.recover_per_s > 0 and 0 < self.floor <= 1):
            raise ValueError("AIMD needs 0 < decrease < 1, recover_per_s > 0 and 0 < floor <= 1")

    @property
    def value(self) -> float:
        """The share now: 1.0 when no overload was seen lately."""
        return min(1.0, self._value + self.recover_per_s * max(0.0, self.clock() - self._cut_at))

    def cut(self, sent_at: float) -> bool:
        """An attempt sent at `sent_at` met an overload: cut the share unless it was already cut
        after that attempt left. Returns whether it cut."""
        if sent_at < self._cut_at:
            return False
        now = self.clock()
        self._value = max(self.floor, self.value * self.decrease)
        self._cut_at = now
        self.cuts += 1
        return True


class AdaptiveGate:
    """At most `limit * aimd.value` (at least 1) requests in flight: a server that answers
    429/503 because it is busy gets fewer concurrent requests, and the refused ones wait here,
    before `post_json` spends an attempt on them (time in `before_attempt` is not counted
    against the deadline), instead of all coming back as soon as their Retry-After passes."""

    def __init__(self, limit: int, aimd: AIMD | None = None):
        self.limit = limit
        self.aimd = aimd or AIMD()
        self.in_flight = 0
        self._cond = asyncio.Condition()

    @property
    def allowed(self) -> int:
        return max(1, int(self.limit * self.aimd.value))

    async def acquire(self) -> float:
        """Wait for a slot; returns the send time to hand back to `release`."""
        async with self._cond:
            while self.in_flight >= self.allowed:
                try:  # the share recovers with time, not only when a slot frees
                    await asyncio.wait_for(self._cond.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
            self.in_flight += 1
        return self.aimd.clock()

    def release(self, sent_at: float, overloaded: bool) -> None:
        self.in_flight -= 1
        if overloaded:
            self.aimd.cut(sent_at)
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._cond:
            self._cond.notify_all()


class HTTPStatusError(PersdError):
    """A non-retryable HTTP answer (400, 401, 403, 404, other 4xx). `cause` names a failure of this
    request's content (`persd.runtime.errors.classify_status`), None for one about the whole run;
    `code`, `param` and `message` are the OpenAI-style error body's fields where it has them."""

    def __init__(self, status: int, body: str, url: str):
        self.status, self.body, self.url = status, body, url
        self.code, self.param, self.message = error_fields(body)
        self.cause = classify_status(status, self.code, self.message)
        super().__init__(f"HTTP {status} from {url}: {body[:BODY_LIMIT]}")


def error_fields(body: str) -> tuple[str, str, str]:
    """(code, param, message) of an OpenAI-style error body `{"error": {...}}`; the body itself
    (shortened) as the message where it is not one."""
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            return (str(err.get("code") or err.get("type") or ""), str(err.get("param") or ""),
                    str(err.get("message") or "")[:500])
        if isinstance(err, str) and err:
            return "", "", err[:500]
    except (orjson.JSONDecodeError, TypeError):
        pass
    return "", "", body.strip()[:500] or "(empty body)"


# -- lenient decoding ------------------------------------------------------------------------------

REPAIRED_KEY = "persd_repaired"  # set on a decoded body whose text was repaired: the kinds of repair
_ESCAPED_BAD = re.compile(rb"\\u(?:00[01][0-9a-fA-F]|[dD][89a-fA-F][0-9a-fA-F]{2})")
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")


def _kind(ch: str) -> str:
    return "nul" if ch == "\x00" else "lone_surrogate" if "\ud800" <= ch <= "\udfff" else "control_char"


def _scrub(obj, kinds: set[str]):
    """Every string in `obj` with NULs, other control characters (tab, newline and CR kept) and lone
    surrogates replaced by U+FFFD; `kinds` collects what was replaced."""
    if isinstance(obj, str):
        if _BAD_CHAR.search(obj) is None:
            return obj
        return _BAD_CHAR.sub(lambda m: kinds.add(_kind(m.group())) or "\ufffd", obj)
    if isinstance(obj, dict):
        return {k: _scrub(v, kinds) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v, kinds) for v in obj]
    return obj


def decode_json(raw: bytes):
    """A JSON body, read leniently: bytes that are not UTF-8, lone surrogate escapes, NULs and
    control characters (raw or escaped) become U+FFFD and the rest of the text is kept, as some
    OpenAI-compatible servers emit them mid-token. Returns (value, sorted repair kinds); raises
    ValueError where even that cannot be read (a cut or non-JSON body)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:  # valid JSON; only escaped NULs, controls or surrogates need a look (rare: one regex scan)
        if _ESCAPED_BAD.search(raw) is None:
            return value, []
        kinds: set[str] = set()
        return _scrub(value, kinds), sorted(kinds)
    kinds = set()
    text = raw.decode("utf-8", "replace")
    if "\ufffd" in text and "\ufffd".encode() not in raw:
        kinds.add("invalid_utf8")
    value = json.loads(text, strict=False)  # ValueError (JSONDecodeError) where it is not JSON at all
    return _scrub(value, kinds), sorted(kinds)


class RetriesExhausted(PersdError):
    """Every attempt failed with a transient cause, or the deadline passed."""

    def __init__(self, url: str, attempts: int, elapsed_s: float, cause: str,
                 status: int | None, body: str):
        self.url, self.attempts, self.elapsed_s = url, attempts, elapsed_s
        self.cause, self.status, self.body = cause, status, body
        last = f"HTTP {status}: {body[:BODY_LIMIT]}" if status is not None else cause
        super().__init__(f"{url} kept failing: {attempts} attempt(s) in {elapsed_s:.1f}s; last: {last}")


@dataclass
class AttemptOutcome:
    """What one attempt came to, for `after_attempt` hooks.

    `cause` is None on success, else a short label (`http_429`, `http_503`, `timeout`,
    `connection`, `malformed`, or what `validate` returned). `sent` is False when the request
    never left (connection refused): nothing can have been billed for it.
    """

    status: int | None
    headers: Mapping[str, str] | None
    cause: str | None
    retry_after_s: float | None
    sent: bool
    elapsed_s: float


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms` (OpenAI) first, then `Retry-After`
    as seconds or an HTTP date."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(policy: RetryPolicy, attempt: int, retry_after: float | None, rng: random.Random | None = None,
                spread: bool = True) -> float:
    """Seconds before retry number `attempt`: the server's Retry-After when it gave one (plus up to
    10% of it, at most 0.25 s, at random when `spread`), else the policy's back-off."""
    if retry_after is None:
        return policy.backoff(attempt, rng)
    return retry_after + (min(0.25, 0.1 * retry_after) * (rng or random).random() if spread else 0.0)


def _is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUS or 500 <= status <= 599


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict,
    *,
    headers: dict | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
    on_retry: Callable[[str], None] | None = None,
    before_attempt: Callable[[], Awaitable[None]] | None = None,
    after_attempt: Callable[[AttemptOutcome], None] | None = None,
    validate: Callable[[dict], str | None] | None = None,
    rng: random.Random | None = None,
    trace_request_ctx: object | None = None,
    spread_retry_after: bool = True,
) -> tuple[dict, Mapping[str, str]]:
    """POST `payload` as JSON and return (parsed body, response headers), retrying transient faults.

    Raises HTTPStatusError for a non-retryable status, RetriesExhausted when attempts or the
    deadline run out. Exceptions raised by the hooks (e.g. a budget refusal in
    `before_attempt`) propagate unchanged. `validate(body)` returns a retry cause for a 200
    whose content is unusable (e.g. no choices), or None. `trace_request_ctx` reaches the
    session's trace callbacks. A `Retry-After` gets a little random extra (callers told the same
    instant spread out) unless `spread_retry_after` is False: a caller whose `before_attempt` paces
    every attempt spreads them already, and the extra would only make the last retry later.
    """
    data = orjson.dumps(payload)
    send_headers = {"Content-Type": "application/json", **(headers or {})}
    waited = 0.0  # time spent inside before_attempt, excluded from the deadline
    start = time.monotonic()
    attempt = 0
    cause, last_status, last_body = "", None, ""
    while True:
        attempt += 1
        if before_attempt is not None:
            t0 = time.monotonic()
            await before_attempt()
            waited += time.monotonic() - t0
        remaining = policy.deadline_s - (time.monotonic() - start - waited)
        if remaining <= 0:
            raise RetriesExhausted(url, attempt - 1, time.monotonic() - start, cause or "deadline",
                                   last_status, last_body)
        timeout = aiohttp.ClientTimeout(total=min(policy.request_timeout_s, remaining))
        t_send = time.monotonic()
        status: int | None = None
        resp_headers: Mapping[str, str] | None = None
        retry_after: float | None = None
        sent = True
        body_text = ""
        try:
            async with session.post(url, data=data, headers=send_headers, timeout=timeout,
                                    trace_request_ctx=trace_request_ctx) as resp:
                status, resp_headers = resp.status, resp.headers
                raw = await resp.read()
            if 200 <= status < 300:
                try:
                    body, repaired = decode_json(raw)
                except ValueError:
                    cause, body_text = "malformed", raw[:BODY_LIMIT].decode("utf-8", "replace")
                else:
                    problem = "malformed" if not isinstance(body, dict) else (validate(body) if validate else None)
                    if problem is None:
                        if repaired:
                            body[REPAIRED_KEY] = repaired
                        if after_attempt is not None:
                            after_attempt(AttemptOutcome(status, resp_headers, None, None, True,
                                                         time.monotonic() - t_send))
                        return body, resp_headers
                    cause, body_text = problem, raw[:BODY_LIMIT].decode("utf-8", "replace")
            else:
                body_text = raw[:BODY_LIMIT].decode("utf-8", "replace")
                retry_after = parse_retry_after(resp_headers)
                cause = f"http_{status}"
                if not _is_retryable(status):
                    if after_attempt is not None:
                        after_attempt(AttemptOutcome(status, resp_headers, cause, None, True,
                                                     time.monotonic() - t_send))
                    raise HTTPStatusError(status, body_text, url)
        except asyncio.TimeoutError:
            cause, body_text = "timeout", ""
        except aiohttp.ClientConnectorError:
            cause, body_text, sent = "connection", "", False
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError, aiohttp.ClientConnectionError) as exc:
            cause, body_text = "connection", ""
            if status is not None:  # headers came, the body did not: a truncated answer
                cause = "truncated"
            last_body = type(exc).__name__
        last_status = status if status is not None and not (200 <= status < 300) else None
        if body_text:
            last_body = body_text
        if after_attempt is not None:
            after_attempt(AttemptOutcome(status, resp_headers, cause, retry_after, sent,
                                         time.monotonic() - t_send))
        elapsed = time.monotonic() - start - waited
        delay = retry_delay(policy, attempt, retry_after, rng, spread_retry_after)
        if attempt >= policy.max_attempts or elapsed + delay > policy.deadline_s:
            raise RetriesExhausted(url, attempt, time.monotonic() - start, cause, last_status, last_body)
        if on_retry is not None:
            on_retry(cause)
        await asyncio.sleep(delay)
