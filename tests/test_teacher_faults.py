"""Every request is answered, once and correctly, despite every kind of injected fault."""
from __future__ import annotations

import asyncio

from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig

POLICY = RetryPolicy(max_attempts=12, base_delay_s=0.01, max_delay_s=0.05, deadline_s=30, request_timeout_s=0.5)


def answer(body: dict) -> str:
    return "solution for " + body["messages"][-1]["content"]


async def test_all_answered_despite_scripted_then_random_faults(tmp_path):
    script = ["429", "500", "502", "503", "408", "409", "malformed", "drop", "truncated", "no_choices", "slow"]
    plan = FaultPlan(script=script, p_429=0.05, p_500=0.03, p_503=0.03, p_malformed=0.03, p_drop=0.03,
                     p_truncated=0.03, p_no_choices=0.03, retry_after_s=0.02, slow_s=1.5, seed=3)
    async with LocalOpenAIServer(answer, rpm=20_000, window_s=1, faults=plan) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="gpt-4o-mini", rpm=20_000, tpm=None,
                            retry=POLICY, journal_path=tmp_path / "journal.jsonl")
        async with TeacherClient(cfg) as teacher:
            tasks = [teacher.chat(ChatRequest(messages=[{"role": "user", "content": f"task {i}"}]))
                     for i in range(60)]
            answers = await asyncio.gather(*tasks)
            snap = teacher.metrics.snapshot()
    assert [a.text for a in answers] == [f"solution for task {i}" for i in range(60)]
    causes = snap["retries_by_cause"]
    for cause in ("http_429", "http_500", "http_502", "http_503", "http_408", "http_409", "malformed",
                  "connection", "truncated", "no_choices", "timeout"):
        assert causes.get(cause, 0) >= 1, cause
    # each task got exactly one complete answer from the server
    answered = [a.body["messages"][-1]["content"] for a in server.answered]
    assert sorted(answered) == sorted(f"task {i}" for i in range(60))
    assert snap["requests"] == 60 and snap["failures"] == 0
    # a dropped/truncated/malformed answer may have been billed: the budget counts it
    assert snap["cost_unconfirmed_usd"] > 0
