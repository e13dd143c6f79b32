"""One bad answer fails its task, never the run: `persd collect` and `persd eval` end to end (the real CLI in
a subprocess, the real sandbox) against local servers whose fault plan answers some tasks badly: 400
context_length_exceeded, a content-filter finish, an unreadable body, NUL / lone surrogate / invalid UTF-8 /
control bytes in the student's text, a reasoning model refusing max_tokens and temperature, and a server
down for everything. The servers count every request, so "the rerun sends nothing again" is checked, not
assumed. Token counts: the client and the server both use the length heuristic (PERSD_TIKTOKEN=0), so the
server's view of "over the context" is the client's.
"""
from __future__ import annotations

import asyncio
import os
import re
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from helpers import read_jsonl, write_doubling_tasks
from persd.runtime.local_server import CORRUPT_HERE, FakeOpenAIServer, FaultPlan, LocalOpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CONTEXT = 3000  # the teacher's context, in the server's (and the client's) token count
PAD = "    # the student's long attempt goes on\n" * 1500  # task 10's attempt: ~15k tokens, far over CONTEXT


def task_of(text: str) -> int:
    return int(re.findall(r"def f_(\d+)\(", text)[-1])


def student_reply(payload: dict, index: int) -> str:
    """Right for i % 3 == 0 (with a spot a corrupting fault fills, inside a comment), wrong otherwise; task 10
    answers wrong with a huge attempt."""
    i = task_of(payload.get("prompt") or payload["messages"][-1]["content"])
    if "INCORRECT CODE" in (payload.get("prompt") or ""):  # eval's refinement step
        return "    return x * 2\n"
    if i % 3 == 0:
        return f"    return x * 2  # done{CORRUPT_HERE}\n"
    return "    return x + 2\n" + (PAD if i == 10 else "")


def teacher_reply(body: dict) -> str:
    i = task_of(body["messages"][1]["content"])
    return f"Fixed:\n```python\ndef f_{i}(x):\n    return x * 2\n```\n"


STUDENT_FAULTS = {"def f_3(x)": "nul", "def f_6(x)": "surrogate", "def f_9(x)": "bad_utf8", "def f_12(x)": "control",
                  "def f_7(x)": "context"}
TEACHER_FAULTS = {"def f_2(x)": "context", "def f_4(x)": "content_filter", "def f_5(x)": "garbage",
                  "def f_14(x)": "surrogate"}


def run_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PERSD_TIKTOKEN="0", **extra)
    return env


async def persd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "persd", *args, cwd=REPO, env=run_env(),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    return proc.returncode, out.decode(), err.decode()


def collect_args(tasks: Path, out: Path, student: FakeOpenAIServer, teacher: LocalOpenAIServer, *extra: str):
    return ["collect", "--tasks", str(tasks), "--out", str(out), "--limit", "16", "--shard-size", "8",
            "--student-backend", "openai", "--student-url", student.url, "--student-model", "scripted-student",
            "--teacher-url", teacher.base_url, "--teacher-model", "scripted-teacher", "--teacher-max-tokens", "256",
            "--max-in-flight", "6", "--sandbox-workers", "2", "--exec-timeout", "5", "--progress", "none",
            "--teacher-retries", "3", "--teacher-retry-delay", "0.02", *extra]


def results(out: Path) -> dict[int, dict]:
    """Every finished task's result line: sealed shards' and the journals' of unsealed ones."""
    lines = [r for f in sorted((out / "shards").glob("*.results.jsonl")) for r in read_jsonl(f)]
    lines += [ev["r"] for f in sorted((out / "work").glob("shard-*.journal.jsonl")) for ev in read_jsonl(f)
              if ev.get("e") == "d"]
    return {int(r["task_id"].split("/")[1]): r for r in lines}


def cause(r: dict) -> str | None:
    return (r.get("failure") or {}).get("cause")


