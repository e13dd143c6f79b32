"""`openai` backend: any OpenAI-compatible server (`vllm serve`, SGLang, TGI, a hosted API).

Base models go to `/v1/completions` (prompt), instruct models to `/v1/chat/completions`
(messages). One pooled aiohttp session carries hundreds of concurrent requests; transient
faults (429, 5xx, timeouts, dropped connections, malformed bodies) are retried by the
shared `persd.runtime.http.post_json`, the same machinery the teacher uses. A server that
refuses work because it is busy (429/503, as vLLM behind a gateway does) cuts the number of
requests in flight (`AdaptiveGate`, AIMD), which recovers additively once it answers again.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from persd.runtime.errors import ConfigError, PersdError
from persd.runtime.http import (
    AIMD,
    OVERLOAD_STATUS,
    REPAIRED_KEY,
    AdaptiveGate,
    AttemptOutcome,
    HTTPStatusError,
    RetriesExhausted,
    RetryPolicy,
    post_json,
)
from persd.runtime.student.base import (
    BaseStudent,
    RequestRejected,
    StudentConfig,
    StudentOutput,
    StudentRequest,
)

REQUEST_ERRORS = frozenset({400, 413, 422})  # this request is bad (too long, bad params); others may be fine
UNDECODABLE = ("malformed",)  # a 200 that could not be read, even leniently, after the retries


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0


def normalise_base_url(url: str) -> str:
    """'http://h:8000/v1/' -> 'http://h:8000/v1'; a bare 'http://h:8000' gets '/v1' added."""
    url = url.strip().rstrip("/")
    for suffix in ("/completions", "/chat/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    if not url.startswith(("http://", "https://")):
        raise ConfigError("url", f"expected an http(s) base URL such as http://127.0.0.1:8000/v1, got '{url}'",
                          "student")
    path = url.split("://", 1)[1].partition("/")[2]
    return url if path else url + "/v1"


def payload_for(model: str, request: StudentRequest) -> dict[str, Any]:
    p = request.params
    payload: dict[str, Any] = {"model": model, "n": p.n, "temperature": p.temperature,
                               "top_p": p.top_p, "max_tokens": p.max_tokens}
    if request.messages is not None:
        payload["messages"] = request.messages
    else:
        payload["prompt"] = request.prompt
    if p.stop:
        payload["stop"] = list(p.stop)
    if p.top_k is not None:  # not an OpenAI parameter: vLLM's server honours it (docs/fidelity.md)
        payload["top_k"] = p.top_k
    if p.seed is not None:
        payload["seed"] = p.seed
    return payload


def choices_validator(n: int, chat: bool) -> Callable[[dict], str | None]:
    """A 200 without n usable choices is retried like a malformed body."""

    def validate(body: dict) -> str | None:
        choices = body.get("choices")
        if not isinstance(choices, list) or len(choices) != n:
            return "malformed"
        for c in choices:
            if not isinstance(c, dict):
                return "malformed"
            content = (c.get("message") or {}).get("content") if chat else c.get("text")
            if not isinstance(content, str) and not (chat and content is None):
                return "malformed"
        return None

    return validate


def parse_output(body: dict, chat: bool) -> StudentOutput:
    choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
    texts = [((c.get("message") or {}).get("content") or "") if chat else c["text"] for c in choices]
    usage = body.get("usage") or {}
    return StudentOutput(
        texts=texts,
        finish_reasons=[c.get("finish_reason") or "stop" for c in choices],
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        repaired=list(body.get(REPAIRED_KEY) or []),
    )


class OpenAIStudent(BaseStudent):
    name = "openai"

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        if not config.url:
            raise ConfigError("url", "the openai backend needs the server's base URL, e.g. http://127.0.0.1:8000/v1",
                              "student")
        self.base_url = normalise_base_url(config.url)
        self.model = config.model
        self.stats = ClientStats()
        self.policy = RetryPolicy(max_attempts=config.max_attempts, request_timeout_s=config.request_timeout_s,
                                  deadline_s=max(config.request_timeout_s * 2, 600.0))
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        self.gate = AdaptiveGate(config.max_concurrency, AIMD(decrease=0.5))  # halve, as TCP does

    async def start(self) -> None:
        if self._started:
            return
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        limit = self.config.max_concurrency
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector)
        try:
            if not self.model:
                self.model = await self._first_model()
        except BaseException:
            await self._session.close()
            self._session = None
            raise
        self._started = True

    async def _first_model(self) -> str:
        """With no --student-model, ask the server which model it serves (vLLM serves exactly one)."""
        assert self._session is not None
        url = f"{self.base_url}/models"
        try:
            async with self._session.get(url, headers=self._headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise PersdError(f"GET {url}: HTTP {resp.status}: {body[:500].decode('utf-8', 'replace')}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PersdError(f"cannot reach the student server at {url}: {exc!r}") from None
        try:
            return orjson.loads(body)["data"][0]["id"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            raise PersdError(f"GET {url}: no model listed; set the student's model") from None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        self._started = False

    def _retried(self, cause: str) -> None:
        self.stats.retries += 1

    async def generate(self, request: StudentRequest) -> StudentOutput:
        self._require_started()
        assert self._session is not None
        chat = request.messages is not None
        url = f"{self.base_url}/chat/completions" if chat else f"{self.base_url}/completions"
        self.stats.requests += 1
        sent_at: float | None = None  # set while this request holds a slot of the gate

        async def before_attempt() -> None:
            nonlocal sent_at
            sent_at = await self.gate.acquire()

        def after_attempt(outcome: AttemptOutcome) -> None:
            nonlocal sent_at
            if sent_at is not None:
                self.gate.release(sent_at, outcome.status in OVERLOAD_STATUS)
                sent_at = None

        try:
            body, _ = await post_json(
                self._session, url, payload_for(self.model, request), headers=self._headers,
                policy=self.policy, on_retry=self._retried, validate=choices_validator(request.params.n, chat),
                before_attempt=before_attempt, after_attempt=after_attempt,
            )
        except HTTPStatusError as exc:
            if exc.status in REQUEST_ERRORS:
                raise RequestRejected(
                    f"the student server rejected the request: HTTP {exc.status}: {exc.body[:500]}",
                    exc.cause or "rejected", exc.status) from exc
            raise
        except RetriesExhausted as exc:
            if exc.cause in UNDECODABLE and exc.status is None:
                raise RequestRejected(
                    f"the student server's answer could not be read ({exc.cause}) after {exc.attempts} "
                    f"attempt(s): {exc.body[:200]!r}", "undecodable") from exc
            raise
        finally:
            if sent_at is not None:  # cancelled mid-attempt: give the slot back
                self.gate.release(sent_at, False)
        return parse_output(body, chat)
