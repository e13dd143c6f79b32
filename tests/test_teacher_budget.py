"""The dollar budget holds: requests that could exceed it are refused, never sent."""
from __future__ import annotations

import asyncio

import pytest
from persd.runtime.http import RetryPolicy
from persd.runtime.local_server import LocalOpenAIServer
from persd.runtime.teacher import BudgetExceeded, ChatRequest, TeacherClient, TeacherConfig

PRICES = {"test-model": (100.0, 100.0)}  # $100 per 1M tokens each way: ~1 cent a request here


def ask(i: int) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": f"question {i}"}], max_tokens=100)


async def test_budget_holds_under_concurrency(tmp_path):
    async with LocalOpenAIServer(lambda body: "z" * 400, latency_s=0.02) as server:
        cfg = TeacherConfig(base_url=server.base_url, model="test-model", rpm=60_000, tpm=None,
                            max_in_flight=8, max_cost_usd=0.05, prices=PRICES,
                            retry=RetryPolicy(base_delay_s=0.01), journal_path=tmp_path / "j.jsonl")
        async with TeacherClient(cfg) as teacher:
            results = await asyncio.gather(*(teacher.chat(ask(i)) for i in range(20)), return_exceptions=True)
            answered = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, BudgetExceeded)]
            snap = teacher.metrics.snapshot()
            # once refused, refused for good (even a small request), but paid answers stay free
            with pytest.raises(BudgetExceeded, match="max-cost"):
                await teacher.chat(ChatRequest(messages=[{"role": "user", "content": "tiny"}], max_tokens=1))
            assert (await teacher.chat(ask(0))).cached
    assert len(answered) + len(refused) == 20 and answered and refused
    assert sum(r.cost_usd for r in answered) <= 0.05
    assert snap["cost_usd"] <= 0.05 and snap["budget_refusals"] == len(refused)
    assert len(server.received) == len(answered)  # refused requests never reached the server


async def test_zero_budget_sends_nothing():
    async with LocalOpenAIServer() as server:
        cfg = TeacherConfig(base_url=server.base_url, model="test-model", max_cost_usd=0.0, prices=PRICES)
        async with TeacherClient(cfg) as teacher:
            with pytest.raises(BudgetExceeded):
                await teacher.chat(ask(1))
    assert server.received == []


def test_price_lookup_prefers_overrides_and_longest_prefix():
    from persd.runtime.teacher import PriceTable

    table = PriceTable({"gpt-4o": {"input": 1.0, "output": 2.0}})
    assert table.lookup("gpt-4o-2024-08-06") == (1.0, 2.0)
    assert table.lookup("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert table.cost("gpt-4o", 1_000_000, 500_000) == pytest.approx(2.0)
    assert table.lookup("unknown") is None and table.cost("unknown", 10, 10) == 0.0
