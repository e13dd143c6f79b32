"""The one task pipeline (engine/collect/steps.py, flow.py, guard.py): one guard judges every backend
failure, the flow's outcome stays typed until the journal writes it, and paper mode is a flow variant
collect finds by its protocol without importing it."""
from __future__ import annotations

import asyncio
import errno
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_jsonl, write_jsonl
from persd.bench.instant import InstantSandbox, InstantStudent, InstantTeacher, write_synthetic_tasks
from persd.engine.collect.config import parse_args
from persd.engine.collect.flow import TaskFlow, variant_for
from persd.engine.collect.guard import BackendFailure, TaskFailed, guard
from persd.engine.collect.layout import Record
from persd.engine.collect.records import Meta
from persd.engine.collect.shards import DiskError
from persd.engine.collect.steps import Backends, Limits
from persd.engine.tasks import iter_tasks
from persd.runtime.errors import PersdError
from persd.runtime.interfaces import Sandbox, Student, Teacher
from persd.runtime.student import RequestRejected

REPO = Path(__file__).resolve().parents[1]
BASE = ["--student-model", "m", "--teacher-url", "http://127.0.0.1:9/v1", "--progress", "none"]


# ------------------------------------------------------------------ the guard


async def _raise(exc: BaseException, resource: str = "student", **kw) -> None:
    async with guard(resource, **kw):
        raise exc


@pytest.mark.parametrize("exc, resource, kw, kind, text", [
    (RequestRejected("prompt of 9000 tokens"), "student", {}, TaskFailed,
     "student rejected the request: prompt of 9000 tokens"),
    (PersdError("HTTP 401: bad key"), "teacher", {}, BackendFailure, "teacher: HTTP 401: bad key"),
    (ValueError("odd"), "student", {"task_id": "t/1"}, BackendFailure, "student failed on task t/1: ValueError: odd"),
    (RuntimeError("pool died"), "sandbox", {}, BackendFailure, "sandbox failed: RuntimeError: pool died"),
    (OSError(errno.ENOSPC, "no space"), "teacher", {"journal": "the teacher journal"}, DiskError, "disk is full"),
])
async def test_one_guard_one_failure_type_per_kind(exc, resource, kw, kind, text):
    with pytest.raises(kind) as got:
        await _raise(exc, resource, **kw)
    assert text in (got.value.reason if kind is TaskFailed else str(got.value))
    assert got.value.__cause__ is exc


async def test_cancellation_passes_the_guard():
    with pytest.raises(asyncio.CancelledError):
        await _raise(asyncio.CancelledError())


class Breaker:
    """A FailurePolicy: counts successes and failed requests; stops the run at the second failure in a row."""

    def __init__(self):
        self.streak, self.oks = 0, 0

    def ok(self, by: str) -> None:
        self.streak, self.oks = 0, self.oks + 1

    def failed(self, exc: Exception, by: str) -> TaskFailed:
        self.streak += 1
        if self.streak >= 2:
            raise PersdError(f"the last {self.streak} {by} requests all failed")
        return TaskFailed("rejected", str(exc), by)


async def test_a_failure_policy_plugs_into_the_guard():
    policy = Breaker()
    async with guard("student", failures=policy):
        pass
    with pytest.raises(TaskFailed) as got:
        await _raise(RequestRejected("too long"), failures=policy)
    assert got.value.record() == {"cause": "rejected", "by": "student", "message": "too long"}
    with pytest.raises(PersdError, match="the last 2 student requests all failed"):
        await _raise(RequestRejected("too long"), failures=policy)
    assert policy.oks == 1


# ------------------------------------------------------------------ the flow, in-process


def _flow(tmp_path: Path, student=None, teacher=None, *flags: str) -> TaskFlow:
    cfg = parse_args(["--tasks", "t", "--out", str(tmp_path / "out"), "--formats", "persd,stand",
                      "--time-limits", "fixed", *flags, *BASE], environ={})
    backends = Backends(student or InstantStudent(), InstantSandbox(), teacher or InstantTeacher())
    return TaskFlow(cfg, backends, Limits.from_config(cfg, 4), Meta("s", "t"))


def _tasks(tmp_path: Path, n: int) -> list:
    return list(iter_tasks(str(write_synthetic_tasks(tmp_path / "tasks.jsonl", n))))


def test_the_real_backends_meet_the_interfaces():
    from persd.runtime.sandbox import Sandbox as Pool
    from persd.runtime.student.hf import HFStudent
    from persd.runtime.teacher import TeacherClient

    for proto, method, classes in ((Student, "generate", (HFStudent, InstantStudent)),
                                   (Sandbox, "run", (Pool, InstantSandbox)),
                                   (Teacher, "chat", (TeacherClient, InstantTeacher))):
        want = len(inspect.signature(getattr(proto, method)).parameters)  # the engine passes them by position
        for cls in classes:
            assert inspect.iscoroutinefunction(getattr(cls, method)), (cls, method)
            assert len(inspect.signature(getattr(cls, method)).parameters) == want, (cls, method)


