"""Shared fixtures. Helpers for one area live in that area's test module."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PERSD_DATA_DIR", REPO.parent / "shared" / "data"))
# persd finds built-in data sets only through PERSD_DATA_DIR (never through the checkout's location);
# the tests point it at ../shared/data when that is beside the checkout.
if (SHARED_DATA / "mbpp.jsonl").exists():
    os.environ.setdefault("PERSD_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "mbpp.jsonl").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight causal LM + tokenizer, saved with save_pretrained (built once per session)."""
    from persd.runtime.student.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)
