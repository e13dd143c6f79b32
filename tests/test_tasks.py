"""Task loading: the three shapes, built-in sets, laziness, and file:line errors."""
from __future__ import annotations

import orjson
import pytest
from helpers import FIXTURES, MBPP_FIXTURE, write_jsonl
from persd.engine.tasks import count_tasks, iter_tasks
from persd.runtime.errors import InputError, UsageError


def test_humaneval_builtin_has_164_tasks_with_tests_and_visible_examples():
    tasks = list(iter_tasks("humaneval"))
    assert len(tasks) == 164
    first = tasks[0]
    assert first.task_id == "HumanEval/0" and first.shape == "humaneval"
    assert first.entry_point == "has_close_elements"
    assert first.test_program.rstrip().endswith("check(has_close_elements)")
    assert first.reference.startswith(first.prompt)
    assert "assert has_close_elements([1.0, 2.0, 3.0], 0.5) == False" in first.visible_tests


def test_mbpp_shape():
    tasks = list(iter_tasks(MBPP_FIXTURE))
    assert [t.task_id for t in tasks] == [f"MBPP/{i}" for i in range(1, 41)]  # the fixture: ids 1-40
    t = tasks[1]
    assert t.task_id == "MBPP/2" and t.entry_point == "similar_elements"
    assert t.header == "def similar_elements(test_tup1, test_tup2):\n"
    assert t.visible_tests == t.tests[0]
    assert t.tests[0] in t.prompt and t.prompt.endswith(t.header)
    assert "\r" not in t.reference


def test_mbpp_builtin_name_uses_data_dir(monkeypatch):
    monkeypatch.setenv("PERSD_DATA_DIR", str(FIXTURES))
    assert count_tasks("mbpp") == 40


def test_full_mbpp_has_974_tasks(shared_data, monkeypatch):
    monkeypatch.setenv("PERSD_DATA_DIR", str(shared_data))
    assert count_tasks("mbpp") == 974


def test_mbpp_builtin_missing_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSD_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import persd.engine.tasks as tasks_mod

    monkeypatch.setattr(tasks_mod, "__file__", str(tmp_path / "engine" / "tasks.py"))
    with pytest.raises(UsageError, match="PERSD_DATA_DIR"):
        list(iter_tasks("mbpp"))


def test_generic_shapes(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"task_id": "g/1", "instruction": "Add two numbers.", "entry_point": "add", "header": "def add(a, b):\n",
         "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
        {"task_id": "g/2", "prompt": "def sub(a, b):\n", "entry_point": "sub",
         "test": "def check(f):\n    assert f(3, 1) == 2\n"},
        {"task_id": "g/3", "instruction": "Square.", "entry_point": "sq",
         "reference": "import math\ndef sq(x):\n    return x * x\n"},
    ])
    a, b, c = iter_tasks(path)
    assert a.has_tests and a.visible_tests == "assert add(1, 2) == 3"
    assert a.prompt == '"""\nAdd two numbers.\n"""\n\ndef add(a, b):\n'
    assert b.test_program.rstrip().endswith("check(sub)") and b.prompt == "def sub(a, b):\n"
    assert not c.has_tests and c.header == "import math\ndef sq(x):\n"
    with_tests = c.with_tests(["assert sq(3) == 9"])
    assert with_tests.has_tests and "assert sq(3) == 9" in with_tests.program(c.reference)


@pytest.mark.parametrize("line, message", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (orjson.dumps({"instruction": "x"}), "field 'task_id': missing"),
    (orjson.dumps({"task_id": 1, "foo": "bar"}), "cannot tell the task's shape"),
    (orjson.dumps({"task_id": 1, "text": "x", "test_list": "assert f()"}), "field 'test_list'"),
    (orjson.dumps({"task_id": 1, "instruction": 5}), "field 'instruction': expected a string"),
])
def test_bad_line_names_file_line_and_field(tmp_path, line, message):
    good = orjson.dumps({"task_id": "ok", "instruction": "fine"})
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, line])
    with pytest.raises(InputError) as info:
        list(iter_tasks(path))
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_reading_is_lazy(tmp_path):
    """Tasks stream out before a bad line far down the file is even read."""
    good = orjson.dumps({"task_id": "ok", "instruction": "fine", "tests": ["assert True"]})
    path = write_jsonl(tmp_path / "big.jsonl", [good] * 50_000 + [b"{broken"])
    it = iter_tasks(path)
    assert next(it).task_id == "ok"
    with pytest.raises(InputError, match=r":50001: "):
        for _ in it:
            pass


def test_unknown_source_is_a_usage_error():
    with pytest.raises(UsageError, match="neither a file nor a built-in set"):
        list(iter_tasks("no-such-set"))


def test_humaneval_visible_tests_cover_prose_examples():
    from persd.engine.tasks import docstring_examples

    tasks = {t.task_id: t for t in iter_tasks("humaneval")}
    assert "assert will_it_fly([1, 2], 5) == False" in tasks["HumanEval/72"].visible_tests
    assert 'assert is_simple_power(1, 4) == True' in tasks["HumanEval/76"].visible_tests
    assert "assert multiply(148, 412) == 16" in tasks["HumanEval/97"].visible_tests
    assert tasks["HumanEval/46"].visible_tests.count("fib4(n)") == 0  # prose with free names is not a test
    assert sum(1 for t in tasks.values() if t.visible_tests) > 130
    assert docstring_examples("def f(x):\n    '''f(2) should return 4.'''\n", "f") == ["assert f(2) == 4"]


def test_generic_code_prompt_with_plain_asserts_and_no_entry_point(tmp_path):
    """`prompt` + `test` without `check`: no check() call appended; the entry point comes from the
    prompt's header; the reference is kept."""
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"task_id": "p/1", "prompt": "def inc(a):\n    \"\"\"\n    >>> inc(1)\n    2\n    \"\"\"\n",
         "test": "assert inc(1) == 2\n", "reference": "def inc(a):\n    return a + 1\n"},
        {"task_id": "p/2", "prompt": "import math\ndef area(r):\n", "entry_point": "area",
         "test": "def check(f):\n    assert f(1) == math.pi\n",
         "reference": "import math\ndef area(r):\n    return math.pi * r * r\n"},
    ])
    a, b = iter_tasks(path)
    assert a.shape == "generic" and a.entry_point == "inc" and a.reference
    assert "check(" not in a.test_program and a.visible_tests == "assert inc(1) == 2"
    assert b.test_program.rstrip().endswith("check(area)")
