"""Shared fixtures. Helpers for one area live in that area's test module.

Data: the tests use the repository's own fixtures in tests/data (a few dozen MBPP tasks, a few
hundred PersDistill records). The full data sets are only for the full-size tests, which ask for
the `shared_data` fixture and skip without it. They are found through PERSD_DATA_DIR, else in
../shared/data beside the checkout. PERSD_TESTS_NO_SHARED=1 runs the suite as a fresh clone with
nothing beside it would: the full data is not looked for, and PERSD_DATA_DIR is cleared for every
command the tests start.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A suite started in the background of a non-interactive shell (`make test &`) inherits SIGINT ignored,
# and so would every persd it starts (an ignored signal survives exec): the Ctrl-C tests need the
# terminal's default. A handler here becomes the default in the children.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = ("PERSD_DATA_DIR", "PERSD_MBPP", "PERSD_MBPP_EVAL_IDS")
NO_SHARED = os.environ.get("PERSD_TESTS_NO_SHARED", "") not in ("", "0")
if NO_SHARED:
    for name in DATA_ENV:
        os.environ.pop(name, None)
    SHARED_DATA: Path | None = None
else:
    SHARED_DATA = Path(os.environ.get("PERSD_DATA_DIR", REPO.parent / "shared" / "data"))
    # persd finds built-in data sets only through PERSD_DATA_DIR (never through the checkout's location);
    # the tests point it at ../shared/data when that is beside the checkout.
    if (SHARED_DATA / "mbpp.jsonl").exists():
        os.environ.setdefault("PERSD_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full data sets (full-size tests only)."""
    if SHARED_DATA is None:
        pytest.skip("full-size test: PERSD_TESTS_NO_SHARED is set")
    if not (SHARED_DATA / "mbpp.jsonl").exists():
        pytest.skip(f"full-size test: the full data sets are not at {SHARED_DATA} (set PERSD_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight causal LM + tokenizer, saved with save_pretrained (built once per session)."""
    from persd.runtime.student.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


def pytest_collection_modifyitems(config, items):
    """Tests that ask for the full data sets are marked full_data (`pytest -m full_data` runs only them)."""
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.full_data)
