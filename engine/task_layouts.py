"""Task rows as code data sets lay them out, read into persd's fields; and the two task kinds whose tests
are not Python asserts: stdin/stdout programs and pytest-style test modules.

Recognised without options (one row at a time, like every shape in engine/tasks.py):

- stdin/stdout (persd's own): task_id, instruction or prompt, stdio_tests ([{input, output}] or
  {inputs, outputs}, or that as JSON text), optional reference and compare (the comparison rule);
- APPS, TACO: problem_id, question, input_output (JSON), solutions (JSON list): stdin/stdout, or
  call-based (fn_name, starter_code): one assert per test, compared as their harness compares;
- CodeContests: name, description, public/private/generated_tests, solutions: stdin/stdout;
- pytest-style, KodCode: task_id or question_id, instruction or question, test (a module of
  `def test_...` functions importing from `solution`), optional solution;
- MBPP sanitized: task_id, prompt, code, test_list (asserts), test_imports.

Any other layout: `--task-fields key=column,...` names the columns (a dotted name reaches into a struct
column: `inputs=public_tests.input`).
"""
from __future__ import annotations

import ast
import re
from typing import Any

import orjson
from persd.runtime.errors import InputError, UsageError

# persd's task fields, the keys --task-fields may map
TASK_FIELDS = ("task_id", "instruction", "prompt", "entry_point", "header", "reference", "tests", "test",
               "stdio_tests", "inputs", "outputs", "compare", "text", "code", "test_list", "test_setup_code",
               "challenge_test_list", "canonical_solution")
STDIO_NOTE = "The program reads its input from standard input and writes its answer to standard output."
CODECONTESTS_PYTHON3 = 3  # CodeContests' `solutions.language` code for Python 3


def parse_fields(text: str | None, flag: str = "--task-fields") -> dict[str, str]:
    """`key=column,key=column` -> {key: column}; an unknown key is the user's error (exit 2)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, eq, column = part.partition("=")
        key, column = key.strip(), column.strip()
        if not eq or not key or not column:
            raise UsageError(f"{flag}: '{part.strip()}' is not key=column")
        if key not in TASK_FIELDS:
            raise UsageError(f"{flag}: '{key}' is not a task field (one of: {', '.join(TASK_FIELDS)})")
        out[key] = column
    return out


def _column(obj: dict, column: str) -> tuple[bool, Any]:
    if column in obj:
        return True, obj[column]
    value: Any = obj
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def map_fields(obj: dict, fields: dict[str, str], path: str, lineno: int) -> dict:
    """The row with persd's fields taken from the columns --task-fields names (a missing column: exit 2)."""
    out = dict(obj)
    for key, column in fields.items():
        found, value = _column(obj, column)
        if not found:
            cols = ", ".join(sorted(obj)[:20])
            raise InputError(path, lineno, f"no such column for --task-fields {key}={column} (columns: {cols})",
                             field=column)
        out[key] = value
    return out


# ------------------------------------------------------------------ known layouts


def _json_value(value: Any, path: str, lineno: int, name: str) -> Any:
    if isinstance(value, (bytes, str)):
        if not str(value).strip():
            return None
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise InputError(path, lineno, f"not valid JSON: {exc.msg}", field=name) from None
    return value


def known_layout(obj: dict, path: str, lineno: int) -> dict:
    """A row of a recognised data set's layout, renamed onto persd's fields; other rows as they are."""
    if "question" in obj and "input_output" in obj and "stdio_tests" not in obj:  # APPS, TACO
        return _apps(obj, path, lineno)
    if "description" in obj and any(k in obj for k in ("public_tests", "private_tests", "generated_tests")) \
            and "stdio_tests" not in obj:  # CodeContests
        return _codecontests(obj, path, lineno)
    if "question" in obj and "test" in obj and "instruction" not in obj and "prompt" not in obj:  # KodCode
        out = dict(obj, instruction=obj["question"])
        if "task_id" not in out:
            for key in ("question_id", "conversation_id"):
                if obj.get(key) is not None:
                    out["task_id"] = str(obj[key])
                    break
        if isinstance(obj.get("solution"), str) and "reference" not in obj:
            out["reference"] = obj["solution"]
        return out
    if "prompt" in obj and "code" in obj and isinstance(obj.get("test_list"), list) and "text" not in obj \
            and all(isinstance(t, str) for t in obj["test_list"]):  # MBPP sanitized
        out = dict(obj, text=obj["prompt"])
        imports = obj.get("test_imports")
        if isinstance(imports, list) and imports and "test_setup_code" not in obj:
            out["test_setup_code"] = "\n".join(str(i) for i in imports)
        return out
    return obj


