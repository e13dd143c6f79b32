"""The openai backend against a real local aiohttp server: routing, concurrency, n > 1, retries, errors."""
from __future__ import annotations

import asyncio
import sys

import pytest
from persd.runtime.errors import PersdError, UsageError
from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import FakeOpenAIServer
from persd.runtime.student import SamplingParams, StudentConfig, StudentError, StudentRequest, create_student
from persd.runtime.student.openai_backend import OpenAIStudent, normalise_base_url

FAST = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.02, deadline_s=10, request_timeout_s=5)


def numbered(payload: dict, index: int) -> str:
    return f"    return {index}  # {payload.get('model')}\n"


def student_for(server: FakeOpenAIServer, **kw) -> OpenAIStudent:
    student = create_student(StudentConfig(backend="openai", url=server.url, **kw))
    assert isinstance(student, OpenAIStudent)
    student.policy = FAST
    return student


async def test_completions_with_n_and_sampling_fields():
    async with FakeOpenAIServer(reply=numbered) as server:
        async with student_for(server, model="tiny") as student:
            params = SamplingParams(n=3, temperature=0.4, top_p=0.9, max_tokens=64, stop=["\ndef "], seed=7)
            out = await student.generate(StudentRequest(prompt="def f():\n", params=params))
    assert out.texts == [f"    return {i}  # tiny\n" for i in range(3)]
    assert out.finish_reasons == ["stop"] * 3
    assert out.prompt_tokens == 2 and out.completion_tokens == 12  # the server's usage, passed on
    (sent,) = server.requests
    assert sent == {"model": "tiny", "prompt": "def f():\n", "n": 3, "temperature": 0.4, "top_p": 0.9,
                    "max_tokens": 64, "stop": ["\ndef "], "seed": 7}


async def test_chat_requests_go_to_chat_completions():
    async with FakeOpenAIServer() as server:
        async with student_for(server, model="tiny", chat=True) as student:
            msgs = [{"role": "user", "content": "write f"}]
            out = await student.generate(StudentRequest(messages=msgs, params=SamplingParams(n=2, max_tokens=32)))
    assert len(out.texts) == 2 and out.texts[0].startswith("```python")
    assert server.requests[0]["messages"] == msgs and "prompt" not in server.requests[0]
    assert "stop" not in server.requests[0] and "seed" not in server.requests[0]


async def test_hundreds_of_requests_are_in_flight_together():
    # The server holds every request until 200 are open at once: a client that serialised,
    # or pooled fewer connections, would never get an answer.
    async with FakeOpenAIServer(barrier=200, barrier_timeout_s=20) as server:
        async with student_for(server, model="tiny", max_concurrency=256) as student:
            reqs = [StudentRequest(prompt=f"# {i}\n", params=SamplingParams(max_tokens=8)) for i in range(200)]
            outs = await asyncio.gather(*(student.generate(r) for r in reqs))
    assert server.peak_in_flight == 200
    assert all(o.texts == ["    return 0\n"] for o in outs)


async def test_max_concurrency_bounds_open_connections():
    async with FakeOpenAIServer() as server:
        async with student_for(server, model="tiny", max_concurrency=4) as student:
            reqs = [StudentRequest(prompt=f"# {i}\n", params=SamplingParams(max_tokens=8)) for i in range(40)]
            await asyncio.gather(*(student.generate(r) for r in reqs))
    assert 1 <= server.peak_in_flight <= 4 and len(server.requests) == 40


async def test_transient_errors_are_retried_by_the_shared_http_layer():
    async with FakeOpenAIServer(fail_first=2, fail_status=503) as server:
        async with student_for(server, model="tiny") as student:
            out = await student.generate(StudentRequest(prompt="x", params=SamplingParams(max_tokens=8)))
    assert out.texts == ["    return 0\n"]
    assert student.stats.retries == 2 and server.posts == 3


async def test_a_bad_request_fails_that_request_with_the_servers_reason():
    async with FakeOpenAIServer(fail_first=1, fail_status=400) as server:
        async with student_for(server, model="tiny") as student:
            with pytest.raises(StudentError, match="HTTP 400.*injected 400"):
                await student.generate(StudentRequest(prompt="x", params=SamplingParams(max_tokens=8)))
            ok = await student.generate(StudentRequest(prompt="x", params=SamplingParams(max_tokens=8)))
    assert ok.texts == ["    return 0\n"]


async def test_model_name_is_discovered_when_not_given():
    async with FakeOpenAIServer(model="served-name", reply=numbered) as server:
        async with student_for(server) as student:
            out = await student.generate(StudentRequest(prompt="x", params=SamplingParams(max_tokens=8)))
    assert student.model == "served-name" and out.texts == ["    return 0  # served-name\n"]


async def test_unreachable_server_is_a_clear_error():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    student = create_student(StudentConfig(backend="openai", url=f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(PersdError, match="cannot reach"):
        await student.start()


def test_urls_and_usage_errors(monkeypatch):
    assert normalise_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalise_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalise_base_url("http://h:8000/v1/completions") == "http://h:8000/v1"
    with pytest.raises(UsageError, match="url") as exc:  # the field; the command line names --student-url
        create_student(StudentConfig(backend="openai", model="m"))
    assert exc.value.field == "url"
    with pytest.raises(UsageError, match="url") as exc:
        create_student(StudentConfig(backend="openai", model="m", url="localhost:8000"))
    assert exc.value.field == "url"
    monkeypatch.setitem(sys.modules, "vllm", None)  # as on a machine without vLLM
    with pytest.raises(UsageError, match=r"pip install -e '\.\[vllm\]'"):
        create_student(StudentConfig(backend="vllm", model="m"))


async def test_a_server_refusing_429_and_503_under_load_gets_fewer_attempts_and_answers_all():
    # vLLM behind a gateway that answers only 8 requests at a time and refuses the rest with
    # 429 or 503 (Retry-After 50 ms). 96 requests, 64 allowed in flight by the client: every
    # request is answered, within the usual attempt budget, and the refusals stay bounded
    # because the backend cuts its concurrency on overload answers (AIMD) instead of
    # re-sending every refused request as soon as its Retry-After passes.
    from persd.runtime.local_server import LocalOpenAIServer

    async with LocalOpenAIServer(latency_s=0.02, max_concurrent=8, overload_statuses=(429, 503)) as server:
        student = create_student(StudentConfig(backend="openai", url=server.base_url, model="m",
                                               max_concurrency=64))
        student.policy = RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.05, deadline_s=60,
                                     request_timeout_s=5)
        async with student:
            reqs = [StudentRequest(prompt=f"# {i}\n", params=SamplingParams(max_tokens=8)) for i in range(96)]
            outs = await asyncio.gather(*(student.generate(r) for r in reqs))
    assert [o.texts for o in outs] == [[f"echo: # {i}\n"] for i in range(96)]
    refused = server.stats["overloaded"]
    assert server.peak_busy <= 8
    assert refused <= 96  # at most one refusal per request on average: no storm
