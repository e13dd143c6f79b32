"""Where `--protocol paper-mbpp`'s 307 sanitized MBPP task ids are found. The protocols themselves are
config files: persd/engine/evaluation/presets/*.toml."""
from __future__ import annotations

import os
from pathlib import Path

from persd.runtime.errors import UsageError

MBPP_EVAL_IDS = "mbpp-eval-ids-307.json"
MBPP_IDS_ENV = "PERSD_MBPP_EVAL_IDS"  # a path to the ids file, where it is not next to mbpp.jsonl


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