async def test_outcome_is_typed_until_written_and_the_line_keeps_its_order(tmp_path):
    flow = _flow(tmp_path)
    failed = await flow.run(_tasks(tmp_path, 2)[1])  # task 1: the instant student fails it
    assert failed.outcome == "refined" and failed.refinement.turns == 1 and failed.direct.status == "passed"
    assert all(isinstance(r, Record) for r in failed.records) and [r.format for r in failed.records] == [
        "persd", "stand"]
    line, rows = failed.to_json(index=1, shard=0)
    assert list(line) == ["task_id", "outcome", "status", "feedback", "teacher_calls", "teacher_tokens_in",
                          "teacher_tokens_out", "teacher_tokens", "student_tokens_out", "samples", "samples_passed",
                          "refine_turns", "refine_status", "refine_feedback", "direct_status", "index", "shard"]
    assert rows[0] == failed.records[0].to_json() and list(rows[0]) == ["id", "task_id", "format", "prompt",
                                                                        "completion", "meta"]
    journaled = []
    passed = await flow.run(_tasks(tmp_path, 1)[0], on_attempt=journaled.append)
    assert passed.outcome == "student_passed" and passed.refinement is None
    assert list(journaled[0]) == ["texts", "finish_reasons", "prompt_tokens", "completion_tokens"]
    resumed = await flow.run(_tasks(tmp_path, 1)[0], prior_attempt=journaled[0])
    assert resumed.to_json() == passed.to_json()


class RejectingStudent(InstantStudent):
    async def generate(self, req):
        raise RequestRejected("prompt too long")


class BrokenTeacher(InstantTeacher):
    async def chat(self, req):
        raise ValueError("unexpected")


async def test_a_rejected_request_fails_its_task_and_a_broken_teacher_stops_the_run(tmp_path):
    outcome = await _flow(tmp_path, student=RejectingStudent()).run(_tasks(tmp_path, 1)[0])
    line, rows = outcome.to_json()
    assert (line["outcome"], line["error"], rows) == ("error", "student rejected the request: prompt too long", [])
    with pytest.raises(BackendFailure, match="teacher failed: ValueError: unexpected"):
        await _flow(tmp_path, teacher=BrokenTeacher()).run(_tasks(tmp_path, 2)[1])


# ------------------------------------------------------------------ paper mode, a registered variant


def test_collect_finds_paper_mode_by_its_protocol_without_importing_it():
    code = ("import sys, persd.engine.collect.runner, persd.engine.collect.flow as f\n"
            "assert not [m for m in sys.modules if m.startswith('persd.engine.paper')], 'collect imported paper'\n"
            "import persd.engine.cli.commands.collect\n"
            "print(f.variant_for('paper').__module__)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "persd.engine.paper.flow"
    with pytest.raises(PersdError, match="--protocol nope"):
        variant_for("nope")


def io_task(i: int) -> dict:
    return {"task_id": f"io/{i}", "instruction": f"Print the sum of two numbers ({i}).", "entry_point": "show_sum",
            "reference": "def show_sum(a, b):\n    print(a + b)\n",
            "test_list": [{"input": "show_sum(1, 2)", "output": "3\n"}, {"input": f"show_sum({i}, 2)",
                                                                        "output": f"{i + 2}\n"}]}


async def test_paper_mode_runs_the_same_flow_with_its_own_prompts_and_checks(tmp_path):
    """The reference's prompt and per-test checker; a failure refined by the stand-in from the gold;
    the gold kept as inpd and stand (not executed); `protocol` named in every result line."""
    import persd.engine.paper.flow  # noqa: F401  (registers the variant, as the collect command does)
    from persd.engine.collect.runner import Collector
    from persd.runtime.local_server import FakeOpenAIServer

    tasks = write_jsonl(tmp_path / "tasks.jsonl", [io_task(1), io_task(2)])

    def reply(payload: dict, index: int) -> str:
        return "    print(a + b)\n" if "(1)" in payload["prompt"] else "    print(a - b)\n"

    async with FakeOpenAIServer(reply=reply) as server:
        cfg = parse_args(["--tasks", str(tasks), "--out", str(tmp_path / "out"), "--protocol", "paper",
                          "--formats", "persd,inpd,stand", "--student-backend", "openai", "--student-url", server.url,
                          "--student-model", "scripted", "--sandbox-workers", "2", "--progress", "none"], environ={})
        assert await Collector(cfg, install_signals=False).run() == 0
        assert "stop" not in server.requests[0] or not server.requests[0]["stop"]
    results = read_jsonl(tmp_path / "out" / "shards" / "shard-00000.results.jsonl")
    assert [(r["task_id"], r["outcome"], r["status"]) for r in results] == [
        ("io/1", "student_passed", "passed"), ("io/2", "refined", "failed")]
    assert list(results[1])[9:] == ["protocol", "samples", "samples_passed", "refine_turns", "refine_status",
                                    "refine_feedback", "index", "shard"]
    assert results[1]["protocol"] == "paper" and results[1]["refine_status"] == "passed"
    records = read_jsonl(tmp_path / "out" / "shards" / "shard-00000.jsonl")
    assert [r["format"] for r in records] == ["persd", "inpd", "stand"]
    assert records[0]["completion"] == "\n    print(a + b)\n" and records[0]["meta"]["protocol"] == "paper"
    assert records[2]["meta"]["verified"] is False
