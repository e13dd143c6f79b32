"""The student's requests in an evaluation: direct samples and refine-inference turns.

Direct samples use exactly the request collect sends (engine/prompts.py). A refine turn uses
the prompt layout the `persd-refine` training records use (engine/lessons.refine_record_prompt):
the task, the sample's code and its feedback from the *visible* tests, then the task prompt to
complete, so inference matches training (the task description is kept in both).
"""
from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING

from persd.engine import lessons, prompts
from persd.engine.tasks import Task

if TYPE_CHECKING:
    from persd.engine.evaluation.config import EvalConfig
    from persd.runtime.student import SamplingParams, StudentRequest


def request_seed(base: int, task_id: str, sample: int, step: int) -> int:
    """A refine turn's seed, stable per (task, sample, step): two samples with the same code and
    feedback still get independent refinements."""
    h = hashlib.blake2b(f"{base}\0{task_id}\0{sample}\0{step}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "big") & 0x7FFFFFFF


def sampling_params(cfg: "EvalConfig", n: int, seed: int) -> "SamplingParams":
    from persd.runtime.student import SamplingParams

    return SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed,
                          top_k=cfg.top_k)


def direct_request(task: Task, cfg: "EvalConfig", samples: list[int]) -> "StudentRequest":
    """One request for the given (missing) sample indices of a task. Seeded like collect's attempts
    (the base seed, offset by the first sample), so backends that batch by sampling settings (hf)
    batch every task's request together; vLLM seeds the n samples of a request seed, seed+1, ..."""
    params = sampling_params(cfg, len(samples), cfg.seed + samples[0])
    if cfg.style == "paper":
        from persd.engine.paper import evaluation as paper

        return paper.direct_request(task, params, task.task_id)
    return prompts.student_request(task, params, cfg.student.chat)


def refine_prompt(task: Task, attempt: str, feedback: str) -> str:
    return lessons.refine_record_prompt(task, attempt, feedback)


def refine_request(task: Task, cfg: "EvalConfig", sample: int, step: int, attempt: str,
                   feedback: str) -> "StudentRequest":
    from persd.runtime.student import StudentRequest

    params = sampling_params(cfg, 1, request_seed(cfg.seed, task.task_id, sample, step))
    if cfg.style == "paper":  # attempt: the cleaned sample; feedback: the reference's error text
        from persd.engine.paper import evaluation as paper

        return paper.refine_request(task, params, attempt, feedback, f"{task.task_id}#{sample}/{step}")
    text = refine_prompt(task, attempt, feedback)
    if cfg.student.chat:
        messages = [{"role": "system", "content": prompts.SYSTEM},
                    {"role": "user", "content": f"{text.rstrip()}\n\n{prompts.ANSWER}"}]
        return StudentRequest(messages=messages, params=params, request_id=f"{task.task_id}#{sample}/{step}")
    stops = tuple(dict.fromkeys(params.stop + prompts.stop_sequences(task)))
    return StudentRequest(prompt=text, params=replace(params, stop=stops), request_id=f"{task.task_id}#{sample}/{step}")


def needs_refine(prev: dict) -> bool:
    """Refine only on visible-test evidence: the hidden tests' verdict is never looked at."""
    return prev.get("visible_status") not in (None, "passed") and bool(prev.get("code"))
