"""`persd eval` against a scripted student (the `openai` backend on a local server whose answer per task
and per sample the test decides) and the real sandbox: pass@k, refine-inference, resume, usage errors.

Task i asks for f_i(x) = 2x; its tests are f_i(1) == 2 (visible: the first test) and f_i(5) == 10.
The student's code comes in three kinds: right, wrong (fails both tests) and a "cheat" that passes
the visible test only (2 for x == 1, else 0).
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from math import comb
from pathlib import Path

import orjson
import pytest
from helpers import read_jsonl, write_doubling_tasks
from persd.engine import lessons
from persd.engine.evaluation.config import parse_args
from persd.engine.evaluation.journal import EvalJournal
from persd.engine.evaluation.runner import evaluate
from persd.engine.tasks import iter_tasks
from persd.runtime.local_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[1]
BODY = {"right": "    return x * 2\n", "wrong": "    return x + 2\n", "wrong2": "    return x + 3\n",
        "cheat": "    return 2 if x == 1 else 0\n"}


def task_number(prompt: str) -> int:
    return int(re.findall(r"def f_(\d+)\(", prompt)[-1])


def is_refine(payload: dict) -> bool:
    return lessons.INCORRECT in (payload.get("prompt") or "")


def eval_args(tasks: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["--tasks", str(tasks), "--out", str(out), "--student-backend", "openai", "--student-url", url,
            "--student-model", "scripted", "--sandbox-workers", "2", "--exec-timeout", "5", "--progress", "none",
            *extra]


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - comb(n - c, k) / comb(n, k)


# ------------------------------------------------------------------ pass@k


async def test_pass_at_k_equals_the_closed_form(tmp_path):
    n, correct = 10, [0, 1, 3, 5, 9, 10]
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", len(correct))

    def reply(payload: dict, index: int) -> str:
        return BODY["right" if index < correct[task_number(payload["prompt"])] else "wrong"]

    async with FakeOpenAIServer(reply=reply) as server:
        cfg = parse_args(eval_args(tasks, tmp_path / "out", server.url, "--n", str(n), "--temperature", "0.8",
                                   "--k", "1,2,5,10,20"))
        summary = await evaluate(cfg)
        assert len(server.requests) == len(correct)  # one request of n samples per task
        assert all(p["n"] == n and p["temperature"] == 0.8 for p in server.requests)

    for k in (1, 2, 5, 10):
        expected = sum(closed_form(n, c, k) for c in correct) / len(correct)
        assert summary[f"pass@{k}"] == pytest.approx(expected, abs=1e-12), k
        assert summary["steps"][0][f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
    assert "pass@20" not in summary and summary["k_left_out"] == [20]
    assert summary["tasks"] == len(correct) and summary["n"] == n and len(summary["steps"]) == 1
    lines = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert len(lines) == n * len(correct)
    assert {"task_id", "sample", "step", "status", "feedback", "code"} <= set(lines[0])
    for i, c in enumerate(correct):
        mine = [ln for ln in lines if ln["task_id"] == f"double/{i}"]
        assert [ln["sample"] for ln in mine] == list(range(n))
        assert sum(ln["status"] == "passed" for ln in mine) == c
        for ln in mine:
            assert ln["step"] == 0 and f"def f_{i}(x):" in ln["code"]
            if ln["status"] != "passed":
                assert ln["status"] == "failed" and "f_" in ln["feedback"] and "Assert" in ln["feedback"]
    on_disk = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert on_disk["pass@1"] == summary["pass@1"] and on_disk["protocol"]["n"] == n


# ------------------------------------------------------------------ refine-inference


async def test_refine_inference_only_through_visible_feedback(tmp_path):
    """Task 0: [right, wrong, cheat, wrong]; its refinements are right. Task 1: [wrong, wrong, cheat, cheat];
    a first refinement is still wrong (x + 3), a second is right."""
    plan = [["right", "wrong", "cheat", "wrong"], ["wrong", "wrong", "cheat", "cheat"]]
    tasks_path = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)

    def reply(payload: dict, index: int) -> str:
        prompt = payload["prompt"]
        i = task_number(prompt)
        if not is_refine(payload):
            return BODY[plan[i][index]]
        attempt = prompt.split(lessons.INCORRECT, 1)[1].split(lessons.ERROR, 1)[0]
        if "x + 2" in attempt and i == 1:
            return BODY["wrong2"]
        return BODY["right"]

    async with FakeOpenAIServer(reply=reply) as server:
        cfg = parse_args(eval_args(tasks_path, tmp_path / "out", server.url, "--n", "4", "--refine-steps", "2"))
        summary = await evaluate(cfg)
        refine_prompts = [p["prompt"] for p in server.requests if is_refine(p)]

    assert [s["pass@1"] for s in summary["steps"]] == pytest.approx([1 / 8, 3 / 8, 5 / 8])
    assert [s["refined"] for s in summary["steps"]] == [0, 4, 2]
    assert summary["pass@1"] == pytest.approx(1 / 8) and summary["final"]["pass@1"] == pytest.approx(5 / 8)
    lines = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert len(lines) == 2 * 4 * 3
    at = {(ln["task_id"], ln["sample"], ln["step"]): ln for ln in lines}
    for i, kinds in enumerate(plan):
        for s, kind in enumerate(kinds):
            if kind == "cheat":  # passes the visible test, fails the hidden one: never refined
                for step in range(3):
                    ln = at[(f"double/{i}", s, step)]
                    assert ln["status"] == "failed"
                    assert ln["origin"] == ("direct" if step == 0 else "carried")
                    if step < 2:
                        assert ln["visible_status"] == "passed"
            if kind == "right":
                assert [at[(f"double/{i}", s, st)]["origin"] for st in range(3)] == ["direct", "carried", "carried"]

    # every refine request is the persd-refine training layout: the task, the code, its *visible* feedback
    tasks = {t.task_id: t for t in iter_tasks(tasks_path)}
    expected = []
    for ln in lines:
        if ln["origin"] == "refined":
            prev = at[(ln["task_id"], ln["sample"], ln["step"] - 1)]
            expected.append(lessons.refine_record_prompt(tasks[ln["task_id"]], prev["code"], prev["visible_feedback"]))
    assert sorted(refine_prompts) == sorted(expected) and len(refine_prompts) == 6
    for prompt in refine_prompts:
        assert "(1)" in prompt.split(lessons.ERROR, 1)[1]  # the visible test's failure ...
        assert "(5)" not in prompt  # ... and never the hidden test
        assert prompt.endswith(tasks[f"double/{task_number(prompt)}"].prompt)


# ------------------------------------------------------------------ resume


def resume_reply(counter: dict):
    """Per task, not per sample (a resumed request asks for fewer samples): i % 3 == 0 right,
    1 wrong (its refinement right), 2 cheat. Fires SIGKILL at the process on the chosen request."""
    def reply(payload: dict, index: int) -> str:
        if index == 0:
            counter["seen"] += 1
            if counter["seen"] == counter.get("kill_at") and counter.get("proc") is not None:
                os.kill(counter["proc"].pid, signal.SIGKILL)
        i = task_number(payload["prompt"])
        if is_refine(payload):
            return BODY["right"]
        return BODY[("right", "wrong", "cheat")[i % 3]]
    return reply


async def run_cli(args: list[str], counter: dict | None = None, timeout: float = 900) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "persd", "eval", *args, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    if counter is not None:
        counter["proc"] = proc
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.e2e
@pytest.mark.slow
async def test_kill9_then_rerun_finishes_without_regenerating(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 12)
    counter = {"seen": 0}
    async with FakeOpenAIServer(reply=resume_reply(counter)) as server:
        flags = ("--n", "3", "--temperature", "0.8", "--refine-steps", "1", "--k", "1,3", "--max-in-flight", "4")
        rc, _, err = await run_cli(eval_args(tasks, tmp_path / "ref", server.url, *flags))
        assert rc == 0, err
        out = tmp_path / "out"
        kills = 0
        for kill_at in (3, 5, None):
            gens, results = EvalJournal(out).load()
            if kill_at is None:  # a 5th request is only sent once some answer was journaled
                assert gens
            start = len(server.requests)
            counter.update(seen=0, kill_at=kill_at)
            rc, so, err = await run_cli(eval_args(tasks, out, server.url, *flags), counter)
            if kill_at is not None:
                assert rc == -signal.SIGKILL, (rc, err)
                kills += 1
            else:
                assert rc == 0, err
            # nothing already journaled is asked for again
            for payload in server.requests[start:]:
                tid = f"double/{task_number(payload['prompt'])}"
                step = 1 if is_refine(payload) else 0
                missing = [s for s in range(3) if (tid, s, step) not in gens and (tid, s, step) not in results]
                if step == 0:
                    assert payload["n"] == len(missing), (tid, payload["n"], missing)
                else:
                    assert missing, tid
        assert kills == 2
    assert (out / "results.jsonl").read_bytes() == (tmp_path / "ref" / "results.jsonl").read_bytes()
    ref = orjson.loads((tmp_path / "ref" / "summary.json").read_bytes())
    got = orjson.loads((out / "summary.json").read_bytes())
    assert got["steps"] == ref["steps"]
    assert ref["pass@1"] == pytest.approx(1 / 3) and ref["steps"][1]["pass@1"] == pytest.approx(2 / 3)
    # a finished directory: the rerun asks nothing and rewrites the same files
    async with FakeOpenAIServer(reply=resume_reply({"seen": 0})) as server:
        rc, so, err = await run_cli(eval_args(tasks, out, server.url, *flags))
        assert rc == 0 and not server.requests, err
    assert (out / "results.jsonl").read_bytes() == (tmp_path / "ref" / "results.jsonl").read_bytes()


@pytest.mark.e2e
@pytest.mark.slow
async def test_changed_settings_and_bad_flags_are_usage_errors(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    async with FakeOpenAIServer(reply=lambda p, i: BODY["right"]) as server:
        out = tmp_path / "out"
        rc, _, err = await run_cli(eval_args(tasks, out, server.url, "--n", "2"))
        assert rc == 0, err
        rc, _, err = await run_cli(eval_args(tasks, out, server.url, "--n", "3"))
        assert rc == 2 and "--n: was 2, now 3" in err and "Traceback" not in err, err
        rc, _, err = await run_cli(eval_args(tasks, out, server.url, "--n", "3", "--force"))
        assert rc == 0, err
        assert len(read_jsonl(out / "results.jsonl")) == 6
        rc, _, err = await run_cli(eval_args(tasks, out, server.url, "--k", "0"))
        assert rc == 2 and "--k" in err and "Traceback" not in err
        rc, _, err = await run_cli(["--tasks", str(tasks), "--out", str(out), "--student-backend", "hf"])
        assert rc == 2 and "--student-model" in err


def test_protocol_presets_fill_in_what_flags_leave_out():
    cfg = parse_args(["--protocol", "paper-humaneval", "--out", "x", "--student-model", "m", "--n", "5"])
    assert (cfg.tasks, cfg.n, cfg.temperature, cfg.top_p, cfg.k) == ("humaneval", 5, 0.2, 0.95, (1, 5, 10))
    cfg = parse_args(["--protocol", "paper-humaneval-passk", "--out", "x", "--student-model", "m"])
    assert (cfg.n, cfg.temperature, cfg.k) == (100, 0.8, (1, 5, 10, 20))  # the release pipeline's k
    cfg = parse_args(["--protocol", "paper-mbpp", "--out", "x", "--student-model", "m", "--temperature", "0"])
    assert (cfg.tasks, cfg.task_ids, cfg.temperature, cfg.n) == ("mbpp", "@mbpp-307", 0.0, 20)
    # the design's `--refine` is the paper's refine-inference (two steps); --refine-steps sets any number
    assert parse_args(["--tasks", "humaneval", "--out", "x", "--student-model", "m", "--refine"]).refine_steps == 2
    assert parse_args(["--tasks", "humaneval", "--out", "x", "--student-model", "m"]).refine_steps == 0


async def test_a_refused_request_is_an_error_sample_not_a_crash(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    async with FakeOpenAIServer(reply=lambda p, i: BODY["right"], fail_first=1, fail_status=400) as server:
        cfg = parse_args(eval_args(tasks, tmp_path / "out", server.url, "--n", "2", "--max-in-flight", "1"))
        summary = await evaluate(cfg)
    lines = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert [ln["status"] for ln in lines] == ["error", "error", "passed", "passed"]
    assert lines[0]["feedback"].startswith("student:") and "400" in lines[0]["feedback"]
    assert summary["pass@1"] == pytest.approx(0.5) and summary["steps"][0]["statuses"]["error"] == 2
