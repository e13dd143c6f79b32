"""Paper mode's `top_k=50` (Hugging Face generate's default, which the reference sampled with) reaches each
backend that supports it: the hf backend's sampler applies it before top_p, the OpenAI-compatible request
carries it (vLLM's server honours it), and persd's own defaults send none."""
from __future__ import annotations

import pytest
import torch
from persd.runtime.errors import ConfigError
from persd.runtime.student.base import SamplingParams, StudentRequest
from persd.runtime.student.hf import RowSampler, group_key
from persd.runtime.student.openai_backend import payload_for


def test_hf_sampler_keeps_only_the_top_k_tokens():
    scores = torch.randn(64, 100)
    allowed = set()
    for row, s in enumerate(scores):
        allowed.update((row, int(i)) for i in s.topk(3).indices)
    picked = RowSampler(list(range(64)), temperature=5.0, top_p=1.0, top_k=3)(None, scores)
    chosen = picked.argmax(dim=-1)
    assert all((row, int(c)) in allowed for row, c in enumerate(chosen))
    anything = RowSampler(list(range(64)), temperature=5.0, top_p=1.0)(None, scores).argmax(dim=-1)
    assert any((row, int(c)) not in allowed for row, c in enumerate(anything))  # without top_k: the whole vocabulary


def test_top_k_in_requests_and_batching_keys():
    with_k = StudentRequest(prompt="p", params=SamplingParams(temperature=0.2, top_k=50))
    without = StudentRequest(prompt="p", params=SamplingParams(temperature=0.2))
    assert payload_for("m", with_k)["top_k"] == 50 and "top_k" not in payload_for("m", without)
    assert group_key(with_k.params) != group_key(without.params)
    with pytest.raises(ConfigError, match="top_k"):
        SamplingParams(top_k=0)


def test_vllm_sampling_params_carry_top_k():
    pytest.importorskip("vllm", reason="the vllm package is not installed")
    from persd.runtime.student.vllm_backend import VLLMStudent

    with_k = VLLMStudent._sampling(None, StudentRequest(prompt="p", params=SamplingParams(temperature=0.2, top_k=50)))
    without = VLLMStudent._sampling(None, StudentRequest(prompt="p", params=SamplingParams(temperature=0.2)))
    assert with_k.top_k == 50 and without.top_k in (0, -1)  # vLLM's "off"
