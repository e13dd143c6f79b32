"""The real benchmarks' tests run whole: HumanEval's `check(candidate)` and MBPP's original assert list.

A scripted student answers every HumanEval and MBPP task with three samples: the reference, a
"cheat" that memorises the visible tests (HumanEval's docstring examples, MBPP's first test) and
returns None otherwise, and a plain wrong answer. The cheat passes the visible tests, so it must fail
on the hidden ones (else only the visible tests ran) and is never refined; the wrong answer fails
its visible tests, is refined (the refinement is the reference) and passes at step 1.
"""
from __future__ import annotations

import ast
import gzip

import orjson
import pytest
from helpers import FIXTURES, MBPP_FIXTURE
from persd.engine import lessons
from persd.engine.evaluation.config import parse_args
from persd.engine.evaluation.selection import select_tasks
from persd.engine.tasks import Task, iter_tasks, parse_task_line, resolve_source
from persd.runtime.local_server import FakeOpenAIServer


def literal_cases(task: Task) -> list[tuple[list, object]] | None:
    """(args, expected) of every visible `assert f(...) == value`, or None if one is not literal."""
    cases = []
    for line in task.visible_tests.splitlines():
        try:
            node = ast.parse(line.strip()).body[0]
            assert isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)
            call, (op,), (want,) = node.test.left, node.test.ops, node.test.comparators
            assert isinstance(op, ast.Eq) and isinstance(call, ast.Call) and not call.keywords
            cases.append(([ast.literal_eval(a) for a in call.args], ast.literal_eval(want)))
        except (AssertionError, ValueError, SyntaxError, TypeError, IndexError):
            return None
    return cases or None


def cheat(task: Task, cases) -> str:
    return (f"def {task.entry_point}(*args):\n    for a, r in {cases!r}:\n        if list(args) == a:\n"
            f"            return r\n    return None\n")


def pick(lines: list[bytes], source: str, count: int, ids: set[str] | None = None) -> list[tuple[bytes, Task]]:
    out = []
    for i, raw in enumerate(lines, 1):
        task = parse_task_line(raw, source, i)
        if (ids is None or task.task_id in ids) and task.reference and literal_cases(task):
            out.append((raw, task))
        if len(out) == count:
            break
    return out


@pytest.fixture(scope="module")
def mixed_tasks(tmp_path_factory):
    """Three HumanEval and three MBPP (of the paper's 307 ids) tasks in one file: shapes are per line."""
    he = gzip.open(resolve_source("humaneval"), "rb").read().splitlines()
    mbpp = MBPP_FIXTURE.read_bytes().splitlines()
    ids = {f"MBPP/{i}" for i in orjson.loads((FIXTURES / "mbpp-eval-ids-307.json").read_bytes())}
    chosen = pick(he, "humaneval", 3) + pick(mbpp, "mbpp", 3, ids)
    path = tmp_path_factory.mktemp("mixed") / "tasks.jsonl"
    path.write_bytes(b"".join(raw.rstrip(b"\r\n") + b"\n" for raw, _ in chosen))
    return path, [t for _, t in chosen]


async def test_hidden_tests_run_whole_and_refine_uses_visible_ones(mixed_tasks, tmp_path):
    path, tasks = mixed_tasks
    assert [t.shape for t in tasks] == ["humaneval"] * 3 + ["mbpp"] * 3

    def answer_for(prompt: str) -> Task:
        return next(t for t in tasks if prompt.endswith(t.prompt))

    def reference_completion(task: Task) -> str:
        ref = task.reference or ""
        return ref[len(task.prompt):] if ref.startswith(task.prompt) else ref

    def reply(payload: dict, index: int) -> str:
        task = answer_for(payload["prompt"])
        if lessons.INCORRECT in payload["prompt"]:
            return reference_completion(task)
        return [reference_completion(task), cheat(task, literal_cases(task)), "    return None\n"][index]

    async with FakeOpenAIServer(reply=reply) as server:
        from persd.engine.evaluation.runner import evaluate

        cfg = parse_args(["--tasks", str(path), "--out", str(tmp_path / "out"), "--student-backend", "openai",
                          "--student-url", server.url, "--student-model", "scripted", "--n", "3",
                          "--refine-steps", "1", "--sandbox-workers", "2", "--progress", "none"])
        summary = await evaluate(cfg)

    lines = [orjson.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_bytes().splitlines()]
    at = {(ln["task_id"], ln["sample"], ln["step"]): ln for ln in lines}
    for t in tasks:
        ref, cheated, wrong = (at[(t.task_id, s, 0)] for s in range(3))
        assert ref["status"] == "passed", (t.task_id, ref["feedback"])
        assert cheated["visible_status"] == "passed", (t.task_id, cheated["visible_feedback"])
        assert cheated["status"] == "failed", t.task_id  # the hidden tests are more than the visible ones
        assert at[(t.task_id, 1, 1)]["origin"] == "carried" and at[(t.task_id, 1, 1)]["status"] == "failed"
        assert wrong["status"] == "failed" and wrong["visible_status"] == "failed"
        assert at[(t.task_id, 2, 1)]["origin"] == "refined" and at[(t.task_id, 2, 1)]["status"] == "passed"
        if t.shape == "humaneval":
            assert "candidate" in cheated["feedback"] or "check" in cheated["feedback"], cheated["feedback"]
    assert summary["pass@1"] == pytest.approx(1 / 3)
    assert summary["steps"][1]["pass@1"] == pytest.approx(2 / 3)


def test_paper_mbpp_selects_the_307_sanitized_tasks(shared_data):
    cfg = parse_args(["--protocol", "paper-mbpp", "--out", "x", "--student-model", "m",
                      "--tasks", str(shared_data / "mbpp.jsonl")])
    tasks = select_tasks(cfg.tasks, cfg.task_ids, cfg.limit)
    ids = orjson.loads((shared_data / "mbpp-eval-ids-307.json").read_bytes())
    assert len(tasks) == 307 and [t.task_id for t in tasks] == [f"MBPP/{i}" for i in sorted(ids)]
    assert all(t.shape == "mbpp" and len(t.tests) >= 3 and t.visible_tests == t.tests[0] for t in tasks)


def test_humaneval_tasks_keep_check_and_docstring_examples():
    tasks = list(iter_tasks("humaneval"))
    assert len(tasks) == 164
    assert all(t.test_program.rstrip().endswith(f"check({t.entry_point})") for t in tasks)
    assert sum(bool(t.visible_tests) for t in tasks) >= 130  # the rest cannot be refined at inference
