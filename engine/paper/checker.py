"""Paper-mode testing of Code-Alpaca attempts, and the error text the reference builds from a failure.

The reference (eval_alpaca.py) runs every test in its own process with a 3 s limit
(`eval_code_wrapper`, :156-170), reports the first failing one (`eval`, :256-300) and turns it into
the teacher's ERROR text (`get_error_text`, :184-202). Here each test is one program run in persd's
sandbox (the isolation stays persd's); the program does what `eval_code` (:116-153) does inside it:

- the import prelude before the code (math, numpy as np, collections, heapq, ...);
- `output = <call>` after the code, in a fresh global namespace (so `if __name__ == "__main__":`
  blocks do not run, as there);
- a function that returns None is judged by what it printed;
- the result compared as floats with pytest's default `approx`, else as literals, else as text.

On failure the program prints the traceback between two random markers and raises; persd reads
the text back (`failure_text`) and `alpaca_return_value` / `error_text` do what the reference does
with it, byte for byte. A pass still needs the sandbox's own proof that the program ran to its end.

Tests are dicts `{"input": "f(1, 2)", "output": "3"}`; "output" may be absent (the test then only
checks that the call runs). HumanEval and MBPP (eval_humaneval.py:246-280, eval_mbpp.py:275-305)
report the last traceback line split at its first colon: `bench_return_value`.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

PRELUDE = (
    "import sys\nimport time\nimport itertools\nfrom itertools import accumulate, product, permutations, combinations\n"
    "import collections\nfrom collections import Counter, OrderedDict, deque, defaultdict, ChainMap\n"
    "from functools import lru_cache\nimport math\nfrom math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, "
    "log, log2\nimport fractions\nfrom typing import List, Tuple\nimport numpy as np\nimport random\nimport heapq\n"
    "from heapq import *\n"
)
TEST_TIMEOUT_S = 3.0  # eval_alpaca.py:161 (p.join(3))
TRIM_WORDS = 50  # eval_alpaca.py:196-198
TIMEOUT_TEXT = "Exit code: None"  # a child killed after join(3): its exit code is not yet collected

# The program run in the sandbox for one test. Names are prefixed so the code under test, which runs
# in its own namespace anyway, cannot collide with them.
_PROGRAM = '''\
import sys as _p_sys, io as _p_io, traceback as _p_tb, ast as _p_ast, math as _p_math
_p_src = {src!r}
_p_input = {input!r}
_p_args = {args!r}
_p_expected = {expected!r}
_p_mark = {mark!r}
_p_emit = {emit!r}


def _p_is_float(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _p_approx(actual, expected):
    # pytest.approx(expected) == actual with its defaults: rel 1e-6, abs 1e-12, nan never equal
    if actual == expected:
        return True
    if _p_math.isinf(expected) or _p_math.isnan(expected) or _p_math.isnan(actual):
        return False
    return abs(expected - actual) <= max(1e-6 * abs(expected), 1e-12)


def _p_run():
    real = _p_sys.stdout
    try:
        try:
            buffer = _p_io.StringIO()
            _p_sys.stdout = buffer
            loc = {{}}
            exec(f"{{_p_src}}\\n{{_p_input}}\\n", loc)
            printed = buffer.getvalue()
            _p_sys.stdout = real
            out = loc["output"]
            if out is None:
                out = printed
            out = str(out)
            if _p_expected is not None:
                msg = "Input: " + _p_args + " Output: " + out + " Expected: " + _p_expected
                if _p_is_float(_p_expected) and _p_is_float(out):
                    assert _p_approx(float(out), float(_p_expected)), msg
                else:
                    try:
                        assert _p_ast.literal_eval(out) == _p_ast.literal_eval(_p_expected), msg
                    except:  # noqa: E722 (the reference's bare except: any failure compares the text)
                        assert out == _p_expected, msg
        except Exception:
            return _p_tb.format_exc(), None
        except SystemExit as exc:  # the reference's child process exits with this code
            code = exc.code
            return "Exit code: " + str(0 if code is None else code if isinstance(code, int) else 1), None
        except BaseException:
            return "Exit code: 1", None
        return None, out
    finally:
        _p_sys.stdout = real


_p_failure, _p_out = _p_run()
if _p_failure is None and _p_emit:  # the value the reference records as a generated test's output
    _p_sys.stdout.write(_p_mark + "\\n" + _p_out + "\\n" + _p_mark + "\\n")
    _p_sys.stdout.flush()
if _p_failure is not None:
    _p_sys.stdout.write(_p_mark + "\\n" + _p_failure + "\\n" + _p_mark + "\\n")
    _p_sys.stdout.flush()
    raise RuntimeError("paper-mode test failed (its error text is on stdout)")
'''


def new_marker() -> str:
    return f"__PERSD_PAPER_{secrets.token_hex(8)}__"


def test_program(code: str, test: dict, marker: str, emit: bool = False) -> str:
    """The program that runs one test against `code` (already cleaned and truncated). `emit`: also
    print the call's output between the markers when it runs (for generating expectations)."""
    call = str(test["input"]).strip()
    expected = test.get("output")
    return _PROGRAM.format(src=PRELUDE + code, input="output = " + call, args=call[call.find("("): call.rfind(")") + 1],
                           expected=None if expected is None else str(expected), mark=marker, emit=emit)


