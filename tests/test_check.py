"""`persd check` end to end (a real subprocess) and the reference solutions of HumanEval and MBPP."""
from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from helpers import MBPP_FIXTURE, read_jsonl
from persd.engine.tasks import iter_tasks
from persd.runtime.sandbox import Sandbox, SandboxConfig


def persd(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "persd", *args], capture_output=True, text=True, cwd=cwd)


async def run_all(programs):
    import asyncio

    async with Sandbox(SandboxConfig()) as sb:
        return await asyncio.gather(*(sb.run(p) for p in programs))


async def test_humaneval_references_all_pass_and_a_wrong_set_passes_none():
    tasks = list(iter_tasks("humaneval"))
    right = await run_all([t.program(t.reference) for t in tasks])
    assert [t.task_id for t, r in zip(tasks, right) if not r.passed] == []
    # wrong set: every task gets the next task's solution body
    wrong_programs = [
        t.program(t.prompt + tasks[(i + 1) % len(tasks)].reference[len(tasks[(i + 1) % len(tasks)].prompt):])
        for i, t in enumerate(tasks)
    ]
    wrong = await run_all(wrong_programs)
    assert sum(r.passed for r in wrong) == 0
    assert {r.status for r in wrong} <= {"failed", "timeout", "error"}


async def test_mbpp_fixture_references_all_pass():
    tasks = list(iter_tasks(MBPP_FIXTURE))
    results = await run_all([t.program(t.reference) for t in tasks])
    assert [t.task_id for t, r in zip(tasks, results) if not r.passed] == []  # chosen so (tests/data/README.md)


async def test_mbpp_reference_pass_rate_is_reported(shared_data, record_property):
    tasks = list(iter_tasks(shared_data / "mbpp.jsonl"))
    results = await run_all([t.program(t.reference) for t in tasks])
    rate = sum(r.passed for r in results) / len(results)
    record_property("mbpp_reference_pass_rate", rate)
    print(f"MBPP reference pass rate: {rate:.2%} ({sum(r.passed for r in results)}/{len(results)})")
    assert rate > 0.99  # a handful of MBPP references are known to fail their own tests


@pytest.mark.e2e
@pytest.mark.slow
def test_check_cli_on_samples(tmp_path):
    # the third sample loops forever: it times out whatever the limit; 5 s lets the reference pass on a loaded machine
    samples = tmp_path / "samples.jsonl"
    he = {t.task_id: t for t in iter_tasks("humaneval")}
    t0 = he["HumanEval/0"]
    rows = [
        {"task_id": "HumanEval/0", "completion": t0.reference[len(t0.prompt):]},
        {"task_id": "HumanEval/0", "completion": "    return True\n"},
        {"task_id": "HumanEval/0", "solution": "while True:\n    pass\n"},
    ]
    samples.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    out = tmp_path / "out.jsonl"
    proc = persd("check", "--tasks", "humaneval", "--samples", str(samples), "--out", str(out), "--timeout", "5")
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(out)
    assert [r["status"] for r in results] == ["passed", "failed", "timeout"]
    assert set(results[0]) >= {"task_id", "status", "error", "duration_s"}
    assert "INPUT:" in results[1]["error"] and "EXPECTED: False" in results[1]["error"]
    assert "pass rate" in proc.stdout and "33.3%" in proc.stdout


@pytest.mark.e2e
def test_check_cli_references(tmp_path):
    out = tmp_path / "out.jsonl"
    proc = persd("check", "--tasks", str(MBPP_FIXTURE), "--references", "--limit", "20", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(out)) == 20


@pytest.mark.e2e
@pytest.mark.parametrize("content, expected", [
    (b'{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "nope", "completion": "x"}\n',
     ":2: field 'task_id': unknown task id"),
    (b'{"task_id": "HumanEval/0"}\n', ":1: field 'completion'"),
    (b'{"task_id": "HumanEval/0", "completion": "x"}\n\n{oops\n', ":3: not valid JSON"),
])
def test_check_cli_bad_sample_exits_2_with_file_and_line(tmp_path, content, expected):
    samples = tmp_path / "bad.jsonl"
    samples.write_bytes(content)
    out = tmp_path / "out.jsonl"
    proc = persd("check", "--tasks", "humaneval", "--samples", str(samples), "--out", str(out))
    assert proc.returncode == 2
    assert f"{samples}{expected}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.e2e
def test_check_cli_bad_flag_exits_2(tmp_path):
    proc = persd("check", "--tasks", "humaneval", "--references", "--out", str(tmp_path / "o"), "--timeout", "-1")
    assert proc.returncode == 2 and "--timeout" in proc.stderr


@pytest.mark.e2e
def test_unknown_command_exits_2():
    proc = persd("frobnicate")
    assert proc.returncode == 2 and "unknown command" in proc.stderr


@pytest.mark.e2e
def test_check_never_passes_a_sample_of_a_task_without_tests(tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_bytes(orjson.dumps({"task_id": "a/1", "instruction": "Sort a list.", "entry_point": "s",
                                    "header": "def s(xs):\n",
                                    "reference": "def s(xs):\n    return sorted(xs)\n"}) + b"\n")
    samples = tmp_path / "s.jsonl"
    samples.write_bytes(b'{"task_id": "a/1", "solution": "x = 1\\n"}\n'
                        b'{"task_id": "a/1", "completion": "    return None\\n"}\n')
    out = tmp_path / "out.jsonl"
    proc = persd("check", "--tasks", str(tasks), "--samples", str(samples), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert [r["status"] for r in read_jsonl(out)] == ["error", "error"]
    assert "no tests" in read_jsonl(out)[0]["error"]


@pytest.mark.e2e
def test_check_accepts_mbpp_integer_ids(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_bytes(b'{"task_id": 2, "solution": "def similar_elements(a, b):\\n'
                        b'    return tuple(sorted(set(a) & set(b)))\\n"}\n')
    out = tmp_path / "out.jsonl"
    proc = persd("check", "--tasks", str(MBPP_FIXTURE), "--samples", str(samples), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out)[0]["task_id"] == "MBPP/2" and read_jsonl(out)[0]["status"] == "passed"
