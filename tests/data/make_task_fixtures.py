"""Write the task-kind fixtures in tests/data/tasks/ (run by hand; the tests read the files it wrote).

    python tests/data/make_task_fixtures.py

Written for persd's tests (no outside data, same licence as persd): three stdin/stdout problems and three
pytest-style tasks, each with a correct reference, as JSONL (persd's own layouts), as a parquet file in
CodeContests' layout, and as a dataset saved with `datasets.save_to_disk` in KodCode's layout; four call-based
problems in APPS's layout (`apps-call-based.jsonl`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent / "tasks"

STDIO = [
    {
        "task_id": "stdio/sum",
        "instruction": "The first line holds n; the second n integers. Print their sum.",
        "stdio_tests": [{"input": "3\n1 2 3\n", "output": "6\n"}, {"input": "1\n-5\n", "output": "-5\n"},
                        {"input": "4\n10 20 30 40\n", "output": "100\n"},
                        {"input": "2\n1000000000000 1\n", "output": "1000000000001\n"}],
        "reference": "n = int(input())\nprint(sum(map(int, input().split())))\n",
    },
    {
        "task_id": "stdio/mean",
        "instruction": "Read whitespace-separated numbers until the end of the input and print their mean "
                       "(an absolute or relative error of 1e-6 is accepted).",
        "stdio_tests": [{"input": "1 2\n", "output": "1.5\n"}, {"input": "1 1 2\n", "output": "1.3333333333\n"},
                        {"input": "10\n", "output": "10.0\n"}],
        "compare": "float:1e-6",
        "reference": "import sys\nxs = [float(t) for t in sys.stdin.read().split()]\nprint(sum(xs) / len(xs))\n",
    },
    {
        "task_id": "stdio/reverse-words",
        "instruction": "For each line of the input print its words in reverse order, separated by one space.",
        "stdio_tests": [{"input": "a b c\n", "output": "c b a\n"},
                        {"input": "hello world\nx\n", "output": "world hello\nx\n"},
                        {"input": "  spaced   out  \n", "output": "out spaced\n"}],
        "reference": "import sys\nfor line in sys.stdin:\n    print(' '.join(reversed(line.split())))\n",
    },
]

PYTEST = [
    {
        "question_id": "pytest/clamp",
        "question": "Write clamp(x, lo, hi) returning x limited to the range [lo, hi]; it raises ValueError "
                    "when lo > hi.",
        "solution": "def clamp(x, lo, hi):\n    if lo > hi:\n        raise ValueError('lo > hi')\n"
                    "    return max(lo, min(x, hi))\n",
        "test": "import pytest\nfrom solution import clamp\n\n\n"
                "def test_inside():\n    assert clamp(5, 0, 10) == 5\n\n\n"
                "def test_below():\n    assert clamp(-3, 0, 10) == 0\n\n\n"
                "@pytest.mark.parametrize('x, expected', [(11, 10), (10, 10), (0.5, 0.5)])\n"
                "def test_param(x, expected):\n    assert clamp(x, 0, 10) == expected\n\n\n"
                "def test_bad_range():\n    with pytest.raises(ValueError):\n        clamp(1, 5, 0)\n",
    },
    {
        "question_id": "pytest/word-count",
        "question": "Write word_count(text) returning a dict from each lower-cased word to its count.",
        "solution": "def word_count(text):\n    out = {}\n    for w in text.lower().split():\n"
                    "        out[w] = out.get(w, 0) + 1\n    return out\n",
        "test": "from solution import word_count\n\n\ndef test_simple():\n"
                "    assert word_count('a b a') == {'a': 2, 'b': 1}\n\n\n"
                "def test_case():\n    assert word_count('A a') == {'a': 2}\n\n\n"
                "def test_empty():\n    assert word_count('') == {}\n",
    },
    {
        "question_id": "pytest/mean",
        "question": "Write mean(xs) returning the arithmetic mean of a non-empty list of numbers.",
        "solution": "def mean(xs):\n    return sum(xs) / len(xs)\n",
        "test": "import pytest\nfrom solution import mean\n\n\nclass TestMean:\n    def test_ints(self):\n"
                "        assert mean([1, 2]) == 1.5\n\n    def test_approx(self):\n"
                "        assert mean([0.1, 0.2]) == pytest.approx(0.15)\n",
    },
]

# call-based problems in APPS's and TACO's layout (input_output and solutions as JSON text): a Codewars-style
# function (outputs wrapped in a list, as APPS stores them), a LeetCode-style `class Solution`, a tuple answer
# and a dict answer whose int keys JSON turned into strings
CALL_BASED = [
    {"problem_id": 9001, "question": "Return the sum of the decimal digits of the non-negative integer n.",
     "starter_code": "def digit_sum(n):\n\t",
     "input_output": {"fn_name": "digit_sum", "inputs": [[0], [12345], [909]], "outputs": [[0], [15], [18]]},
     "solutions": ["def digit_sum(n):\n    return sum(int(c) for c in str(n))\n"]},
    {"problem_id": 9002, "question": "Given an array of integers nums and an integer target, return the indices "
     "of the two numbers that add up to target, smaller index first.",
     "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
     "input_output": {"fn_name": "twoSum", "inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]],
                      "outputs": [[0, 1], [1, 2]]},
     "solutions": ["class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n"
                   "        seen = {}\n        for i, x in enumerate(nums):\n            if target - x in seen:\n"
                   "                return [seen[target - x], i]\n            seen[x] = i\n"]},
    {"problem_id": 9003, "question": "Return the smallest and the largest element of a non-empty list.",
     "starter_code": "def min_max(xs):\n    ",
     "input_output": {"fn_name": "min_max", "inputs": [[[3, 1, 5]], [[7]]], "outputs": [[[1, 5]], [[7, 7]]]},
     "solutions": ["def min_max(xs):\n    return min(xs), max(xs)\n"]},
    {"problem_id": 9004, "question": "Map each word length to the number of words of that length.",
     "starter_code": "def length_counts(words):\n    ",
     "input_output": {"fn_name": "length_counts", "inputs": [[["ab", "cd", "xyz"]], [[]]],
                      "outputs": [{"2": 2, "3": 1}, {}]},
     "solutions": ["def length_counts(words):\n    out = {}\n    for w in words:\n"
                   "        out[len(w)] = out.get(len(w), 0) + 1\n    return out\n"]},
]


def apps_row(task: dict) -> dict:
    return dict(task, input_output=orjson.dumps(task["input_output"]).decode(),
                solutions=orjson.dumps(task["solutions"]).decode(), difficulty="introductory")


def write_call_based() -> None:
    (HERE / "apps-call-based.jsonl").write_bytes(b"".join(orjson.dumps(apps_row(t)) + b"\n" for t in CALL_BASED))


def codecontests_row(task: dict) -> dict:
    tests = task["stdio_tests"]
    return {"name": task["task_id"], "description": task["instruction"],
            "public_tests": {"input": [tests[0]["input"]], "output": [tests[0]["output"]]},
            "private_tests": {"input": [t["input"] for t in tests[1:]], "output": [t["output"] for t in tests[1:]]},
            "generated_tests": {"input": [], "output": []},
            "solutions": {"language": [3], "solution": [task["reference"]]}}


def main() -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    HERE.mkdir(parents=True, exist_ok=True)
    (HERE / "stdio.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in STDIO))
    pytest_rows = [{"task_id": t["question_id"], "instruction": t["question"], "reference": t["solution"],
                    "test": t["test"]} for t in PYTEST]
    (HERE / "pytest.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in pytest_rows))
    rows = [codecontests_row(t) for t in STDIO if "compare" not in t]  # CodeContests rows name no rule
    pq.write_table(pa.Table.from_pylist(rows), HERE / "stdio-codecontests.parquet")
    saved = HERE / "pytest-kodcode-saved"
    shutil.rmtree(saved, ignore_errors=True)
    datasets.DatasetDict({"test": datasets.Dataset.from_list(PYTEST)}).save_to_disk(str(saved))
    write_call_based()


if __name__ == "__main__":
    main()