async def test_collect_records_every_bad_answer_with_its_cause_and_a_rerun_sends_nothing(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 16)
    out = tmp_path / "out"
    student = FakeOpenAIServer(reply=student_reply, model="scripted-student")
    student.faults = FaultPlan(by_content={**STUDENT_FAULTS, "def f_13(x)": "nul"})  # 13: a wrong attempt
    teacher = LocalOpenAIServer(teacher_reply, faults=FaultPlan(by_content=TEACHER_FAULTS), context_tokens=CONTEXT)
    async with student, teacher:
        args = collect_args(tasks, out, student, teacher, "--teacher.context-tokens", str(CONTEXT))
        rc, so, se = await persd(*args)
        assert rc == 0, se
        sent = (student.posts, teacher.posts)
        res = results(out)
        assert sorted(res) == list(range(16))  # every task recorded
        for i in (3, 6, 9, 12):  # bad bytes in the student's text: replaced, the rest kept, the task passed
            assert res[i]["outcome"] == "student_passed" and res[i]["student_repaired"], res[i]
        assert {tuple(res[i]["student_repaired"]) for i in (3, 6, 9, 12)} == {
            ("nul",), ("lone_surrogate",), ("invalid_utf8",), ("control_char",)}
        assert res[7]["outcome"] == "error" and cause(res[7]) == "context_too_long"
        assert res[7]["failure"]["by"] == "student" and "maximum context length" in res[7]["failure"]["message"]
        for i, why in ((2, "context_too_long"), (4, "content_filter"), (5, "undecodable")):
            assert res[i]["outcome"] == "unresolved" and cause(res[i]) == why and res[i]["failure"]["by"] == "teacher"
        # the long attempt was cut to fit the teacher's context, and the refinement still verified
        assert res[10]["outcome"] == "refined" and res[10]["teacher_context_cut_chars"] > 0
        assert max(teacher.prompt_tokens_seen) <= CONTEXT
        for i in (1, 8, 11, 13, 14):
            assert res[i]["outcome"] == "refined", res[i]
        assert res[13]["student_repaired"] == ["nul"] and res[14]["teacher_repaired"] == ["lone_surrogate"]
        records = [r for f in sorted((out / "shards").glob("shard-*[0-9].jsonl")) for r in read_jsonl(f)]
        assert {r["meta"].get("student_repaired") is not None for r in records if r["task_id"] == "double/13"} == {True}
        # each bad request went out once (the unreadable answer: once per retry), nothing twice
        per_task = Counter(task_of(b["messages"][1]["content"]) for b in teacher.received)
        assert per_task[2] == per_task[4] == 1 and per_task[5] == 3
        assert Counter(task_of(b["prompt"]) for b in student.received)[7] == 1
        assert "failed: context_too_long" in so and "failure breaker" in so
        manifest = orjson.loads((out / "manifest.json").read_bytes())
        assert manifest["totals"]["failures"] == {"content_filter": 1, "context_too_long": 2, "undecodable": 1}
        assert manifest["failure_breaker"]["threshold"] == 20

        rc, so, se = await persd(*args)  # the rerun: nothing is sent again
        assert rc == 0, se
        assert (student.posts, teacher.posts) == sent
        rc, so, _ = await persd("status", "--json", str(out))
        assert rc == 0 and orjson.loads(so)["total"]["failures"]["context_too_long"] == 2
        rc, so, se = await persd("report", str(out))
        assert rc == 0, se
        html = (out / "report.html").read_text()
        assert "content_filter" in html and "the provider said" in html and "maximum context length" in html


async def test_collect_adapts_to_a_reasoning_model_and_stops_resumably_when_the_teacher_is_down(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 16)
    student = FakeOpenAIServer(reply=student_reply, model="scripted-student")
    reasoning = LocalOpenAIServer(teacher_reply, refuse_params=("max_tokens", "temperature"))
    down = LocalOpenAIServer(teacher_reply, faults=FaultPlan(p_503=1.0, retry_after_5xx_s=0.01))
    async with student, reasoning, down:
        out = tmp_path / "reasoning"
        rc, so, se = await persd(*collect_args(tasks, out, student, reasoning))
        assert rc == 0, se
        assert "refuses 'max_tokens'" in se and "refuses 'temperature'" in se
        adapted = orjson.loads((out / "manifest.json").read_bytes())["teacher"]["adapted_parameters"]
        assert adapted["max_tokens"]["sent_as"] == "max_completion_tokens" and adapted["temperature"]["sent_as"] is None
        assert se.count("refuses '") == 2  # adapted once for the run (requests already in flight: sent again)
        assert all("max_tokens" not in b and "temperature" not in b for b in reasoning.received[-8:])
        assert all(r["outcome"] != "error" and "failure" not in r for r in results(out).values())

        # a teacher down for everything: not one task's fault; the run stops, resumably
        out = tmp_path / "down"
        rc, so, se = await persd(*collect_args(tasks, out, student, down))
        assert rc == 1 and "rerun the same command to resume" in se and "Traceback" not in se, se
        assert not any("failure" in r for r in results(out).values())
        down.faults = FaultPlan()  # the server is back
        rc, so, se = await persd(*collect_args(tasks, out, student, down))
        assert rc == 0, se
        res = results(out)
        assert sorted(res) == list(range(16)) and not any("failure" in r for r in res.values())


async def test_collect_breaker_stops_when_every_request_fails(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 16)
    student = FakeOpenAIServer(reply=student_reply, model="scripted-student")
    refusing = LocalOpenAIServer(teacher_reply, faults=FaultPlan(by_content={"def f_": "400"}))
    async with student, refusing:
        out = tmp_path / "out"
        rc, so, se = await persd(*collect_args(tasks, out, student, refusing, "--failure-breaker", "3",
                                               "--max-in-flight", "1"))
        assert rc == 1 and "the last 3 teacher requests all failed" in se and "rerun" in se, se
        assert refusing.posts == 3
        # the two failures before the trip were the server's, not their tasks': held, never journaled
        assert not any("failure" in r for r in results(out).values())
        refusing.faults = FaultPlan()  # the deploy is fixed: the rerun redoes those tasks too
        rc, so, se = await persd(*collect_args(tasks, out, student, refusing, "--failure-breaker", "3"))
        assert rc == 0, se
        res = results(out)
        assert sorted(res) == list(range(16)) and not any("failure" in r for r in res.values())


