"""TeacherClient behaviour against the local server: answers, errors, samples, metrics."""
from __future__ import annotations

import asyncio

import pytest
from persd.runtime.errors import UsageError
from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig, TeacherError

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, deadline_s=10, request_timeout_s=2)


def config(url: str, **kw) -> TeacherConfig:
    kw.setdefault("retry", FAST)
    kw.setdefault("rpm", 6000)
    kw.setdefault("tpm", None)
    return TeacherConfig(base_url=url, model=kw.pop("model", "gpt-4o-mini"), **kw)


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


async def test_answer_usage_and_cost():
    async with LocalOpenAIServer(lambda body: "x" * 400) as server:
        async with TeacherClient(config(server.base_url)) as teacher:
            resp = await teacher.chat(ask("hello", temperature=0.0, max_tokens=200, seed=7, stop=["\n\n"]))
    assert resp.texts == ["x" * 400] and resp.finish_reasons == ["stop"] and not resp.cached
    assert resp.completion_tokens == 100 and resp.prompt_tokens > 0
    assert resp.cost_usd == pytest.approx((resp.prompt_tokens * 0.15 + 100 * 0.60) / 1e6)
    sent = server.received[0]
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 200 and sent["seed"] == 7
    assert sent["stop"] == ["\n\n"] and sent["model"] == "gpt-4o-mini" and "n" not in sent


async def test_the_configured_seed_is_sent_unless_the_request_has_its_own():
    async with LocalOpenAIServer() as server:
        async with TeacherClient(config(server.base_url, seed=11)) as teacher:
            await teacher.chat(ask("a"))
            await teacher.chat(ask("b", seed=3))
    assert [r["seed"] for r in server.received] == [11, 3]


async def test_n_samples_extra_fields_and_length_reported():
    async with LocalOpenAIServer(lambda body: "word " * 50) as server:
        async with TeacherClient(config(server.base_url)) as teacher:
            resp = await teacher.chat(ask("hi", n=3, max_tokens=5, extra={"logprobs": False}))
    assert len(resp.texts) == 3 and resp.finish_reasons == ["length"] * 3 and resp.incomplete
    assert server.received[0]["n"] == 3 and server.received[0]["logprobs"] is False


async def test_sample_index_keeps_samples_distinct_and_identical_requests_share_one_call(tmp_path):
    async with LocalOpenAIServer() as server:
        cfg = config(server.base_url, journal_path=tmp_path / "j.jsonl")
        async with TeacherClient(cfg) as teacher:
            a, b = await asyncio.gather(teacher.chat(ask("q", temperature=0.8, sample_index=0)),
                                        teacher.chat(ask("q", temperature=0.8, sample_index=1)))
            twins = await asyncio.gather(*(teacher.chat(ask("same")) for _ in range(5)))
            again = await teacher.chat(ask("q", temperature=0.8, sample_index=0))
            snap = teacher.metrics.snapshot()
    assert not a.cached and not b.cached and again.cached
    assert sum(not t.cached for t in twins) == 1
    assert len(server.received) == 3
    assert snap["requests"] == 3 and snap["cached_hits"] == 5


async def test_metrics_snapshot_has_the_display_fields():
    async with LocalOpenAIServer(faults=FaultPlan(script=["503"])) as server:
        async with TeacherClient(config(server.base_url, rpm=500, tpm=200_000)) as teacher:
            await teacher.chat(ask("m"))
            snap = teacher.metrics.snapshot()
    for name in ("requests", "retries_by_cause", "http_429", "tokens_in", "tokens_out", "cost_usd",
                 "rpm_now", "rpm_limit", "tpm_now", "tpm_limit", "cached_hits", "in_flight"):
        assert name in snap
    assert snap["retries_by_cause"] == {"http_503": 1} and snap["rpm_limit"] == 500
    assert snap["tpm_limit"] == 200_000 and snap["in_flight"] == 0 and snap["requests"] == 1


async def test_401_says_the_key_was_refused_without_printing_it(monkeypatch):
    monkeypatch.setenv("PERSD_TEST_KEY", "sk-wrong-0123456789")
    async with LocalOpenAIServer(api_key="sk-right") as server:
        async with TeacherClient(config(server.base_url, api_key_env="PERSD_TEST_KEY")) as teacher:
            with pytest.raises(TeacherError) as info:
                await teacher.chat(ask("hi"))
    message = str(info.value)
    assert info.value.status == 401 and "PERSD_TEST_KEY" in message and "refused" in message
    assert "sk-wrong" not in message and "sk-wrong" not in info.value.body
    assert len(server.received) == 1  # not retried


async def test_404_names_url_and_model():
    async with LocalOpenAIServer(models=["gpt-4o-mini"]) as server:
        async with TeacherClient(config(server.base_url, model="no-such-model")) as teacher:
            with pytest.raises(TeacherError) as info:
                await teacher.chat(ask("hi"))
    assert info.value.status == 404
    assert server.base_url + "/chat/completions" in str(info.value) and "no-such-model" in str(info.value)


@pytest.mark.parametrize("status", ["400", "403"])
async def test_other_client_errors_are_not_retried(status):
    async with LocalOpenAIServer(faults=FaultPlan(script=[status])) as server:
        async with TeacherClient(config(server.base_url)) as teacher:
            with pytest.raises(TeacherError) as info:
                await teacher.chat(ask("hi"))
            assert teacher.metrics.snapshot()["failures"] == 1
    assert info.value.status == int(status) and f"HTTP {status}" in str(info.value)
    assert f"injected {status}" in str(info.value) and len(server.received) == 1


async def test_retries_exhausted_gives_status_and_body():
    async with LocalOpenAIServer(faults=FaultPlan(script=["503"] * 4)) as server:
        async with TeacherClient(config(server.base_url)) as teacher:
            with pytest.raises(TeacherError) as info:
                await teacher.chat(ask("hi"))
    assert "kept failing" in str(info.value) and "HTTP 503" in str(info.value)
    assert "injected 503" in str(info.value) and info.value.status == 503


def test_missing_key_for_a_remote_url_names_the_variable(monkeypatch):
    monkeypatch.delenv("PERSD_TEST_NOKEY", raising=False)
    with pytest.raises(UsageError, match="PERSD_TEST_NOKEY"):
        TeacherClient(TeacherConfig(base_url="https://api.example.com/v1", api_key_env="PERSD_TEST_NOKEY"))


async def test_loopback_needs_no_key(monkeypatch):
    monkeypatch.delenv("PERSD_TEST_NOKEY", raising=False)
    async with LocalOpenAIServer() as server:
        async with TeacherClient(config(server.base_url.replace("127.0.0.1", "localhost"),
                                        api_key_env="PERSD_TEST_NOKEY")) as teacher:
            assert (await teacher.chat(ask("hi"))).text == "echo: hi"


def test_bad_config_is_a_usage_error():
    with pytest.raises(UsageError, match="rpm") as exc:  # the field; the command line names its flag
        TeacherClient(TeacherConfig(base_url="http://127.0.0.1:1/v1", rpm=0))
    assert exc.value.field == "rpm"
    with pytest.raises(UsageError, match="price"):
        TeacherClient(TeacherConfig(base_url="http://127.0.0.1:1/v1", model="mystery", max_cost_usd=1.0))
