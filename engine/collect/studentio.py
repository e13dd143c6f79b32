"""The student's side of a task, as the flow needs it: the request to send and the program to run.

Prompt texts, stop sequences and code extraction live in engine/prompts.py and engine/extract.py
(shared with `persd eval`); this module only binds them to the collect configuration.
"""
from __future__ import annotations

from persd.engine import extract as _extract
from persd.engine import prompts as _prompts
from persd.engine.collect.config import CollectConfig
from persd.engine.tasks import Task


def student_request(task: Task, cfg: CollectConfig, seed: int | None):
    from persd.runtime.student import SamplingParams

    params = SamplingParams(n=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_tokens=cfg.max_tokens, seed=seed, top_k=cfg.top_k)
    return _prompts.student_request(task, params, cfg.student.chat)


def extract(task: Task, completion: str, chat: bool) -> str:
    """The full program a completion stands for (a base model's continuation or a fenced answer)."""
    return _extract.extract_program(task, completion, chat)
