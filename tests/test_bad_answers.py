"""One bad answer fails its request, never the client: per-request failure causes, lenient decoding,
parameter adaptation, context fitting and the failure breaker, against real local servers on 127.0.0.1
(runtime/local_server.py's fault plan). The whole runs (collect and eval) are in
test_bad_answers_e2e.py."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from persd.engine.collect.guard import BackendFailure, guard
from persd.engine.context_fit import MARKER, budget_for, fit
from persd.engine.failures import FailurePolicy, TaskFailed, TooManyFailures
from persd.runtime.errors import RequestFailed
from persd.runtime.http import RetryPolicy, decode_json
from persd.runtime.local_server import CORRUPT_HERE, FakeOpenAIServer, FaultPlan, LocalOpenAIServer
from persd.runtime.student import SamplingParams, StudentConfig, StudentRequest, create_student
from persd.runtime.student.base import RequestRejected
from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig, TeacherError
from persd.runtime.teacher.errors import TeacherRequestFailed
from persd.runtime.teacher.tokens import TokenEstimator

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02, deadline_s=10, request_timeout_s=5)


def config(url: str, tmp_path=None, **kw) -> TeacherConfig:
    kw.setdefault("retry", FAST)
    return TeacherConfig(base_url=url, model=kw.pop("model", "local-teacher"), rpm=6000, tpm=None,
                         journal_path=(tmp_path / "journal.jsonl") if tmp_path else None, **kw)


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], **kw)


# ------------------------------------------------------------------ lenient decoding


@pytest.mark.parametrize("raw, kinds", [
    (b'{"t": "a\\ud800b"}', ["lone_surrogate"]),
    (b'{"t": "a\\u0000b"}', ["nul"]),
    (b'{"t": "a\x00b\x01c"}', ["control_char", "nul"]),
    (b'{"t": "a\xff\xfeb"}', ["invalid_utf8"]),
])
def test_bad_text_is_replaced_and_the_rest_kept(raw, kinds):
    value, repaired = decode_json(raw)
    assert value["t"].startswith("a") and value["t"].endswith(("b", "c")) and "\ufffd" in value["t"]
    assert repaired == kinds
    orjson.dumps(value)  # writable as is (a lone surrogate would not be)


def test_good_text_is_untouched_and_a_cut_body_is_still_refused():
    assert decode_json(b'{"t": "tab\\there\\n \\ud83d\\ude00"}') == ({"t": "tab\there\n \U0001F600"}, [])
    with pytest.raises(ValueError):
        decode_json(b'{"t": "cut')


@pytest.mark.parametrize("fault", ["nul", "surrogate", "bad_utf8", "control"])
async def test_the_student_keeps_a_repaired_answer_and_says_so(fault):
    def reply(payload: dict, i: int) -> str:
        return f"    return x * 2  # note{CORRUPT_HERE}\n"

    server = FakeOpenAIServer(reply=reply)
    server.faults = FaultPlan(by_content={"def g(": fault})
    async with server:
        async with create_student(StudentConfig(backend="openai", url=server.url, model="m")) as student:
            student.policy = FAST
            bad = await student.generate(StudentRequest(prompt="def g(x):\n", params=SamplingParams(max_tokens=32)))
            good = await student.generate(StudentRequest(prompt="def h(x):\n", params=SamplingParams(max_tokens=32)))
    assert bad.texts == ["    return x * 2  # note\ufffd" + ("\ufffd" if fault == "bad_utf8" else "") + "\n"]
    assert bad.repaired and good.repaired == [] and good.texts == ["    return x * 2  # note\n"]
    assert server.posts == 2  # read at the first try: no retry spent on it


async def test_a_student_answer_that_cannot_be_read_fails_its_request_only():
    server = FakeOpenAIServer()
    server.faults = FaultPlan(by_content={"def g(": "garbage", "def k(": "context"})
    async with server:
        async with create_student(StudentConfig(backend="openai", url=server.url, model="m")) as student:
            student.policy = FAST
            with pytest.raises(RequestRejected) as bad:
                await student.generate(StudentRequest(prompt="def g(x):\n"))
            with pytest.raises(RequestRejected) as long:
                await student.generate(StudentRequest(prompt="def k(x):\n"))
            await student.generate(StudentRequest(prompt="def h(x):\n"))
    assert bad.value.cause == "undecodable" and isinstance(bad.value, RequestFailed)
    assert long.value.cause == "context_too_long" and "maximum context length" in str(long.value)
    assert server.posts == FAST.max_attempts + 1 + 1  # the unreadable one retried, the 400 sent once


# ------------------------------------------------------------------ the teacher's per-request failures


async def test_teacher_context_too_long_is_one_request_failure_sent_once(tmp_path):
    async with LocalOpenAIServer(lambda body: "ok", context_tokens=200) as server:
        async with TeacherClient(config(server.base_url, tmp_path)) as teacher:
            with pytest.raises(TeacherRequestFailed) as exc:
                await teacher.chat(ask("x " * 600, max_tokens=50))
            ok = await teacher.chat(ask("short", max_tokens=50))
    assert exc.value.cause == "context_too_long" and exc.value.status == 400
    assert "maximum context length is 200" in exc.value.message and isinstance(exc.value, TeacherError)
    assert ok.text == "ok" and server.posts == 2


async def test_content_filter_is_journaled_so_a_rerun_pays_nothing(tmp_path):
    plan = FaultPlan(by_content={"forbidden": "content_filter"})
    async with LocalOpenAIServer(lambda body: "a partial answer", faults=plan) as server:
        for _ in range(2):  # a second client on the same journal: the rerun
            async with TeacherClient(config(server.base_url, tmp_path)) as teacher:
                with pytest.raises(TeacherRequestFailed) as exc:
                    await teacher.chat(ask("forbidden topic"))
                assert exc.value.cause == "content_filter"
    assert server.posts == 1


async def test_an_unreadable_teacher_answer_fails_after_the_retries(tmp_path):
    plan = FaultPlan(by_content={"bad": "garbage", "nul": "nul"})
    async with LocalOpenAIServer(lambda body: "fine", faults=plan) as server:
        async with TeacherClient(config(server.base_url, tmp_path)) as teacher:
            with pytest.raises(TeacherRequestFailed) as exc:
                await teacher.chat(ask("bad"))
            repaired = await teacher.chat(ask("nul"))
    assert exc.value.cause == "undecodable" and server.posts == FAST.max_attempts + 1
    assert repaired.text == "fine\ufffd" and repaired.repaired == ["nul"]
    journal = [orjson.loads(x) for x in (tmp_path / "journal.jsonl").read_bytes().splitlines()]
    assert journal[-1]["response"]["repaired"] == ["nul"]


async def test_a_wrong_key_still_stops_everything_not_one_task():
    async with LocalOpenAIServer(api_key="right") as server:
        async with TeacherClient(config(server.base_url)) as teacher:
            with pytest.raises(TeacherError) as exc:
                await teacher.chat(ask("hi"))
    assert not isinstance(exc.value, RequestFailed) and exc.value.status == 401


# ------------------------------------------------------------------ parameters a reasoning model refuses


async def test_refused_parameters_are_adapted_once_for_the_run(tmp_path):
    async with LocalOpenAIServer(lambda body: "done", refuse_params=("max_tokens", "temperature")) as server:
        async with TeacherClient(config(server.base_url, tmp_path)) as teacher:
            first = await teacher.chat(ask("one", max_tokens=64, temperature=0.2))
            second = await teacher.chat(ask("two", max_tokens=64, temperature=0.2))
            adapted = teacher.params.record()
            notices = list(teacher.notices)
    assert first.text == second.text == "done"
    assert [a.status for a in server.log] == [400, 400, 200, 200]  # two refusals, then never again
    assert server.received[-1]["max_completion_tokens"] == 64 and "temperature" not in server.received[-1]
    assert adapted["max_tokens"]["sent_as"] == "max_completion_tokens" and adapted["temperature"]["sent_as"] is None
    assert len(notices) == 2 and "refuses 'max_tokens'" in notices[0]


async def test_requests_refused_together_adapt_once_and_keep_the_rename():
    async with LocalOpenAIServer(lambda body: "done", refuse_params=("max_tokens", "temperature")) as server:
        async with TeacherClient(config(server.base_url)) as teacher:
            answers = await asyncio.gather(*(teacher.chat(ask(f"q{i}", max_tokens=64, temperature=0.2))
                                             for i in range(6)))
            adapted, notices = teacher.params.record(), list(teacher.notices)
    assert [a.text for a in answers] == ["done"] * 6 and len(notices) == 2
    assert adapted["max_tokens"]["sent_as"] == "max_completion_tokens"
    assert sum(a.status == 200 for a in server.log) == 6


async def test_reasoning_families_get_max_completion_tokens_from_the_start():
    async with LocalOpenAIServer(lambda body: "done", refuse_params=("max_tokens",)) as server:
        async with TeacherClient(config(server.base_url, model="o3-mini-2025-01-31")) as teacher:
            await teacher.chat(ask("one", max_tokens=64))
    assert server.posts == 1 and server.received[0]["max_completion_tokens"] == 64


# ------------------------------------------------------------------ the breaker


async def call(policy: FailurePolicy, by: str, exc: Exception | None = None) -> None:
    """One backend call under the engine's one guard (engine/collect/guard.py), failing with `exc`."""
    async with guard(by, failures=policy):
        if exc is not None:
            raise exc