def _apps_id_and_reference(out: dict, obj: dict, path: str, lineno: int) -> dict:
    """An APPS/TACO row's id (problem_id) and reference (its first solution), where the row names none."""
    if "task_id" not in out and obj.get("problem_id") is not None:
        out["task_id"] = str(obj["problem_id"])
    solutions = _json_value(obj.get("solutions"), path, lineno, "solutions")
    if "reference" not in out and isinstance(solutions, list) and solutions and isinstance(solutions[0], str):
        out["reference"] = solutions[0]
    return out


def _apps(obj: dict, path: str, lineno: int) -> dict:
    io = _json_value(obj.get("input_output"), path, lineno, "input_output") or {}
    if not isinstance(io, dict):
        raise InputError(path, lineno, "expected a JSON object with inputs and outputs", field="input_output")
    if io.get("fn_name"):
        return _apps_call_based(obj, io, path, lineno)
    out = dict(obj, instruction=obj["question"], inputs=io.get("inputs") or [], outputs=io.get("outputs") or [])
    return _apps_id_and_reference(out, obj, path, lineno)


# What APPS's and TACO's harness has imported before a call-based solution runs (their starter code uses
# `List[int]` without importing it), and their comparison: the answer equals the expected value or, where
# that is a non-empty list, its first element; a tuple answer counts as a list.
CALL_BASED_SETUP = """\
import collections, functools, heapq, itertools, math, random, string, sys
from collections import Counter, OrderedDict, defaultdict, deque
from functools import lru_cache, reduce
from heapq import heapify, heappop, heappush
from itertools import accumulate, combinations, permutations, product
from math import ceil, floor, gcd, inf, log, log2, sqrt
from typing import Dict, List, Optional, Set, Tuple


class _persd_expected:
    def __init__(self, value):
        self.value = value

    def __eq__(self, answer):
        if isinstance(answer, tuple):
            answer = list(answer)
        if answer == self.value:
            return True
        if not (isinstance(self.value, list) and self.value):
            return False
        if isinstance(answer, list) and answer and isinstance(answer[0], tuple):
            answer = [list(x) for x in answer]
        return answer == self.value[0]

    __hash__ = None

    def __repr__(self):
        if isinstance(self.value, list) and len(self.value) == 1:
            return f"{self.value[0]!r} (or {self.value!r})"
        return repr(self.value)
"""


