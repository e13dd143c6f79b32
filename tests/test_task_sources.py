"""--tasks from parquet files and folders, saved datasets and data sets' own layouts (APPS/TACO, CodeContests,
KodCode, MBPP sanitized), --task-fields and --compare, and bad rows named `file/split:row: field` (exit 2)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FIXTURES
from persd.engine import prompts
from persd.engine.collect.source import scan_source
from persd.engine.tasks import count_tasks, iter_tasks, parse_task_obj, task_reading
from persd.runtime.errors import InputError, UsageError

REPO = Path(__file__).resolve().parents[1]
TASKS = FIXTURES / "tasks"
STDIO_ROW = {"task_id": "t/1", "instruction": "Add.", "reference": "print(sum(map(int, input().split())))\n",
             "stdio_tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "4\n"}]}


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_fixture_sources_read_alike():
    by_src = {src: [(t.task_id, t.shape, t.io_cases, t.test_program) for t in iter_tasks(src)]
              for src in (TASKS / "pytest.jsonl", f"{TASKS / 'pytest-kodcode-saved'}@test")}
    a, b = by_src.values()
    assert a == b and [x[1] for x in a] == ["pytest"] * 3
    cc = list(iter_tasks(TASKS / "stdio-codecontests.parquet"))
    js = {t.task_id: t for t in iter_tasks(TASKS / "stdio.jsonl")}
    assert [t.task_id for t in cc] == ["stdio/sum", "stdio/reverse-words"]
    for t in cc:
        assert t.shape == "stdio" and t.io_cases == js[t.task_id].io_cases and t.reference == js[t.task_id].reference
        assert t.source.endswith(f"stdio-codecontests.parquet:{cc.index(t)}")
    assert count_tasks(TASKS / "stdio-codecontests.parquet") == 2
    assert count_tasks(f"{TASKS / 'pytest-kodcode-saved'}@test") == 3


def test_parquet_folder_and_digest(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [STDIO_ROW])
    write_parquet(folder / "b.parquet", [dict(STDIO_ROW, task_id="t/2")])
    assert [t.task_id for t in iter_tasks(folder)] == ["t/1", "t/2"]
    info = scan_source(str(folder))
    assert info.count == 2
    write_parquet(folder / "b.parquet", [dict(STDIO_ROW, task_id="t/2", reference="print(4)\n")])
    assert scan_source(str(folder)).sha256 != info.sha256  # a changed row changes the digest (resume refuses it)
    write_parquet(folder / "b.parquet", [dict(STDIO_ROW)])
    with pytest.raises(InputError, match=r"b\.parquet:0: field 'task_id': duplicate task_id 't/1'"):
        scan_source(str(folder))


def test_saved_dataset_needs_a_split_when_it_has_several(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([STDIO_ROW]),
                          "test": datasets.Dataset.from_list([dict(STDIO_ROW, task_id="t/9")])}).save_to_disk(
        str(tmp_path / "dd"))
    with pytest.raises(UsageError, match="name a split with @SPLIT .it has train, test"):
        list(iter_tasks(tmp_path / "dd"))
    assert [t.task_id for t in iter_tasks(f"{tmp_path / 'dd'}@test")] == ["t/9"]
    with pytest.raises(UsageError, match="no split 'valid'"):
        list(iter_tasks(f"{tmp_path / 'dd'}@valid"))


def test_layouts_of_known_data_sets():
    apps = {"problem_id": 7, "question": "Sum it.", "solutions": '["print(3)"]',
            "input_output": '{"inputs": ["1 2\\n"], "outputs": [["3"]]}'}
    t = parse_task_obj(apps, "apps", 0)
    assert (t.task_id, t.shape, t.io_cases, t.reference) == ("7", "stdio", (("1 2\n", "3"),), "print(3)")
    call = parse_task_obj(dict(apps, input_output='{"fn_name": "f", "inputs": [[1, {"2": 3}]], "outputs": [[4]]}',
                               starter_code="def f(a, b):\n\t"), "apps", 0)
    assert (call.shape, call.entry_point, call.header) == ("generic", "f", "def f(a, b):\n")
    assert call.tests == ("assert f(1, {'2': 3}) == _persd_expected([4])",)  # only a first dict argument's keys
    for bad, said in (('{"fn_name": "no good", "inputs": [[1]], "outputs": [1]}', "fn_name 'no good' is not"),
                      ('{"fn_name": "f", "inputs": [[1]], "outputs": []}', "expected lists of inputs and outputs"),
                      ('{"fn_name": "f", "inputs": [], "outputs": []}', "no tests")):
        with pytest.raises(InputError, match=f"apps:0: field 'input_output': {said}"):
            parse_task_obj(dict(apps, input_output=bad), "apps", 0)
    cc = {"name": "cc/1", "description": "Echo.", "public_tests": {"input": ["a\n"], "output": ["a\n"]},
          "private_tests": {"input": ["b\n"], "output": ["b\n"]}, "generated_tests": {"input": [], "output": []},
          "solutions": {"language": [1, 3], "solution": ["print raw_input()", "print(input())"]}}
    t = parse_task_obj(cc, "cc", 3)
    assert t.io_cases == (("a\n", "a\n"), ("b\n", "b\n")) and t.reference == "print(input())"
    assert t.visible_tests == "Input:\na\nOutput:\na" and t.program("x", tests=t.visible_tests).count("'a\\n'") == 2
    kod = {"question_id": "k/1", "question": "Write inc(x).", "solution": "def inc(x):\n    return x + 1\n",
           "test": "from solution import inc\n\ndef test_inc():\n    assert inc(1) == 2\n"}
    t = parse_task_obj(kod, "kod", 0)
    assert (t.shape, t.entry_point, t.header) == ("pytest", "inc", "def inc(x):\n")
    sanitized = {"task_id": 2, "prompt": "Write a function.", "code": "def f(x):\n    return x\n",
                 "test_list": ["assert f(1) == 1"], "test_imports": ["import math"]}
    t = parse_task_obj(sanitized, "mbpp", 0)
    assert (t.shape, t.setup_code, t.entry_point) == ("mbpp", "import math", "f")


def test_call_based_comparison_is_apps_rule():
    """APPS's harness: equal, or (a non-empty list stored) equal to its first element; a tuple counts as a list
    (also inside a list); nothing else."""
    from persd.engine.task_layouts import CALL_BASED_SETUP, call_assert

    env: dict = {}
    exec(CALL_BASED_SETUP, env)
    cases = [(15, [15], True), ([15], [15], True), ((1, 5), [1, 5], True), ((1, 5), [[1, 5]], True),
             ([(1, 2), (3, 4)], [[[1, 2], [3, 4]]], True), ([1, 5], [5, 1], False), ([], [], True),
             ("a", ["a"], True), (None, [None], True), (1, [1, 2], True), (2, [1, 2], False), ("a", "ab", False)]
    for answer, stored, equal in cases:
        env["f"] = lambda answer=answer: answer
        line = call_assert("f", [], stored)
        try:
            exec(line, env)
            passed = True
        except AssertionError:
            passed = False
        assert passed is equal, (line, answer)
    assert call_assert("g", [{"1": "a"}, {"2": "b"}], {"3": 4}) == "assert g({1: 'a'}, {'2': 'b'}) == {3: 4}"
    assert call_assert("g", "x", [{"5": 1}]) == "assert g('x') == _persd_expected([{5: 1}])"


def test_task_fields_and_compare():
    row = {"id": "x/1", "statement": "Add.", "tests": {"inputs": ["1 2\n"], "outputs": ["3.0\n"]}}
    fields = task_reading(type("C", (), {"task_fields": "task_id=id,instruction=statement,stdio_tests=tests",
                                         "compare": "float:1e-3"})())
    t = parse_task_obj(row, "f.parquet", 0, fields)
    assert (t.task_id, t.shape, t.compare) == ("x/1", "stdio", "float:1e-3")
    dotted = parse_task_obj({"id": "x/2", "statement": "A.", "t": {"in": ["1\n"], "out": ["1\n"]}}, "f", 0,
                            task_reading(type("C", (), {"task_fields": "task_id=id,instruction=statement,"
                                                        "inputs=t.in,outputs=t.out"})()))
    assert dotted.io_cases == (("1\n", "1\n"),)
    with pytest.raises(InputError, match=r"^f\.parquet:0: field 'nope': no such column .*columns: id, statement"):
        parse_task_obj(row, "f.parquet", 0, {"instruction": "nope"})
    with pytest.raises(UsageError, match="--task-fields: 'solution' is not a task field"):
        task_reading(type("C", (), {"task_fields": "solution=x"})())
    with pytest.raises(UsageError, match="--compare: unknown comparison rule"):
        task_reading(type("C", (), {"compare": "fuzzy"})())
    with pytest.raises(InputError, match="field 'compare'"):
        parse_task_obj(dict(STDIO_ROW, compare="fuzzy"), "f", 0)


def test_stdio_prompt_shows_examples_not_python():
    t = parse_task_obj(STDIO_ROW, "f", 0)
    msg = prompts.student_user_message(t)
    assert "For example:\n```\nInput:\n1 2\nOutput:\n3\n```" in msg and "complete program" in msg
    assert prompts.stop_sequences(t) == ()


@pytest.mark.parametrize("make,where", [
    ("parquet", r"bad\.parquet:1: field 'stdio_tests'"),
    ("saved", r"saved/train:1: field 'stdio_tests'"),
    ("unknown-column", r"bad\.parquet:0: field 'question': no such column"),
])
def test_bad_rows_exit_2_naming_file_split_row_field(tmp_path, make, where):
    rows = [STDIO_ROW, dict(STDIO_ROW, task_id="t/2", stdio_tests=[])]
    if make == "saved":
        import datasets

        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
        src, extra = str(tmp_path / "saved"), []
    else:
        src = str(write_parquet(tmp_path / "bad.parquet", rows))
        extra = ["--task-fields", "instruction=question"] if make == "unknown-column" else []
    proc = subprocess.run([sys.executable, "-m", "persd", "check", "--tasks", src, "--references",
                           "--out", str(tmp_path / "r.jsonl"), *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(where, proc.stderr), proc.stderr


MAKE_CACHE = """
import glob, os, shutil, sys
import datasets
datasets.load_dataset("parquet", data_files={"test": sys.argv[1]})
built = glob.glob(os.path.join(datasets.config.HF_DATASETS_CACHE, "parquet", "*", "*", "*", "dataset_info.json"))[0]
src = os.path.dirname(built)
dst = os.path.join(datasets.config.HF_DATASETS_CACHE, "someone___tiny", "default", "0.0.0", os.path.basename(src))
os.makedirs(dst)
shutil.copy(built, dst)
shutil.copy(os.path.join(src, "parquet-test.arrow"), os.path.join(dst, "tiny-test.arrow"))
"""


@pytest.mark.slow
def test_hf_name_loads_from_the_local_cache_offline(tmp_path):
    """hf:NAME with the hub unreachable: `datasets.load_dataset` reads what a former load left in HF_HOME (here a
    cache entry laid out as a hub download leaves it, made from a local parquet file)."""
    import os

    rows = [STDIO_ROW, dict(STDIO_ROW, task_id="t/2")]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", MAKE_CACHE, str(write_parquet(tmp_path / "t.parquet", rows))], env=env,
                   check=True, capture_output=True, timeout=300)
    out = tmp_path / "r.jsonl"
    proc = subprocess.run([sys.executable, "-m", "persd", "check", "--tasks", "hf:someone/tiny@test", "--references",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import orjson

    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert [(x["task_id"], x["status"]) for x in lines] == [("t/1", "passed"), ("t/2", "passed")]
    proc = subprocess.run([sys.executable, "-m", "persd", "check", "--tasks", "hf:someone/other@test", "--references",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "hf:someone/other@test: cannot load" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