async def test_the_breaker_trips_only_on_failures_in_a_row():
    policy = FailurePolicy(threshold=3)
    bad = RequestFailed("invalid_request", "no")
    for _ in range(5):  # failures with successes between: each is one task's
        with pytest.raises(TaskFailed):
            await call(policy, "teacher", bad)
        await call(policy, "teacher")
    for _ in range(2):
        with pytest.raises(TaskFailed):
            await call(policy, "teacher", bad)
    with pytest.raises(TooManyFailures, match="threshold is 3"):
        await call(policy, "teacher", bad)
    assert policy.report()["failed_requests"] == {"invalid_request": 8} and policy.tripped
    other = FailurePolicy(threshold=2)  # a working student does not hide a broken teacher
    with pytest.raises(TaskFailed):
        await call(other, "teacher", bad)
    await call(other, "student")
    with pytest.raises(TooManyFailures):
        await call(other, "teacher", bad)
    with pytest.raises(BackendFailure, match="ValueError"):  # anything else is the backend's failure
        await call(FailurePolicy(threshold=3), "student", ValueError("x"))


async def test_failures_are_held_until_their_streak_is_settled():
    policy, written = FailurePolicy(threshold=3), []
    bad = RequestFailed("undecodable", "garbage")
    with pytest.raises(TaskFailed):
        await call(policy, "teacher", bad)
    assert policy.hold("teacher", lambda: written.append("a")) and written == []
    assert not policy.hold("student", lambda: written.append("x"))  # no student streak: write now
    await call(policy, "teacher")  # the teacher answers again: the failure was the request's own
    assert written == ["a"]
    for name in ("b", "c"):
        with pytest.raises(TaskFailed):
            await call(policy, "teacher", bad)
        policy.hold("teacher", lambda name=name: written.append(name))
    with pytest.raises(TooManyFailures):
        await call(policy, "teacher", bad)
    assert policy.drop() == 2 and written == ["a"]  # the breaker tripped: b and c are redone by a rerun


