"""Programs for the tasks whose tests are not Python asserts: the judge (judge.py) and the data, as one
self-contained program the sandbox runs like any other.

    sandbox.run(stdio_program(code, [("1 2\\n", "3\\n"), ...], "float:1e-6"))
    sandbox.run(pytest_program(code, "from solution import add\\ndef test_add():\\n    assert add(1, 2) == 3\\n"))

Every test of a task runs in ONE sandbox execution; the judge reports the first failure.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from persd.runtime.sandbox.judge import DEFAULT_RULE, parse_rule

JUDGE = Path(__file__).with_name("judge.py")
JUDGE_PYTEST = Path(__file__).with_name("judge_pytest.py")


@lru_cache(maxsize=2)
def judge_source(pytest: bool = False) -> str:
    """judge.py's source (and judge_pytest.py's after it): what a program compiles before its data."""
    text = JUDGE.read_text(encoding="utf-8")
    return text + "\n\n" + JUDGE_PYTEST.read_text(encoding="utf-8") if pytest else text


def stdio_program(solution: str, cases: list[tuple[str, str]] | tuple, rule: str = DEFAULT_RULE) -> str:
    """The program judging `solution` (a whole stdin/stdout program) on (input, expected output) pairs."""
    parse_rule(rule)  # a bad rule is the caller's error, not a failing solution
    data = [(str(i), str(o)) for i, o in cases]
    return f"{judge_source()}\n\nrun_stdio({solution!r}, {data!r}, {rule!r})\n"


def pytest_program(solution: str, tests: str) -> str:
    """The program running the pytest-style test module `tests` against `solution` (imported as `solution`)."""
    return f"{judge_source(pytest=True)}\n\nrun_pytest({solution!r}, {tests!r})\n"


__all__ = ["stdio_program", "pytest_program", "judge_source", "DEFAULT_RULE", "parse_rule"]