def eval_args(tasks: Path, out: Path, student: FakeOpenAIServer, *extra: str) -> list[str]:
    return ["eval", "--tasks", str(tasks), "--out", str(out), "--student-backend", "openai", "--student-url",
            student.url, "--student-model", "scripted-student", "--sandbox-workers", "2", "--exec-timeout", "5",
            "--progress", "none", "--refine-steps", "1", *extra]


async def test_eval_records_bad_answers_per_sample_and_stops_resumably_when_the_student_is_down(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 16)
    student = FakeOpenAIServer(reply=student_reply, model="scripted-student")
    student.faults = FaultPlan(by_content=STUDENT_FAULTS)
    async with student:
        out = tmp_path / "eval"
        rc, so, se = await persd(*eval_args(tasks, out, student))
        assert rc == 0, se
        sent = student.posts
        lines = read_jsonl(out / "results.jsonl")
        assert len(lines) == 16 * 2  # every sample at both steps
        by = {(int(ln["task_id"].split("/")[1]), ln["step"]): ln for ln in lines}
        assert by[(7, 0)]["status"] == "error" and by[(7, 0)]["failure"]["cause"] == "context_too_long"
        for i in (3, 6, 9, 12):
            assert by[(i, 0)]["status"] == "passed" and by[(i, 0)]["repaired"], by[(i, 0)]
        summary = orjson.loads((out / "summary.json").read_bytes())
        assert summary["failures"] == {"context_too_long": 1} and summary["repaired_samples"] == 4
        assert summary["failure_breaker"]["threshold"] == 20 and "failed samples by cause" in so
        rc, so, se = await persd(*eval_args(tasks, out, student))
        assert rc == 0 and student.posts == sent, se  # the failed sample is journaled: not sent again

        student.faults = FaultPlan(p_503=1.0, retry_after_5xx_s=0.01)  # the student server down for everything
        out = tmp_path / "down"
        rc, so, se = await persd(*eval_args(tasks, out, student, "--limit", "4"))
        assert rc == 1 and "rerun the same command to resume" in se and "Traceback" not in se, se
        student.faults = FaultPlan()
        rc, so, se = await persd(*eval_args(tasks, out, student, "--limit", "4"))
        assert rc == 0, se
        assert not any("failure" in ln for ln in read_jsonl(out / "results.jsonl"))

        # every request refused (a broken deploy): the breaker stops eval too, and holds back what it saw
        student.faults = FaultPlan(by_content={"def f_": "400"})
        out = tmp_path / "refused"
        args = eval_args(tasks, out, student, "--limit", "6", "--failure-breaker", "3", "--max-in-flight", "1")
        rc, so, se = await persd(*args)
        assert rc == 1 and "the last 3 student requests all failed" in se and "rerun" in se, se
        journal = read_jsonl(out / "work" / "journal.jsonl")
        assert not any(j.get("cause") or j.get("failure") for j in journal)
        student.faults = FaultPlan()
        rc, so, se = await persd(*args)
        assert rc == 0, se
        assert not any("failure" in ln for ln in read_jsonl(out / "results.jsonl"))


async def test_paper_protocol_collect_fails_one_task_by_its_cause(tmp_path):
    """Paper mode has its own teacher chat and test checking: the same guard, the same line."""
    from helpers import write_jsonl

    def io_task(i: int) -> dict:
        return {"task_id": f"io/{i}", "instruction": f"Print the sum of two numbers ({i}).", "entry_point": f"show_{i}",
                "reference": f"def show_{i}(a, b):\n    print(a + b)\n",
                "test_list": [{"input": f"show_{i}(1, 2)", "output": "3\n"}]}

    tasks = write_jsonl(tmp_path / "tasks.jsonl", [io_task(i) for i in range(4)])
    student = FakeOpenAIServer(reply=lambda payload, i: "    print(a - b)\n", model="scripted-student")
    teacher = LocalOpenAIServer(lambda body: "```python\nprint('no')\n```", faults=FaultPlan(by_content={
        "show_2(": "context", "show_3(": "content_filter"}))
    async with student, teacher:
        out = tmp_path / "out"
        args = ["collect", "--preset", "paper", "--tasks", str(tasks), "--out", str(out), "--student-backend", "openai",
                "--student-url", student.url, "--student-model", "scripted-student", "--teacher-url",
                teacher.base_url, "--teacher-model", "scripted-teacher", "--sandbox-workers", "1", "--progress", "none",
                "--teacher-retries", "2", "--teacher-retry-delay", "0.02"]
        rc, so, se = await persd(*args)
        assert rc == 0, se
        res = results(out)
        assert sorted(res) == [0, 1, 2, 3]
        assert cause(res[2]) == "context_too_long" and cause(res[3]) == "content_filter"
        assert res[2]["outcome"] == res[3]["outcome"] == "unresolved" and cause(res[0]) is None
        sent = (student.posts, teacher.posts)
        assert (await persd(*args))[0] == 0 and (student.posts, teacher.posts) == sent
