"""Tests for tasks that have none: the teacher proposes inputs, the sandbox runs the reference on them.

The expected outputs come from executing the task's reference solution, never from the teacher.
The resulting assert statements are checked once more against the reference before they are used.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import orjson

MAX_REPR = 2000  # an expected value longer than this is not turned into a test


@dataclass
class TestgenResult:
    tests: list[str]
    error: str = ""


def reference_probe_tests(calls: list[str], marker: str) -> str:
    """Code run after the reference: each call once, one marked JSON line per call on stdout."""
    lines = [
        "import json as __persd_json",
        f"__persd_calls = {calls!r}",
        "for __persd_i, __persd_c in enumerate(__persd_calls):",
        "    try:",
        "        __persd_v = eval(__persd_c)",
        "        __persd_t = repr(__persd_v)",
        "        __persd_ok = eval(__persd_t) == __persd_v",
        "        __persd_kind = type(__persd_v).__name__",
        "    except BaseException as __persd_e:",
        "        __persd_ok, __persd_t, __persd_kind = False, type(__persd_e).__name__, 'error'",
        (f"    print({marker!r} + __persd_json.dumps([__persd_i, bool(__persd_ok), __persd_t, __persd_kind]),"
         " flush=True)"),
    ]
    return "\n".join(lines) + "\n"


def parse_probe(stdout: str, calls: list[str], marker: str, problems: list[str] | None = None) -> list[str]:
    """Assert statements from the probe's output; why other calls were left out goes to `problems`."""
    problems = [] if problems is None else problems
    tests: list[str] = []
    kinds: list[str] = []
    seen: set[int] = set()
    for line in stdout.splitlines():
        if not line.startswith(marker):
            continue
        try:
            i, ok, text, kind = orjson.loads(line[len(marker):])
        except (orjson.JSONDecodeError, ValueError, TypeError):
            continue
        if i in seen or not 0 <= i < len(calls):
            continue
        if not ok:
            problems.append(f"{calls[i]} raised {text}" if kind == "error" else f"{calls[i]}: result not comparable")
            continue
        if len(text) > MAX_REPR:
            problems.append(f"{calls[i]}: result too long")
            continue
        seen.add(i)
        kinds.append(kind)
        call = calls[i]
        if kind == "float":
            tests.append(f"assert __import__('math').isclose({call}, {text}, rel_tol=1e-6, abs_tol=1e-9)")
        else:
            tests.append(f"assert {call} == {text}")
    if tests and all(k == "NoneType" for k in kinds):
        # A reference that only prints or mutates returns None everywhere: `pass` would satisfy
        # such tests, so they would certify wrong code. Better no tests (the task is `error`).
        problems.append(f"the reference returns None for every input ({len(tests)} calls): "
                        "its result cannot be tested by return value")
        return []
    return tests


def new_marker() -> str:
    return f"__PERSD_PROBE_{secrets.token_hex(8)}__"
