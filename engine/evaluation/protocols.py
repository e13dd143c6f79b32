"""`--protocol` presets: the paper's evaluation settings, filled in where a flag was not given.

The PERsD paper (Chen et al., EMNLP 2023) reports HumanEval pass@1 from n=20 samples at
temperature 0.2, pass@k from n=100 samples at temperature 0.8, and MBPP on the 307 sanitized
task ids scored with the original MBPP text and tests. Refine-inference (`--refine-steps 2`)
is an extra column for models trained on `persd-refine` records, so no preset turns it on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from persd.runtime.errors import UsageError

MBPP_EVAL_IDS = "mbpp-eval-ids-307.json"
MBPP_IDS_ENV = "PERSD_MBPP_EVAL_IDS"  # a path to the ids file, where it is not next to mbpp.jsonl

# name -> defaults; "task_ids": "@mbpp-307" stands for the sanitized id list, found on disk.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper-humaneval": {
        "tasks": "humaneval", "n": 20, "temperature": 0.2, "top_p": 0.95, "max_tokens": 512, "k": (1, 5, 10),
    },
    "paper-humaneval-passk": {
        "tasks": "humaneval", "n": 100, "temperature": 0.8, "top_p": 0.95, "max_tokens": 512, "k": (1, 10, 100),
    },
    "paper-mbpp": {
        "tasks": "mbpp", "task_ids": "@mbpp-307", "n": 20, "temperature": 0.2, "top_p": 0.95, "max_tokens": 512,
        "k": (1, 5, 10),
    },
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