def _int_keys(value: Any) -> Any:
    """JSON made a dict's int keys strings: turned back where every key is one (as APPS's harness does)."""
    if isinstance(value, dict) and value:
        try:
            return {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            return value
    return value


def call_assert(call: str, args: Any, expected: Any) -> str:
    """One call-based test as one assert line: `assert f(1, [2]) == 3` (the sandbox's feedback then shows
    the input, the output and the expected value); a non-empty list expected goes through APPS's rule."""
    args = list(args) if isinstance(args, list) else [args]
    if args:
        args[0] = _int_keys(args[0])
    expected = _int_keys(expected)
    if isinstance(expected, list) and expected:
        expected = [_int_keys(expected[0]), *expected[1:]]
    shown = f"_persd_expected({expected!r})" if isinstance(expected, list) and expected else repr(expected)
    return f"assert {call}({', '.join(repr(a) for a in args)}) == {shown}"


def _apps_call_based(obj: dict, io: dict, path: str, lineno: int) -> dict:
    """A call-based APPS/TACO problem (`fn_name`): a generic task with one assert per test. A `def` starter is
    the header and `fn_name` the entry point; a `class Solution` starter (LeetCode's) is shown in the
    statement and the solver writes the class (the tests call `Solution().fn_name(...)`)."""
    fn = io["fn_name"]
    if not isinstance(fn, str) or not fn.isidentifier():
        raise InputError(path, lineno, f"fn_name {fn!r} is not a Python name", field="input_output")
    ins, outs = io.get("inputs") or [], io.get("outputs") or []
    if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
        raise InputError(path, lineno, "expected lists of inputs and outputs of the same length", field="input_output")
    if not ins:
        raise InputError(path, lineno, "no tests", field="input_output")
    starter = obj.get("starter_code")
    starter = starter.replace("\r\n", "\n").expandtabs(4).rstrip() if isinstance(starter, str) else ""
    in_class = bool(re.search(r"^class\s+Solution\b", starter, re.M))
    call = f"Solution().{fn}" if in_class else fn
    out = {k: v for k, v in obj.items() if k not in ("input_output", "starter_code")}
    instruction = obj["question"]
    if in_class:
        instruction = f"{instruction.rstrip()}\n\nComplete this code:\n{starter}\n"
    out.update(instruction=instruction, tests=[call_assert(call, a, e) for a, e in zip(ins, outs)],
               test_setup_code=CALL_BASED_SETUP)
    if not in_class:
        out["entry_point"] = fn
        if re.search(rf"^def\s+{re.escape(fn)}\s*\(", starter, re.M):
            out["header"] = starter + "\n"
    return _apps_id_and_reference(out, obj, path, lineno)


def _codecontests(obj: dict, path: str, lineno: int) -> dict:
    inputs: list = []
    outputs: list = []
    visible = 0
    for key in ("public_tests", "private_tests", "generated_tests"):
        tests = obj.get(key) or {}
        if not isinstance(tests, dict):
            raise InputError(path, lineno, "expected {input: [...], output: [...]}", field=key)
        ins, outs = list(tests.get("input") or []), list(tests.get("output") or [])
        if len(ins) != len(outs):
            raise InputError(path, lineno, f"{len(ins)} inputs but {len(outs)} outputs", field=key)
        inputs += ins
        outputs += outs
        if key == "public_tests":
            visible = len(ins)
    out = dict(obj, instruction=obj["description"], inputs=inputs, outputs=outputs, visible_cases=visible)
    if "task_id" not in out and obj.get("name") is not None:
        out["task_id"] = str(obj["name"])
    sols = obj.get("solutions")
    if "reference" not in out and isinstance(sols, dict):
        for lang, code in zip(sols.get("language") or [], sols.get("solution") or []):
            if lang == CODECONTESTS_PYTHON3 and isinstance(code, str):
                out["reference"] = code
                break
    return out


# ------------------------------------------------------------------ stdin/stdout tasks


def _text(value: Any, path: str, lineno: int, name: str) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # APPS: some outputs are line lists
        value = "\n".join(value)
    if not isinstance(value, str):
        raise InputError(path, lineno, f"expected a string, got {type(value).__name__}", field=name)
    return value.replace("\r\n", "\n")


def io_cases(obj: dict, path: str, lineno: int) -> list[tuple[str, str]]:
    """(input, output) pairs from `stdio_tests` ([{input, output}], {inputs, outputs}, or that as JSON text)
    or from parallel `inputs` / `outputs` lists."""
    if "stdio_tests" in obj:
        value = _json_value(obj["stdio_tests"], path, lineno, "stdio_tests")
        if isinstance(value, dict):
            ins, outs = value.get("inputs", value.get("input")), value.get("outputs", value.get("output"))
        elif isinstance(value, list) and all(isinstance(t, dict) for t in value):
            if any("input" not in t or "output" not in t for t in value):
                raise InputError(path, lineno, 'expected [{"input": ..., "output": ...}, ...]', field="stdio_tests")
            ins, outs = [t["input"] for t in value], [t["output"] for t in value]
        else:
            raise InputError(path, lineno, 'expected [{"input": ..., "output": ...}, ...] or {"inputs": [...], '
                             '"outputs": [...]}', field="stdio_tests")
        name = "stdio_tests"
    else:
        ins = _json_value(obj.get("inputs"), path, lineno, "inputs")
        outs = _json_value(obj.get("outputs"), path, lineno, "outputs")
        name = "outputs"
    if not isinstance(ins, list) or not isinstance(outs, list):
        raise InputError(path, lineno, "expected lists of inputs and outputs", field=name)
    if len(ins) != len(outs):
        raise InputError(path, lineno, f"{len(ins)} inputs but {len(outs)} outputs", field=name)
    if not ins:
        raise InputError(path, lineno, "no tests", field=name)
    return [(_text(i, path, lineno, name), _text(o, path, lineno, name)) for i, o in zip(ins, outs)]


def example_block(cases: list[tuple[str, str]] | tuple) -> str:
    """The visible cases as the solver sees them."""
    parts = []
    for inp, out in cases:
        parts.append(f"Input:\n{inp.rstrip()}\nOutput:\n{out.rstrip()}")
    return "\n\n".join(parts)


# ------------------------------------------------------------------ pytest-style tasks

_TEST_DEF = re.compile(r"^(?:def test\w*\s*\(|class Test\w*)", re.M)


def is_pytest_module(test: Any) -> bool:
    """Test code made of `def test_...()` functions (and no HumanEval-style `check`)."""
    return isinstance(test, str) and bool(_TEST_DEF.search(test)) and not re.search(r"^def check\(", test, re.M)


def solution_imports(test: str) -> list[str]:
    """Names a test module imports from `solution` (`from solution import a, b`)."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return []
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "solution":
            names += [a.name for a in node.names if a.name != "*"]
    return names


def first_test(test: str) -> str:
    """The module's imports and its first test function: what the solver is shown."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return ""
    lines = test.split("\n")
    keep: list[str] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            keep += lines[node.lineno - 1:node.end_lineno]
        elif (isinstance(node, ast.FunctionDef) and node.name.startswith("test")) or \
                (isinstance(node, ast.ClassDef) and node.name.startswith("Test")):
            start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            keep += [""] + lines[start - 1:node.end_lineno]
            break
    return "\n".join(keep).strip() + "\n" if keep else ""
