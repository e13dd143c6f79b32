"""persd.runtime.http.post_json against the local server: what is retried, what is not, and the hooks."""
from __future__ import annotations

import aiohttp
import pytest
from persd.runtime.http import (
    AttemptOutcome,
    HTTPStatusError,
    RetriesExhausted,
    RetryPolicy,
    parse_retry_after,
    post_json,
)
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer

FAST = RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.05, deadline_s=10, request_timeout_s=0.5)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_retries_transient_faults_and_reports_causes():
    plan = FaultPlan(script=["429", "500", "503", "408", "409", "malformed", "truncated", "drop"],
                     retry_after_s=0.01)
    causes: list[str] = []
    outcomes: list[AttemptOutcome] = []
    async with LocalOpenAIServer(faults=plan) as server, aiohttp.ClientSession() as session:
        body, headers = await post_json(session, server.base_url + "/chat/completions", BODY,
                                        policy=RetryPolicy(max_attempts=10, base_delay_s=0.01, max_delay_s=0.02),
                                        on_retry=causes.append, after_attempt=outcomes.append)
    assert body["choices"][0]["message"]["content"] == "echo: hi"
    assert "content-type" in {k.lower() for k in headers}
    assert causes == ["http_429", "http_500", "http_503", "http_408", "http_409", "malformed",
                      "truncated", "connection"]
    assert [o.cause for o in outcomes][-1] is None and len(outcomes) == 9
    assert outcomes[0].retry_after_s == pytest.approx(0.01)


async def test_non_retryable_status_raises_at_once():
    async with LocalOpenAIServer(faults=FaultPlan(script=["404"])) as server, aiohttp.ClientSession() as session:
        with pytest.raises(HTTPStatusError) as info:
            await post_json(session, server.base_url + "/chat/completions", BODY, policy=FAST)
    assert info.value.status == 404 and "injected 404" in info.value.body
    assert len(server.received) == 1


async def test_exhausted_names_last_status_and_body():
    async with LocalOpenAIServer(faults=FaultPlan(script=["503"] * 3)) as server, aiohttp.ClientSession() as session:
        with pytest.raises(RetriesExhausted) as info:
            await post_json(session, server.base_url + "/chat/completions", BODY,
                            policy=RetryPolicy(max_attempts=3, base_delay_s=0.01))
    assert info.value.status == 503 and info.value.attempts == 3
    assert "HTTP 503" in str(info.value) and "injected 503" in str(info.value)


async def test_timeout_is_retried_and_validate_rejects_empty_choices():
    # the slow answer would take a minute (the server stops when the client gives up): the 2 s limit fires
    # on it for certain, and not on the quick ones, even on a loaded machine
    plan = FaultPlan(script=["slow", "no_choices"], slow_s=60.0)
    causes: list[str] = []
    async with LocalOpenAIServer(faults=plan) as server, aiohttp.ClientSession() as session:
        body, _ = await post_json(session, server.base_url + "/chat/completions", BODY,
                                  policy=RetryPolicy(base_delay_s=0.01, request_timeout_s=2.0),
                                  on_retry=causes.append,
                                  validate=lambda b: None if b.get("choices") else "no_choices")
    assert causes == ["timeout", "no_choices"] and body["choices"]


async def test_connection_refused_is_retried_then_exhausted():
    async with aiohttp.ClientSession() as session:
        server = LocalOpenAIServer()
        url = await server.start()
        await server.stop()  # nothing listens on that port now
        outcomes: list[AttemptOutcome] = []
        with pytest.raises(RetriesExhausted) as info:
            await post_json(session, url + "/chat/completions", BODY, after_attempt=outcomes.append,
                            policy=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    assert info.value.cause == "connection" and not outcomes[0].sent


def test_parse_retry_after():
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({}) is None


def test_backoff_grows_and_is_capped():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=4.0)
    assert 0.5 <= policy.backoff(1) <= 1.0
    assert 2.0 <= policy.backoff(3) <= 4.0
    assert policy.backoff(10) <= 4.0
