"""`--tests-from FILE`: the release's Code-Alpaca unit tests (ALP/code-alpaca-mbpp layout) in each shape a file of
them comes in, and a bad file named by its line and field."""
from __future__ import annotations

import json

import pytest
from persd.engine.paper import prompts, unittests
from persd.engine.tasks import iter_tasks
from persd.runtime.errors import UsageError

ROWS = [{"task_id": 7, "text": "Add.", "code": "def add(a, b):\r\n    return a + b",
         "test_list": [{"input": "add(1, 2)", "output": "3"}, {"input": "add(0, 0)", "output": None}]},
        {"task_id": "CodeAlpaca/8", "test_list": [{"input": "f()", "output": "x"}]}]
WANT = {"CodeAlpaca/7": [{"input": "add(1, 2)", "output": "3"}, {"input": "add(0, 0)"}],
        "CodeAlpaca/8": [{"input": "f()", "output": "x"}]}


@pytest.mark.parametrize("shape", ["lines", "array", "columns"])
def test_every_layout_of_the_release_file(tmp_path, shape):
    path = tmp_path / f"{shape}.json"
    if shape == "lines":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif shape == "array":
        path.write_text(json.dumps(ROWS))
    else:
        path.write_text(json.dumps({k: [r.get(k) for r in ROWS] for k in ("task_id", "text", "code", "test_list")}))
    assert unittests.load(str(path)) == WANT


def test_stage_two_rows_keep_the_calls_that_ran(tmp_path):
    path = tmp_path / "unittests.jsonl"
    path.write_text(json.dumps({"task_id": 3, "unittests": [{"input": "g(1)", "output": "2", "pass": True},
                                                          {"input": "g('x')", "output": "boom", "pass": False}]}))
    assert unittests.load(str(path)) == {"CodeAlpaca/3": [{"input": "g(1)", "output": "2"}]}


def test_the_tests_name_the_prompts_function(tmp_path):
    """The reference ends the prompt at the function the first test calls (generate_code_for_alpaca.py:22)."""
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"task_id": "CodeAlpaca/9", "instruction": "Two functions.",
                                 "header": "def helper(x):\n    return x\ndef main(x):\n",
                                 "reference": "def helper(x):\n    return x\ndef main(x):\n    return helper(x)\n"}))
    tests = tmp_path / "tests.jsonl"
    tests.write_text(json.dumps({"task_id": 9, "test_list": [{"input": "helper(1)", "output": "1"}]}))
    (task,) = iter_tasks(str(tasks))
    assert prompts.task_prompt(task).endswith("def main(x):\n")
    assert prompts.task_prompt(unittests.apply(task, str(tests))).endswith("def helper(x):\n")
    assert unittests.apply(task, None) is task


def test_a_bad_file_names_its_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"task_id": 1, "test_list": [{"input": "f()"}]}) + "\n" + json.dumps({"task_id": 2})
                    + "\n")
    with pytest.raises(UsageError, match=r"bad.jsonl:2: field 'test_list'"):
        unittests.load(str(path))
    with pytest.raises(UsageError, match="no such file"):
        unittests.load(str(tmp_path / "missing.json"))