def failure_text(result: Any, marker: str) -> str:
    """The text the reference's `eval_code_wrapper` returns for a failed run: the traceback the
    program printed, or `Exit code: N` where the process ended without reporting."""
    stdout = getattr(result, "stdout", "") or ""
    start = stdout.find(marker + "\n")
    if start >= 0:
        end = stdout.find("\n" + marker, start + len(marker) + 1)
        if end >= 0:
            return stdout[start + len(marker) + 1: end]
    if result.status == "timeout":
        return TIMEOUT_TEXT
    if getattr(result, "signal", None):
        return f"Exit code: -{result.signal}"
    if getattr(result, "exit_code", None) is not None:
        return f"Exit code: {result.exit_code}"
    return TIMEOUT_TEXT


def alpaca_return_value(r: str) -> dict:
    """eval_alpaca.py:275-295: the error type and, for a failed comparison, its INPUT/OUTPUT/EXPECTED."""
    at = r.rfind(": Input:")
    error_type = r[:at].split("\n")[-1].split(" ")[-1]
    rest = r[at:]
    if len(rest) < 5:
        error_type = r.strip("\n").split("\n")[-1]
        rest = ""
    return _error_value(error_type, rest)


def bench_return_value(r: str) -> dict:
    """eval_humaneval.py:262-278 (= eval_mbpp.py): the last line, split at its first colon."""
    last = r.strip("\n").split("\n")[-1]
    error_type = last.split(":")[0]
    rest = ":".join(last.split(":")[1:])
    return _error_value(error_type, rest)


def _error_value(error_type: str, rest: str) -> dict:
    """{error_type, error}; an AssertionError's Input/Output/Expected parts split out, as both checkers do."""
    value: dict = {"error_type": error_type, "error": rest}
    if error_type == "AssertionError":
        parts = rest.replace("Input:", "::").replace("Output:", "::").replace("Expected:", "::").split("::")
        if len(parts) >= 4:
            value["error"] = {"input": parts[1].strip(), "output": parts[2].strip(), "expected": parts[3].strip()}
        else:
            value["error"] = ""
    return value


def _trim(text: str, words: int) -> str:
    return " ".join(text.split(" ")[:words])


def error_text(value: dict | None, trim_words: int | None = TRIM_WORDS) -> str:
    """The reference's `get_error_text`: `AssertionError\\nINPUT: ..\\nOUTPUT: ..\\nEXPECTED: ..` (each part cut
    to 50 space-separated words for Code-Alpaca), else `<type> : <rest>`."""
    if value is None:
        return ""
    if value["error_type"] == "AssertionError":
        err = value["error"]
        if not isinstance(err, dict):
            return value["error_type"]
        parts = [err["input"], err["output"], err["expected"]]
        if trim_words is not None:
            parts = [_trim(p, trim_words) for p in parts]
        return f"AssertionError\nINPUT: {parts[0]}\nOUTPUT: {parts[1]}\nEXPECTED: {parts[2]}"
    err = value["error"]
    return value["error_type"] + " : " + (err if isinstance(err, str) else str(err))


@dataclass
class Verdict:
    passed: bool
    error: str  # the reference's error text ("" when passed)
    raw: str = ""  # what the failing run returned (traceback or exit code)
    failed_test: int | None = None
    runs: int = 0


Runner = Callable[[str, float], Awaitable[Any]]  # (program, timeout) -> ExecResult


async def check_alpaca(run: Runner, code: str, tests: list[dict], timeout: float = TEST_TIMEOUT_S) -> Verdict:
    """Run `truncate_code(code)`'s tests one by one (each its own sandbox run) and stop at the first
    failure, which is the one the reference reports. No tests: the reference passes the code."""
    from persd.engine.paper.cleaning import truncate_code

    src = truncate_code(code)
    runs = 0
    for i, test in enumerate(tests):
        marker = new_marker()
        result = await run(test_program(src, test, marker), timeout)
        runs += 1
        if result.status == "passed":
            continue
        raw = failure_text(result, marker)
        return Verdict(False, error_text(alpaca_return_value(raw)), raw, i, runs)
    return Verdict(True, "", "", None, runs)


async def expected_outputs(run: Runner, code: str, entry: str, text: str,
                           timeout: float = TEST_TIMEOUT_S) -> list[dict]:
    """Tests from proposed inputs, the reference's way (generate_alpaca_data.py:90-132): each line a call
    (cut to start at the entry point's name), run on the reference solution; a call that runs gives
    {"input", "output"} with the output as the reference records it (str of the value, or what was
    printed when the function returns None); an output that is an object's default repr gives an
    input-only test. Calls that fail are left out (the release does not show how the reference's
    dataset kept them)."""
    import re

    tests: list[dict] = []
    for line in text.strip().split("\n"):
        line = line.strip()
        if not line.startswith(entry) and entry in line:
            line = line[line.find(entry):]
        marker = new_marker()
        result = await run(test_program(code, {"input": line}, marker, emit=True), timeout)
        if result.status != "passed":
            continue
        stdout = result.stdout or ""
        start = stdout.find(marker + "\n")
        end = stdout.find("\n" + marker, start + len(marker) + 1) if start >= 0 else -1
        if start < 0 or end < 0:
            continue
        out = stdout[start + len(marker) + 1: end]
        if re.search("<" + entry + " object at .*>", out):
            tests.append({"input": line})
        else:
            tests.append({"input": line, "output": out})
    return tests
