"""The PersDistill reference implementation, imported as a test oracle (never shipped, never copied).

Found through PERSD_REFERENCE_DIR, else `shared/reference/persdistill` beside the checkout (or one
level further up, for worktrees). Its heavy imports (datasets, torch, transformers, deepspeed, openai,
helper modules that were not released) are stubbed: the functions used as oracles are pure string
and process code. Tests that need it skip, saying why, where it is absent.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def reference_dir() -> Path | None:
    if os.environ.get("PERSD_REFERENCE_DIR"):
        cand = Path(os.environ["PERSD_REFERENCE_DIR"])
        return cand if (cand / "code").is_dir() else None
    if os.environ.get("PERSD_TESTS_NO_SHARED", "") not in ("", "0"):  # a fresh clone with nothing beside it
        return None
    for base in (REPO.parent, REPO.parent.parent):
        cand = base / "shared" / "reference" / "persdistill"
        if (cand / "code").is_dir():
            return cand
    return None


def require_reference() -> Path:
    ref = reference_dir()
    if ref is None:
        pytest.skip("the PersDistill reference is not beside the checkout (../shared/reference/persdistill; "
                    "PERSD_TESTS_NO_SHARED hides it) and PERSD_REFERENCE_DIR is not set")
    return ref


class _Stub(types.ModuleType):
    """A module whose every attribute is a harmless callable (decorators pass the function through)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _anything


def _anything(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return _anything


_STUBBED = ["datasets", "timeout_decorator", "multiprocessing_utils", "file_utils", "hf_credentials", "chat_utils",
            "openai", "openai_utils", "torch", "deepspeed", "transformers", "transformers.models",
            "transformers.models.codegen", "transformers.models.codegen.modeling_codegen"]


def load(module: str):
    """Import one of the reference's code/ modules with its heavy dependencies stubbed."""
    ref = require_reference()
    saved = {name: sys.modules.get(name) for name in _STUBBED}
    for name in _STUBBED:
        sys.modules[name] = _Stub(name)
    sys.modules["timeout_decorator"].timeout = lambda *a, **k: (lambda f: f)
    sys.path.insert(0, str(ref / "code"))
    try:
        name = f"persdistill_ref_{module}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, ref / "code" / f"{module}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        with warnings.catch_warnings():  # its regexes hold invalid escapes; not ours to report
            warnings.simplefilter("ignore")
            spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ref / "code"))
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
