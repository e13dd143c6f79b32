"""The local OpenAI-compatible servers: the one module for tests, benchmarks and offline runs.

    LocalOpenAIServer   a teacher-like server with RPM/TPM limits and a fault plan (collect's offline stand-in)
    FakeOpenAIServer    the same server set up as a scripted student: no limits, `reply(payload, i)` per choice
    FaultPlan           which faults to inject;  json_response  an aiohttp JSON answer

aiohttp on 127.0.0.1 and a random port. Answers come from a `responder(request_body) -> str` (sync or
async). RPM/TPM limits are enforced over `window_s` seconds, either as token buckets
(`limit_mode="bucket"`: capacity = one window's budget, refilled continuously, as providers do) or as a
strict sliding window log (`"sliding"`). Faults are injected from a `FaultPlan`: 429 with Retry-After,
408/409/500/503, malformed JSON, dropped connections, truncated bodies, empty choices, slow answers,
non-retryable 400/401/403/404, and an overload burst (for a while, a share of all requests get 429).
Every request is counted against the limits when it is admitted, before its injected fault, as providers
count failed requests (`count_faults=False`: the old rule, injected 429s and error statuses decided
first and never counted). Bad answers of one request (`FaultPlan.by_content`: a fault for every request
whose text holds a marker, on every try): 400 context_length_exceeded, a content-filter finish reason,
text with a raw NUL, a lone surrogate escape, bytes that are not UTF-8 or a control character (at
`CORRUPT_HERE` in the reply, else at its end), a body that is not JSON. `context_tokens` answers 400
context_length_exceeded to any request over that context, as providers do; `refuse_params` answers 400
unsupported_parameter/unsupported_value to requests carrying those parameters, as reasoning models do.
With `ratelimit_headers`, every answer, 429s included, carries OpenAI's integer `x-ratelimit-*` headers:
a 429 for the client's own limit shows no room left, an injected (overload) 429 shows the room the
client really has. Everything received is recorded (`received`, `log`, `stats`), so tests can check what
a client really sent.

    async with LocalOpenAIServer(lambda body: "def f(): ...", rpm=600, window_s=1) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="local")

Run standalone: `python -m persd.runtime.local_server --port 8000 --rpm 600` (a limited teacher), or
`python -m persd.runtime.local_server --fake-student --port 0` (prints `READY <base url>` once it listens).
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from persd.runtime.teacher.local_batch import BatchAPI, BatchPlan
from persd.runtime.teacher.tokens import TokenEstimator, heuristic_tokens

Responder = Callable[[dict], "str | list[str] | Awaitable[str | list[str]]"]

# Faults a plan may name; "ok" is none.
FAULTS = ("ok", "429", "408", "409", "500", "502", "503", "malformed", "drop", "truncated",
          "no_choices", "slow", "400", "401", "403", "404",
          "context", "content_filter", "nul", "surrogate", "bad_utf8", "control", "garbage")
CORRUPT_HERE = "\ue000"  # where a reply's text gets the bad bytes of a corrupting fault
_CORRUPT = {"nul": b"\x00", "surrogate": b"\\ud800", "bad_utf8": b"\xff\xfe", "control": b"\x01"}
_STATUS_FAULTS = {"408", "409", "500", "502", "503", "400", "401", "403", "404"}


@dataclass
class FaultPlan:
    """Which faults to inject: `script` names the faults of the first requests in order (then
    the probabilities apply, drawn from a seeded RNG). Every fault comes after admission, as at a
    provider: an injected 429 or error status uses up the window like an answer (the server's
    `count_faults=False` restores the old rule, where they were decided first and not counted)."""

    p_429: float = 0.0
    p_500: float = 0.0
    p_503: float = 0.0
    p_malformed: float = 0.0
    p_drop: float = 0.0
    p_truncated: float = 0.0
    p_no_choices: float = 0.0
    p_slow: float = 0.0
    slow_s: float = 1.0
    retry_after_s: float | None = 1.0  # on injected 429s; None sends no Retry-After
    script: Sequence[str] = ()
    seed: int = 0
    burst_at_s: float = 0.0            # an overload burst: from this many seconds after the first request,
    burst_s: float = 0.0               # for this long,
    burst_p_429: float = 0.0           # this share of all requests get 429,
    burst_retry_after_s: float = 1.0   # with this Retry-After
    exhausted_429: bool = False        # injected 429s say the client's budget is used up (remaining 0),
                                       # as when another process spends the same key's limit
    by_content: dict[str, str] = field(default_factory=dict)  # marker in a request's text -> its fault, always
    retry_after_5xx_s: float | None = None  # injected 5xx carry this Retry-After (a gateway in front of a dead server)

    def __post_init__(self) -> None:
        bad = [f for f in [*self.script, *self.by_content.values()] if f not in FAULTS]
        if bad:
            raise ValueError(f"unknown faults {bad}; choose from {FAULTS}")

    def _table(self) -> list[tuple[str, float]]:
        return [("429", self.p_429), ("500", self.p_500), ("503", self.p_503),
                ("malformed", self.p_malformed), ("drop", self.p_drop), ("truncated", self.p_truncated),
                ("no_choices", self.p_no_choices), ("slow", self.p_slow)]


@dataclass
class Arrival:
    """One request as the server saw it."""

    t: float            # time.monotonic() at arrival
    path: str
    fault: str          # the injected fault, "ok" for none, "rate_limited" for a real limit 429
    status: int         # 0 for a dropped connection
    tokens: int = 0     # tokens counted against TPM (admitted requests only; prompt only for an error status)
    admitted: bool = False  # passed the rate limits (counted in the window)
    body: dict = field(default_factory=dict)
    done: float = 0.0   # time.monotonic() when the answer (or refusal) left


def default_responder(body: dict) -> str:
    messages = body.get("messages") or [{"content": body.get("prompt", "")}]
    last = messages[-1].get("content") if isinstance(messages[-1], dict) else ""
    return f"echo: {str(last)[:200]}"


class _Limits:
    """RPM/TPM over a window: token buckets or a sliding log. Returns a wait when over."""

    def __init__(self, rpm: float | None, tpm: float | None, window_s: float, mode: str):
        if mode not in ("bucket", "sliding"):
            raise ValueError("limit_mode must be 'bucket' or 'sliding'")
        self.rpm, self.tpm, self.window_s, self.mode = rpm, tpm, window_s, mode
        self.req_cap = rpm * window_s / 60 if rpm else None
        self.tok_cap = tpm * window_s / 60 if tpm else None
        self.req_level, self.tok_level = self.req_cap or 0.0, self.tok_cap or 0.0
        self.last = time.monotonic()
        self.log: deque[tuple[float, int]] = deque()

    def admit(self, tokens: int) -> float | None:
        """None if admitted (and counted), else seconds until it could be."""
        now = time.monotonic()
        if self.mode == "bucket":
            dt, self.last = now - self.last, now
            if self.req_cap:
                self.req_level = min(self.req_cap, self.req_level + dt * self.rpm / 60)
            if self.tok_cap:
                self.tok_level = min(self.tok_cap, self.tok_level + dt * self.tpm / 60)
            waits = []
            if self.req_cap and self.req_level < 1:
                waits.append((1 - self.req_level) * 60 / self.rpm)
            if self.tok_cap and self.tok_level < tokens:
                waits.append((tokens - self.tok_level) * 60 / self.tpm)
            if waits:
                return max(waits)
            if self.req_cap:
                self.req_level -= 1
            if self.tok_cap:
                self.tok_level -= tokens
            return None
        while self.log and self.log[0][0] <= now - self.window_s:
            self.log.popleft()
        over_req = self.req_cap is not None and len(self.log) + 1 > self.req_cap
        over_tok = self.tok_cap is not None and sum(t for _, t in self.log) + tokens > self.tok_cap
        if over_req or over_tok:
            return max(0.001, self.log[0][0] + self.window_s - now) if self.log else self.window_s
        self.log.append((now, tokens))
        return None

    def headers(self) -> dict[str, str]:
        """x-ratelimit-* as OpenAI sends them (limits per minute, remaining in this window)."""
        out: dict[str, str] = {}
        dt = max(0.0, time.monotonic() - self.last)  # the buckets as they are now, not at the last admit
        for kind, limit, cap, level, rate in (("requests", self.rpm, self.req_cap, self.req_level, self.rpm),
                                              ("tokens", self.tpm, self.tok_cap, self.tok_level, self.tpm)):
            if not limit:
                continue
            level = min(cap, level + dt * rate / 60)
            if self.mode == "sliding":
                used = len(self.log) if kind == "requests" else sum(t for _, t in self.log)
                remaining = max(0.0, cap - used)
                reset = (self.log[0][0] + self.window_s - time.monotonic()) if self.log else 0.0
            else:
                remaining = max(0.0, level)
                reset = (cap - level) * 60 / rate
            out[f"x-ratelimit-limit-{kind}"] = str(int(limit))
            out[f"x-ratelimit-remaining-{kind}"] = str(int(remaining))
            out[f"x-ratelimit-reset-{kind}"] = f"{max(0, round(reset * 1000))}ms"
        return out


class LocalOpenAIServer:
    """Serves POST /v1/chat/completions, POST /v1/completions and GET /v1/models."""

    def __init__(self, responder: Responder | None = None, *, rpm: float | None = None,
                 tpm: float | None = None, window_s: float = 60.0, limit_mode: str = "bucket",
                 tpm_counts: str = "usage", faults: FaultPlan | None = None, latency_s: float = 0.0,
                 api_key: str | None = None, models: Sequence[str] | None = None,
                 ratelimit_headers: bool = True, count_tokens: Callable[[str], int] = heuristic_tokens,
                 max_concurrent: int | None = None, overload_statuses: Sequence[int] = (429, 503),
                 overload_retry_after_s: float | None = 0.05, reply_per_choice: bool = False,
                 truncate: bool = True, barrier: int | None = None, barrier_timeout_s: float = 30.0,
                 record: bool = True, count_faults: bool = True, batch: BatchPlan | None = None,
                 context_tokens: int | None = None, refuse_params: Sequence[str] = (),
                 host: str = "127.0.0.1", port: int = 0):
        if tpm_counts not in ("usage", "max_tokens"):
            raise ValueError("tpm_counts must be 'usage' or 'max_tokens'")
        self.responder = responder or default_responder
        self.limits = _Limits(rpm, tpm, window_s, limit_mode)
        self.tpm_counts = tpm_counts
        self.faults = faults or FaultPlan()
        # injected 429s and error statuses are admitted (counted in the window) before they are
        # answered, as a provider counts failed requests; False: decided first, never counted
        self.count_faults = count_faults
        # the Batch API (files, batches), answered by the same responder; None: the server has none
        self.batch = BatchAPI(self._batch_answer, batch) if batch is not None else None
        self.latency_s = latency_s
        self.api_key = api_key
        self.models = list(models) if models else None
        self.ratelimit_headers = ratelimit_headers
        self.count_tokens = count_tokens
        self.estimator = TokenEstimator(count_tokens)
        self.host, self.port = host, port
        # a server under load (vLLM behind a gateway): beyond `max_concurrent` requests being
        # answered, refuse with the next of `overload_statuses` (cycled) and its Retry-After
        self.max_concurrent, self.overload_statuses = max_concurrent, list(overload_statuses)
        self.overload_retry_after_s = overload_retry_after_s
        # a scripted student: `responder(body, i)` per choice, answers never cut at max_tokens, each request
        # held until `barrier` are in flight together (proves a client sends concurrently, without timing)
        self.reply_per_choice, self.truncate = reply_per_choice, truncate
        self.barrier, self.barrier_timeout_s, self.record = barrier, barrier_timeout_s, record
        self.context_tokens, self.refuse_params = context_tokens, tuple(refuse_params)
        self.prompt_tokens_seen: list[int] = []  # prompt + asked-for tokens of each request (with context_tokens)
        self._released = asyncio.Event()
        self.busy = self.peak_busy = 0
        self.received: list[dict] = []     # every request body, in arrival order (unless record=False)
        self.log: list[Arrival] = []
        self.stats: Counter[str] = Counter()
        self._script = list(self.faults.script)
        self._rng = random.Random(self.faults.seed)
        self._burst_rng = random.Random(self.faults.seed + 1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        if self.batch is not None:
            self.batch.mount(app)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.base_url = f"http://{self.host}:{self.port}/v1"
        return self.base_url

    async def stop(self) -> None:
        if self.batch is not None:
            await self.batch.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "LocalOpenAIServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- views for tests -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.base_url

    @property
    def posts(self) -> int:
        """POSTs received, answered or not."""
        return len(self.log)

    @property
    def answered(self) -> list[Arrival]:
        """Requests answered with a complete 200 (what a provider would bill)."""
        return [a for a in self.log if a.status == 200 and a.fault in ("ok", "slow")]

    def max_in_window(self, window_s: float | None = None) -> tuple[int, int]:
        """The most requests and tokens admitted in any sliding window (default: the limit's)."""
        w = window_s or self.limits.window_s
        admitted = [a for a in self.log if a.admitted]
        best_req = best_tok = 0
        lo, tok = 0, 0
        for hi, arrival in enumerate(admitted):
            tok += arrival.tokens
            while arrival.t - admitted[lo].t >= w:
                tok -= admitted[lo].tokens
                lo += 1
            best_req, best_tok = max(best_req, hi - lo + 1), max(best_tok, tok)
        return best_req, best_tok

    # -- handlers ------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        names = self.models or ["local"]
        return _json({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "persd"} for m in names]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    def _next_fault(self, now: float) -> str:
        if self._script:
            return self._script.pop(0)
        plan = self.faults
        if plan.burst_s > 0:
            since = now - self.log[0].t
            in_burst = plan.burst_at_s <= since < plan.burst_at_s + plan.burst_s
            if in_burst and self._burst_rng.random() < plan.burst_p_429:
                return "burst"
        draw, acc = self._rng.random(), 0.0
        for name, p in self.faults._table():
            acc += p
            if draw < acc:
                return name
        return "ok"

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        arrival = Arrival(time.monotonic(), request.path, "ok", 200)
        self.log.append(arrival)
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return self._status(arrival, 400, "invalid_request_error", "the body is not a JSON object")
        if self.record:
            arrival.body = body
            self.received.append(body)
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._status(arrival, 401, "invalid_api_key", "Incorrect API key provided.")
        model = body.get("model")
        if self.models is not None and model not in self.models:
            return self._status(arrival, 404, "model_not_found", f"The model `{model}` does not exist.")
        if self.max_concurrent is not None and self.busy >= self.max_concurrent:
            arrival.fault = "overloaded"
            self.stats["overloaded"] += 1
            status = self.overload_statuses[self.stats["overloaded"] % len(self.overload_statuses)]
            wait = self.overload_retry_after_s
            headers = {} if wait is None else {"retry-after-ms": str(round(wait * 1000)),
                                               "retry-after": str(math.ceil(wait))}
            return self._status(arrival, status, "overloaded", "The server is overloaded.", headers)
        self.busy += 1
        self.peak_busy = max(self.peak_busy, self.busy)
        try:
            if self.barrier is not None:
                if self.busy >= self.barrier:
                    self._released.set()
                try:
                    await asyncio.wait_for(self._released.wait(), self.barrier_timeout_s)
                except asyncio.TimeoutError:
                    return self._status(arrival, 400, "invalid_request_error",
                                        f"barrier of {self.barrier} never reached")
            return await self._serve_one(request, arrival, body, model, chat)
        finally:
            self.busy -= 1

    def _content_fault(self, body: dict) -> str | None:
        if not self.faults.by_content:
            return None
        text = orjson.dumps(body.get("messages") or body.get("prompt") or "").decode()
        return next((f for marker, f in self.faults.by_content.items() if marker in text), None)

    def _refused(self, arrival: Arrival, body: dict, chat: bool) -> web.Response | None:
        """What a reasoning model or a provider's context check answers before any generation."""
        for name in self.refuse_params:
            if name in body:
                arrival.fault = "refused_param"
                self.stats["refused_param"] += 1
                if name in ("max_tokens",):
                    return self._status(arrival, 400, "unsupported_parameter",
                                        f"Unsupported parameter: '{name}' is not supported with this model. "
                                        f"Use 'max_completion_tokens' instead.", param=name)
                return self._status(arrival, 400, "unsupported_value",
                                    f"Unsupported value: '{name}' does not support {body[name]!r} with this model. "
                                    f"Only the default (1) value is supported.", param=name)
        if self.context_tokens is None:
            return None
        asked = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0) * int(body.get("n") or 1)
        prompt = (self.estimator.prompt_tokens(body.get("messages") or []) if chat
                  else self.count_tokens(str(body.get("prompt", ""))))
        self.prompt_tokens_seen.append(prompt + asked)
        if prompt + asked > self.context_tokens:
            arrival.fault = "context"
            self.stats["context"] += 1
            return self._status(arrival, 400, "context_length_exceeded",
                                f"This model's maximum context length is {self.context_tokens} tokens. However, you "
                                f"requested {prompt + asked} tokens ({prompt} in the messages, {asked} in the "
                                f"completion). Please reduce the length of the messages or completion.",
                                param="messages")
        return None

    async def _serve_one(self, request: web.Request, arrival: Arrival, body: dict, model,
                         chat: bool) -> web.StreamResponse:
        refusal = self._refused(arrival, body, chat)
        if refusal is not None:
            return refusal
        fault = self._content_fault(body) or self._next_fault(arrival.t)
        arrival.fault = fault
        self.stats[fault] += 1
        if self.count_faults and (fault in ("429", "burst") or fault in _STATUS_FAULTS):
            # a provider admits (counts) the request first; the fault is what it then answers:
            # no answer was generated, so TPM counts the prompt (and max_tokens where it charges that)
            refused = self._admit(arrival, fault, self._prompt_tokens(body, chat) + self._reserved(body))
            if refused is not None:
                return refused
        if fault == "context":
            return self._status(arrival, 400, "context_length_exceeded",
                                "This model's maximum context length is 4096 tokens. However, your messages "
                                "resulted in more tokens. Please reduce the length of the messages.", param="messages")
        if fault == "garbage":
            return web.Response(body=b"<html>502 Bad Gateway</html>", content_type="application/json")
        if fault in ("429", "burst"):
            wait = self.faults.retry_after_s if fault == "429" else self.faults.burst_retry_after_s
            headers = self.limits.headers() if self.ratelimit_headers else {}
            if self.faults.exhausted_429:
                headers.update({"x-ratelimit-remaining-requests": "0",
                                "x-ratelimit-reset-requests": f"{round((wait or 1.0) * 1000)}ms"})
            if wait is not None:
                headers.update({"retry-after-ms": str(round(wait * 1000)), "retry-after": str(math.ceil(wait))})
            return self._status(arrival, 429, "rate_limit_exceeded", "Rate limit reached (injected).", headers)
        if fault in _STATUS_FAULTS:
            wait = self.faults.retry_after_5xx_s if int(fault) >= 500 else None
            headers = None if wait is None else {"retry-after-ms": str(round(wait * 1000)),
                                                 "retry-after": str(math.ceil(wait))}
            return self._status(arrival, int(fault), "server_error" if int(fault) >= 500 else "invalid_request_error",
                                f"injected {fault}", headers)

        n = int(body.get("n") or 1)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        prompt_tokens = self._prompt_tokens(body, chat)
        texts, reasons = [], []
        for i in range(n):
            text = self.responder(body, i) if self.reply_per_choice else self.responder(body)
            if inspect.isawaitable(text):
                text = await text
            text = text if isinstance(text, str) else str(text)
            reason = "stop"
            if self.truncate and max_tokens is not None and self.count_tokens(text) > int(max_tokens):
                text, reason = text[: int(max_tokens) * 4], "length"
            if fault == "content_filter":
                text, reason = text[: len(text) // 3], "content_filter"
            texts.append(text)
            reasons.append(reason)
        completion_tokens = sum(self.count_tokens(t) for t in texts)
        counted = prompt_tokens + (completion_tokens if self.tpm_counts == "usage" else self._reserved(body))
        refused = self._admit(arrival, fault, counted)
        if refused is not None:
            return refused
        delay = self.latency_s + (self.faults.slow_s if fault == "slow" else 0.0)
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # the client gave up (timeout) before the answer
                arrival.status = 499
                raise
        headers = self.limits.headers() if self.ratelimit_headers else {}
        if fault == "drop":
            arrival.status = 0
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=500)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"index": i, "text": t, "finish_reason": r} for i, (t, r) in enumerate(zip(texts, reasons))]
        payload = {"id": f"cmpl-{len(self.log)}", "object": "chat.completion" if chat else "text_completion",
                   "created": int(time.time()), "model": model or "local",
                   "choices": [] if fault == "no_choices" else choices,
                   "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}}
        if fault in _CORRUPT:  # the bad bytes go where the reply marks, else at the end of each text
            for c in choices:
                slot = c["message"] if chat else c
                text = slot["content" if chat else "text"]
                slot["content" if chat else "text"] = text if CORRUPT_HERE in text else text + CORRUPT_HERE
        data = orjson.dumps(payload)
        if fault in _CORRUPT:
            data = data.replace(CORRUPT_HERE.encode(), _CORRUPT[fault])
        elif CORRUPT_HERE in "".join(texts):
            data = data.replace(CORRUPT_HERE.encode(), b"")
        if fault == "malformed":
            return web.Response(body=data[: len(data) // 2], content_type="application/json", headers=headers)
        if fault == "truncated":
            response = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if request.transport is not None:
                request.transport.close()
            return response
        arrival.done = time.monotonic()
        return web.Response(body=data, content_type="application/json", headers=headers)

    async def _batch_answer(self, body: dict) -> dict:
        """One batch line's chat completion body (no limits or faults: the batch plan has its own)."""
        text = self.responder(body)
        if inspect.isawaitable(text):
            text = await text
        text = text if isinstance(text, str) else str(text)
        prompt_tokens = self._prompt_tokens(body, True)
        completion_tokens = self.count_tokens(text)
        return {"id": f"cmpl-b{len(self.log)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or "local",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _prompt_tokens(self, body: dict, chat: bool) -> int:
        if chat:
            return self.estimator.prompt_tokens(body.get("messages") or [])
        prompt = body.get("prompt", "")
        return self.count_tokens(prompt if isinstance(prompt, str) else "".join(map(str, prompt)))

    def _reserved(self, body: dict) -> int:
        """The output tokens TPM counts before any answer: `max_tokens * n` where the server charges
        max_tokens (`tpm_counts="max_tokens"`), else none (`"usage"` counts the answer's)."""
        if self.tpm_counts != "max_tokens":
            return 0
        return int(body.get("max_tokens") or body.get("max_completion_tokens") or 0) * int(body.get("n") or 1)

    def _admit(self, arrival: Arrival, fault: str, tokens: int) -> web.Response | None:
        """Count the request against the limits; a 429 (the server's own limit) when over."""
        wait = self.limits.admit(tokens)
        if wait is None:
            arrival.tokens, arrival.admitted = tokens, True
            return None
        arrival.fault = "rate_limited"
        self.stats[fault] -= 1
        self.stats["rate_limited"] += 1
        headers = self.limits.headers() if self.ratelimit_headers else {}
        headers.update({"retry-after-ms": str(max(1, round(wait * 1000))),
                        "retry-after": str(max(1, math.ceil(wait)))})
        return self._status(arrival, 429, "rate_limit_exceeded", "Rate limit reached.", headers)

    def _status(self, arrival: Arrival, status: int, code: str, message: str,
                headers: dict | None = None, param: str | None = None) -> web.Response:
        arrival.status, arrival.done = status, time.monotonic()
        body = orjson.dumps({"error": {"message": message, "type": code, "code": code, "param": param}})
        return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def json_response(data: dict) -> web.Response:
    """An aiohttp answer with a JSON body."""
    return web.Response(body=orjson.dumps(data), content_type="application/json")


_json = json_response


# ------------------------------------------------------------------ the scripted student

Reply = Callable[[dict, int], str]  # (request payload, choice index) -> text


def default_reply(payload: dict, index: int) -> str:
    return "    return 0\n" if "prompt" in payload else "```python\ndef f():\n    return 0\n```"


def _words(text: str) -> int:
    return len(str(text).split())


class FakeOpenAIServer(LocalOpenAIServer):
    """A scripted student server: answers `/v1/completions` and `/v1/chat/completions` at once with `n`
    choices from `reply(payload, choice_index)`; no rate limits, no headers, answers never cut, usage
    counted in words. It can fail the first `fail_first` requests with `fail_status` (to exercise
    retries) and hold requests until `barrier` of them are in flight together (to prove a client really
    sends concurrently, with no timing involved)."""

    def __init__(self, reply: Reply = default_reply, model: str = "fake-model", fail_first: int = 0,
                 fail_status: int = 503, barrier: int | None = None, barrier_timeout_s: float = 30.0,
                 record: bool = True, port: int = 0):
        super().__init__(reply, faults=FaultPlan(script=[str(fail_status)] * fail_first), ratelimit_headers=False,
                         count_tokens=_words, reply_per_choice=True, truncate=False, barrier=barrier,
                         barrier_timeout_s=barrier_timeout_s, record=record, port=port)
        self.model = model

    @property
    def requests(self) -> list[dict]:
        """The payloads of the requests it answered or is answering (not those its script failed)."""
        return [a.body for a in self.log if a.body and a.fault in ("ok", "slow")]

    @property
    def in_flight(self) -> int:
        return self.busy

    @property
    def peak_in_flight(self) -> int:
        return self.peak_busy

    async def close(self) -> None:
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{"id": self.model, "object": "model"}]})


async def _serve_fake_student(port: int) -> None:
    server = FakeOpenAIServer(record=False, port=port)
    url = await server.start()
    print(f"READY {url}", flush=True)
    await asyncio.Event().wait()


def run_fake_student(port: int = 0) -> int:
    """Serve the scripted student until interrupted (benchmarks start it as a process)."""
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(_serve_fake_student(port))
    except KeyboardInterrupt:
        pass
    return 0


def main_fake_student(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="an instant OpenAI-compatible server for benchmarks")
    parser.add_argument("--port", type=int, default=0)
    return run_fake_student(parser.parse_args(argv).port)


# ------------------------------------------------------------------ standalone

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m persd.runtime.local_server",
                                     description="A local OpenAI-compatible echo server with limits and faults.")
    parser.add_argument("--fake-student", action="store_true", help="serve the scripted student instead "
                        "(FakeOpenAIServer): prints `READY <base url>` once it listens")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default 8000; 0 picks a free port")
    parser.add_argument("--rpm", type=float)
    parser.add_argument("--tpm", type=float)
    parser.add_argument("--window", type=float, default=60.0, help="seconds over which limits are enforced")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--p-429", type=float, default=0.0)
    parser.add_argument("--p-5xx", type=float, default=0.0)
    parser.add_argument("--uncounted-faults", action="store_true",
                        help="injected 429s/5xx are not counted against the limits (the old rule; "
                             "a provider counts them)")
    args = parser.parse_args(argv)
    if args.fake_student:
        return run_fake_student(args.port or 0)

    async def serve() -> None:
        server = LocalOpenAIServer(rpm=args.rpm, tpm=args.tpm, window_s=args.window, latency_s=args.latency,
                                   faults=FaultPlan(p_429=args.p_429, p_503=args.p_5xx),
                                   count_faults=not args.uncounted_faults,
                                   host=args.host, port=8000 if args.port is None else args.port)
        print(f"serving on {await server.start()}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["FAULTS", "Arrival", "FakeOpenAIServer", "FaultPlan", "LocalOpenAIServer", "Reply", "Responder",
           "default_reply", "default_responder", "json_response", "main", "main_fake_student", "run_fake_student"]
