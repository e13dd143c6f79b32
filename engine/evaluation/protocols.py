"""`--protocol` presets: the paper's evaluation settings, filled in where a flag was not given.

The PERsD paper (Chen et al., EMNLP 2023) reports HumanEval pass@1 from n=20 samples at
temperature 0.2, pass@k from n=100 samples at temperature 0.8, and MBPP on the 307 sanitized
task ids scored with the original MBPP text and tests. Refine-inference (`--refine-steps 2`)
is an extra column for models trained on `persd-refine` records, so no preset turns it on.

`paper-*` run the reference implementation's evaluation (style "paper", engine/paper/evaluation.py:
its prompts, 1,024 new tokens without stop strings, its cleaning and test programs, 3 s a run;
MBPP's refine feedback comes from the tests it is scored on, as there). `persd-*` are the same
sampling settings with persd's own prompts, stops and strict visible-test feedback.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from persd.runtime.errors import UsageError

MBPP_EVAL_IDS = "mbpp-eval-ids-307.json"
MBPP_IDS_ENV = "PERSD_MBPP_EVAL_IDS"  # a path to the ids file, where it is not next to mbpp.jsonl

# name -> defaults; "task_ids": "@mbpp-307" stands for the sanitized id list, found on disk.
_PERSD: dict[str, dict[str, Any]] = {
    "humaneval": {
        "tasks": "humaneval", "n": 20, "temperature": 0.2, "top_p": 0.95, "max_tokens": 512, "k": (1, 5, 10),
    },
    "humaneval-passk": {
        "tasks": "humaneval", "n": 100, "temperature": 0.8, "top_p": 0.95, "max_tokens": 512, "k": (1, 10, 100),
    },
    "mbpp": {
        "tasks": "mbpp", "task_ids": "@mbpp-307", "n": 20, "temperature": 0.2, "top_p": 0.95, "max_tokens": 512,
        "k": (1, 5, 10),
    },
}
# the reference: 1,024 new tokens (generate_code_for_humaneval.py:676-680), 3 s a test run (eval_humaneval.py:131)
_PAPER = {"style": "paper", "max_tokens": 1024, "exec_timeout": 3.0}
PROTOCOLS: dict[str, dict[str, Any]] = {
    **{f"paper-{name}": {**values, **_PAPER} for name, values in _PERSD.items()},
    **{f"persd-{name}": dict(values) for name, values in _PERSD.items()},
}


def protocol_defaults(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    if name not in PROTOCOLS:
        raise UsageError(f"--protocol: unknown protocol '{name}' (choose from {', '.join(PROTOCOLS)})")
    return dict(PROTOCOLS[name])


def mbpp_eval_ids_path() -> Path:
    """The 307 sanitized MBPP ids: $PERSD_MBPP_EVAL_IDS, else next to the MBPP file, else the data dirs."""
    from persd.engine.tasks import MBPP_ENV, resolve_source

    candidates: list[Path] = []
    if os.environ.get(MBPP_IDS_ENV):
        candidates.append(Path(os.environ[MBPP_IDS_ENV]))
    try:
        candidates.append(resolve_source("mbpp").parent / MBPP_EVAL_IDS)
    except UsageError:
        pass
    if os.environ.get(MBPP_ENV):
        candidates.append(Path(os.environ[MBPP_ENV]) / MBPP_EVAL_IDS)
    for cand in candidates:
        if cand.is_file():
            return cand
    raise UsageError(
        f"--protocol paper-mbpp needs the list of the 307 sanitized MBPP task ids ({MBPP_EVAL_IDS}): put it next "
        f"to mbpp.jsonl, set {MBPP_IDS_ENV} to its path, or pass --task-ids FILE"
    )