# ------------------------------------------------------------------ fitting the teacher's context


def build(attempt: str, error: str) -> list[dict]:
    return [{"role": "system", "content": "You fix code."},
            {"role": "user", "content": f"TASK\nwrite f\nCODE\n{attempt}\nERROR\n{error}\nFix it."}]


def test_a_long_attempt_and_error_are_cut_head_and_tail_to_fit():
    count = TokenEstimator().prompt_tokens
    attempt = "def f(x):\n" + "    y = 1\n" * 3000 + "    return x + 2\n"
    error = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "AssertionError: f(1) == 2\n"
    messages, cut = fit(build, [attempt, error], 1500, count)
    text = messages[1]["content"]
    assert count(messages) <= 1500 and cut > 0 and text.count(MARKER.split("{n}")[0]) == 2
    assert "def f(x):" in text and "AssertionError: f(1) == 2" in text  # heads and tails kept
    assert "return x + 2" in text
    same, none_cut = fit(build, ["short", "err"], 1500, count)
    assert same == build("short", "err") and none_cut == 0


def test_a_prompt_that_cannot_fit_fails_before_sending():
    count = TokenEstimator().prompt_tokens
    with pytest.raises(TaskFailed) as exc:
        fit(lambda a, e: build(a, e) + [{"role": "user", "content": "x" * 8000}], ["a", "e"], 1000, count)
    assert exc.value.cause == "prompt_too_long"
    assert budget_for(4096, 256) == 3840 and budget_for(None, 256) is None and budget_for(4096, None) == 3072
