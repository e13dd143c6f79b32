"""The hf backend on the tiny model: dynamic batching, stop strings, chat, n > 1; the tiny model itself."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from persd.runtime.errors import PersdError, UsageError
from persd.runtime.student import SamplingParams, StudentConfig, StudentError, StudentRequest, create_student
from persd.runtime.student.hf import HFStudent


@pytest.fixture(scope="module")
async def hf(tiny_model_dir):
    student = create_student(StudentConfig(backend="hf", model=str(tiny_model_dir), max_model_len=256))
    async with student:
        yield student


def test_tiny_model_is_deterministic_and_cli_writes_it(tiny_model_dir, tmp_path):
    from persd.engine.cli.commands.tiny_model import main

    assert main(["--out", str(tmp_path / "again"), "--seed", "0"]) == 0
    names = sorted(p.name for p in Path(tiny_model_dir).iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names)
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (Path(tiny_model_dir) / name).read_bytes(), name


def test_tiny_model_loads_through_from_pretrained(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    code = "def add(a, b):\n\treturn a + b  # ünïcode\n"
    ids = tok(code)["input_ids"]
    assert tok.decode(ids) == code  # byte-level: lossless
    source = "def add(a, b):\n    return a + b\n\n\nfor i in range(10):\n    print(i)\n"
    assert len(tok(source)["input_ids"]) < len(source) / 2  # trained on Python: merges make it compact
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


async def test_concurrent_requests_are_batched(hf: HFStudent):
    calls_before = hf.stats.generate_calls
    params = SamplingParams(n=2, temperature=0.8, top_p=0.95, max_tokens=12, seed=1)
    reqs = [StudentRequest(prompt=f"def f{i}(x):\n", params=params) for i in range(12)]
    outs = await asyncio.gather(*(hf.generate(r) for r in reqs))
    calls = hf.stats.generate_calls - calls_before
    assert calls < len(reqs) and calls == 1  # all twelve arrived together: one batch
    for out in outs:
        assert len(out.texts) == 2 and len(out.finish_reasons) == 2
        assert out.prompt_tokens > 0 and 0 < out.completion_tokens <= 24


async def test_different_sampling_params_go_to_separate_batches(hf: HFStudent):
    calls_before = hf.stats.generate_calls
    greedy = SamplingParams(max_tokens=6)
    hot = SamplingParams(temperature=1.0, max_tokens=6)
    reqs = [StudentRequest(prompt=f"x = {i}\n", params=greedy if i % 2 else hot) for i in range(8)]
    outs = await asyncio.gather(*(hf.generate(r) for r in reqs))
    assert hf.stats.generate_calls - calls_before == 2
    assert all(len(o.texts) == 1 for o in outs)


async def test_greedy_is_deterministic_and_stop_strings_cut_the_text(hf: HFStudent):
    prompt = "def is_palindrome(text):\n"
    plain = SamplingParams(max_tokens=40)
    first = await hf.generate(StudentRequest(prompt=prompt, params=plain))
    again = await hf.generate(StudentRequest(prompt=prompt, params=plain))
    assert first.texts == again.texts
    text = first.text
    assert len(text) > 10, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]  # a string the model will surely produce
    stopped = await hf.generate(StudentRequest(prompt=prompt, params=SamplingParams(max_tokens=40, stop=[stop])))
    assert stopped.text == text[: text.index(stop)]
    assert stopped.finish_reasons == ["stop"]
    assert stopped.completion_tokens < first.completion_tokens


async def test_length_finish_and_token_counts(hf: HFStudent):
    out = await hf.generate(StudentRequest(prompt="import os\n",
                                           params=SamplingParams(max_tokens=5, n=3, temperature=0.7)))
    assert len(out.texts) == 3
    assert out.completion_tokens <= 15
    assert all(r in ("length", "stop") for r in out.finish_reasons)


async def test_chat_messages_use_the_chat_template(hf: HFStudent):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write add(a, b)."}]
    out = await hf.generate(StudentRequest(messages=msgs, params=SamplingParams(max_tokens=4)))
    tok = hf._tokenizer
    expected = len(tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])
    assert out.prompt_tokens == expected and len(out.texts) == 1


async def test_too_long_prompt_fails_only_that_request(hf: HFStudent):
    calls_before = hf.stats.generate_calls
    params = SamplingParams(max_tokens=4)  # same parameters: the two share one batch
    long = StudentRequest(prompt="x = 1\n" * 300, params=params)
    fine = StudentRequest(prompt="y = 2\n", params=params)
    results = await asyncio.gather(hf.generate(long), hf.generate(fine), return_exceptions=True)
    assert isinstance(results[0], StudentError) and "max_model_len" in str(results[0])
    assert not isinstance(results[1], Exception) and len(results[1].texts) == 1
    assert hf.stats.generate_calls - calls_before == 1


async def test_generate_needs_start_and_bad_config_is_a_usage_error(tiny_model_dir):
    student = create_student(StudentConfig(backend="hf", model=str(tiny_model_dir)))
    with pytest.raises(PersdError, match="not started"):
        await student.generate(StudentRequest(prompt="x", params=SamplingParams(max_tokens=1)))
    with pytest.raises(UsageError, match="dtype"):
        await create_student(StudentConfig(backend="hf", model=str(tiny_model_dir), dtype="int3")).start()
    with pytest.raises(UsageError, match="unknown backend 'tgi'"):
        create_student(StudentConfig(backend="tgi", model="m"))
    with pytest.raises(UsageError):
        StudentRequest(prompt="x", messages=[{"role": "user", "content": "y"}])
    with pytest.raises(UsageError):
        SamplingParams(n=0)


async def test_a_seeded_request_gives_the_same_texts_whatever_shares_its_batch(hf: HFStudent):
    """Exact resume needs this: a request regenerated after a kill is batched with other requests."""
    params = SamplingParams(n=2, temperature=0.8, top_p=0.95, max_tokens=12, seed=7)
    probe = StudentRequest(prompt="def probe(x):\n", params=params)
    alone = await hf.generate(probe)
    crowd = [StudentRequest(prompt=f"def other{i}(y, z):\n    '''{'w' * i}'''\n", params=params) for i in range(9)]
    batched = await asyncio.gather(*(hf.generate(r) for r in [*crowd[:4], probe, *crowd[4:]]))
    assert batched[4].texts == alone.texts
    assert len(set(alone.texts)) == 2 or alone.texts[0] == ""  # the two samples are independent draws
