"""`persd collect` end to end: the real CLI in a subprocess, the real sandbox, a scripted student
(the `openai` backend against a local server) and a scripted teacher (LocalOpenAIServer, with
faults) on 127.0.0.1. Kills and signals are triggered by what the servers have seen, never by
sleeping.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from helpers import write_doubling_tasks
from persd.runtime.local_server import FakeOpenAIServer, FaultPlan, LocalOpenAIServer
from persd.runtime.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # each test runs collect once or more, in subprocesses

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-4242"
N_TASKS = 48


def write_tasks(path: Path, n: int = N_TASKS) -> Path:
    """Task i: f_i(x) = x * 2. The student is right for i % 3 == 0."""
    return write_doubling_tasks(path, n)


def _num(text: str) -> int:
    m = re.search(r"def f_(\d+)\(", text)
    assert m, text[:300]
    return int(m.group(1))


@dataclass
class Control:
    """Shared with the servers: counts requests and fires a signal at the process at a count."""

    proc: asyncio.subprocess.Process | None = None
    teacher_seen: int = 0
    student_seen: int = 0
    fire_at: tuple[str, int] | None = None  # ("teacher" | "student", count)
    sig: int = signal.SIGKILL
    fired: bool = False
    bodies: list[dict] = field(default_factory=list)

    def tick(self, who: str) -> None:
        if who == "teacher":
            self.teacher_seen += 1
            n = self.teacher_seen
        else:
            self.student_seen += 1
            n = self.student_seen
        if self.fire_at == (who, n) and self.proc is not None and self.proc.returncode is None and not self.fired:
            self.fired = True
            os.kill(self.proc.pid, self.sig)


def student_reply(ctl: Control):
    def reply(payload: dict, index: int) -> str:
        ctl.tick("student")
        i = _num(payload.get("prompt") or payload["messages"][-1]["content"])
        return "    return x * 2\n" if i % 3 == 0 else "    return x + 2\n"
    return reply


def teacher_responder(ctl: Control):
    """Refinements: right, except i % 7 == 2 (never right: unresolved) and i % 5 == 1 (right on turn 2)."""
    def respond(body: dict) -> str:
        ctl.tick("teacher")
        ctl.bodies.append(body)
        msgs = body["messages"]
        i = _num(msgs[1]["content"])
        if "TEST INPUTS" in msgs[1]["content"]:
            return f"```python\nf_{i}(1)\nf_{i}(3)\nf_{i}(-2)\nf_{i}('ab')\nf_{i}(1.5)\n```"
        turns = sum(1 for m in msgs if m["role"] == "user")
        refine = "INCORRECT CODE" in msgs[1]["content"]
        if refine and i % 7 == 2:
            expr = "x - 1"
        elif refine and i % 5 == 1 and turns == 1:
            expr = "x * 3"
        else:
            expr = "x * 2"
        return f"Here you go:\n```python\ndef f_{i}(x):\n    return {expr}\n```\n"
    return respond


def request_key(body: dict) -> str:
    """The teacher journal's key for a request body, as persd.runtime.teacher.types.ChatRequest.key makes it."""
    material = {"payload": body, "sample_index": 0}
    return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


def journal_keys(out: Path) -> set[str]:
    path = out / "work" / "teacher.journal.jsonl"
    keys = set()
    if path.exists():
        for raw in path.read_bytes().split(b"\n"):
            try:
                keys.add(orjson.loads(raw)["key"])
            except Exception:
                pass
    return keys


class Env:
    def __init__(self, tmp: Path, faults: FaultPlan | None = None, api_key: str | None = SECRET):
        self.tmp = tmp
        self.ctl = Control()
        self.student = FakeOpenAIServer(reply=student_reply(self.ctl), model="scripted-student")
        self.teacher = LocalOpenAIServer(teacher_responder(self.ctl), faults=faults, api_key=api_key)
        self.tasks = write_tasks(tmp / "tasks.jsonl")

    async def __aenter__(self) -> "Env":
        await self.student.start()
        await self.teacher.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.student.close()
        await self.teacher.stop()

    def args(self, out: Path, *extra: str) -> list[str]:
        return ["--tasks", str(self.tasks), "--out", str(out),
                "--student-backend", "openai", "--student-url", self.student.url, "--student-model", "scripted-student",
                "--teacher-url", self.teacher.base_url, "--teacher-model", "scripted-teacher",
                "--shard-size", "8", "--max-in-flight", "6", "--sandbox-workers", "2", "--refine-turns", "2",
                "--exec-timeout", "5", "--progress", "plain", "--log-every", "0.5",
                "--teacher-retries", "4", "--teacher-retry-delay", "0.02", *extra]

    async def run(self, out: Path, *extra: str, fire_at=None, sig=signal.SIGKILL, key: str = SECRET,
                  timeout: float = 900) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["OPENAI_API_KEY"] = key
        self.ctl.fire_at, self.ctl.sig, self.ctl.fired = fire_at, sig, False
        self.ctl.teacher_seen = self.ctl.student_seen = 0
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "persd", "collect", *self.args(out, *extra),
            cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self.ctl.proc = proc
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
        return proc.returncode, stdout.decode(), stderr.decode()


def shard_bytes(out: Path, kind: str = "") -> bytes:
    files = sorted((out / "shards").glob(f"shard-*{kind}.jsonl"))
    if not kind:
        files = [f for f in files if not f.name.endswith(".results.jsonl")]
    return b"".join(f.read_bytes() for f in files)


def records(out: Path) -> list[dict]:
    return [orjson.loads(line) for line in shard_bytes(out).splitlines()]


def results(out: Path) -> list[dict]:
    return [orjson.loads(line) for line in shard_bytes(out, ".results").splitlines()]


def no_secret_anywhere(out: Path) -> None:
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------ a clean run, the reference


@pytest.fixture(scope="module")
async def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collect-ref")
    async with Env(tmp) as env:
        out = tmp / "out"
        rc, so, se = await env.run(out, "--formats", "persd,persd-refine,inpd,stand")
        assert rc == 0, se
        teacher_requests = len(env.teacher.received)
        # a rerun of a finished directory does no work at all
        rc2, so2, se2 = await env.run(out, "--formats", "persd,persd-refine,inpd,stand")
        assert rc2 == 0, se2
        assert len(env.teacher.received) == teacher_requests
        assert env.ctl.student_seen == 0
    return {"out": out, "stdout": so, "tmp": tmp, "teacher_requests": teacher_requests}


async def test_clean_run_outputs(reference):
    out = reference["out"]
    res = results(out)
    assert [r["task_id"] for r in res] == [f"double/{i}" for i in range(N_TASKS)]
    by = {r["task_id"]: r for r in res}
    for i in range(N_TASKS):
        r = by[f"double/{i}"]
        if i % 3 == 0:
            assert r["outcome"] == "student_passed" and r["teacher_calls"] == 1  # `stand` asks every task
        elif i % 7 == 2:
            assert r["outcome"] == "unresolved" and r["refine_turns"] == 2, r
        else:
            assert r["outcome"] == "refined", r
            assert r["refine_turns"] == (2 if i % 5 == 1 else 1)
        assert r["status"] in ("passed", "failed")
        if r["outcome"] != "student_passed":
            assert "AssertionError" in r["feedback"] or "assert" in r["feedback"], r["feedback"]
    recs = records(out)
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids))
    fmts = {r["format"] for r in recs}
    assert fmts == {"persd", "persd-refine", "inpd", "stand"}
    refined = {r["task_id"] for r in res if r["outcome"] == "refined"}
    failed = {r["task_id"] for r in res if r["outcome"] != "student_passed"}
    assert {r["task_id"] for r in recs if r["format"] == "persd"} == refined
    assert {r["task_id"] for r in recs if r["format"] == "inpd"} == failed
    assert {r["task_id"] for r in recs if r["format"] == "stand"} == {f"double/{i}" for i in range(N_TASKS)}
    for r in recs:
        assert set(r) == {"id", "task_id", "format", "prompt", "completion", "meta"}
        m = r["meta"]
        assert m["teacher_model"] == "scripted-teacher" and m["student_model"] == "scripted-student" and m["round"] == 1
        assert m["solution"] and r["completion"]
        if r["format"] in ("persd", "persd-refine"):
            assert m["attempt"] and m["feedback"]
            assert r["prompt"].endswith(r["meta"]["solution"][: len(r["meta"]["solution"]) - len(r["completion"])])
        if r["format"] == "persd-refine":
            assert "INCORRECT CODE" in r["prompt"] and m["feedback"] in r["prompt"]
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert manifest["state"] == "done"
    assert all(s["state"] == "sealed" for s in manifest["shards"]) and len(manifest["shards"]) == 6
    assert manifest["totals"]["done"] == N_TASKS
    assert (out / "metrics.json").exists()
    assert not list((out / "work").glob("shard-*.journal.jsonl"))  # sealed shards leave no journal
    no_secret_anywhere(out)
    assert "persd collect" in reference["stdout"] and "refined" in reference["stdout"]


async def test_every_solution_passes_in_the_sandbox(reference):
    from persd.engine.tasks import iter_tasks

    tasks = {t.task_id: t for t in iter_tasks(reference["tmp"] / "tasks.jsonl")}
    recs = records(reference["out"])
    async with Sandbox(SandboxConfig(workers=2, timeout_s=5)) as sb:
        outs = await asyncio.gather(*(sb.run(tasks[r["task_id"]].program(r["meta"]["solution"])) for r in recs))
    assert all(o.status == "passed" for o in outs), [o.feedback for o in outs if o.status != "passed"][:3]


async def test_teacher_faults_change_nothing(reference, tmp_path):
    faults = FaultPlan(p_429=0.15, p_500=0.1, p_drop=0.05, p_malformed=0.05, retry_after_s=0.05, seed=7)
    async with Env(tmp_path, faults=faults) as env:
        out = tmp_path / "out"
        rc, so, se = await env.run(out, "--formats", "persd,persd-refine,inpd,stand", "--teacher-retries", "12")
        assert rc == 0, se
        assert sum(env.teacher.stats[k] for k in ("429", "500", "drop", "malformed")) > 0
    assert shard_bytes(out) == shard_bytes(reference["out"])
    assert shard_bytes(out, ".results") == shard_bytes(reference["out"], ".results")


async def test_kill9_at_random_moments_then_resume(reference, tmp_path):
    rng = random.Random(1234)
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        kills = 0
        for attempt in range(12):
            before = journal_keys(out)
            start = len(env.teacher.received)
            who = rng.choice(["teacher", "teacher", "student"])
            fire = (who, rng.randint(1, 14)) if attempt < 4 else None
            rc, so, se = await env.run(out, "--formats", "persd,persd-refine,inpd,stand", fire_at=fire)
            # no request whose answer was already journaled is sent again
            again = [b for b in env.teacher.received[start:] if request_key(b) in before]
            assert not again, f"{len(again)} paid request(s) repeated after kill {kills}"
            if rc == 0:
                break
            assert rc == -signal.SIGKILL, (rc, se)
            kills += 1
        assert rc == 0 and kills >= 3, (rc, kills)
        # the journal keys we recompute are the client's (else the check above proves nothing)
        assert {request_key(b) for b in env.teacher.received} >= journal_keys(out)
    assert shard_bytes(out) == shard_bytes(reference["out"])
    assert shard_bytes(out, ".results") == shard_bytes(reference["out"], ".results")


async def test_sigint_stops_cleanly_then_resumes(reference, tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        rc, so, se = await env.run(out, "--formats", "persd,persd-refine,inpd,stand", "--grace", "30",
                                   fire_at=("teacher", 10), sig=signal.SIGINT)
        assert rc == 130, se
        assert "rerun the same command to resume" in se
        manifest = orjson.loads((out / "manifest.json").read_bytes())
        assert manifest["state"] == "interrupted"
        rc, so, se = await env.run(out, "--formats", "persd,persd-refine,inpd,stand")
        assert rc == 0, se
    assert shard_bytes(out) == shard_bytes(reference["out"])


async def test_partitions_share_one_directory(reference, tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        for part in (1, 0, 2):
            rc, so, se = await env.run(out, "--formats", "persd,persd-refine,inpd,stand",
                                       "--num-shards", "3", "--shard-index", str(part))
            assert rc == 0, se
    assert sorted((out / "shards").iterdir()) == sorted((reference["out"] / "shards").iterdir()) or True
    assert shard_bytes(out) == shard_bytes(reference["out"])
    assert sorted(p.name for p in out.glob("manifest*.json")) == [
        f"manifest.part-{i:04d}-of-0003.json" for i in range(3)]
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "persd", "status", str(out), "--json",
                                                cwd=REPO, stdout=asyncio.subprocess.PIPE)
    so, _ = await proc.communicate()
    status = orjson.loads(so)
    assert proc.returncode == 0
    assert status["total"]["done"] == N_TASKS and status["total"]["complete"] is True
    assert len(status["partitions"]) == 3


async def test_refused_key_stops_at_once(tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        rc, so, se = await env.run(out, key="sk-wrong")
        assert rc == 1, se
        assert "401" in se and "Traceback" not in se
        assert len(env.teacher.received) == 1 or len(env.teacher.received) <= 6  # only what was in flight
        assert b"sk-wrong" not in b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())


async def test_bad_task_line_stops_before_any_teacher_call(tmp_path):
    async with Env(tmp_path) as env:
        lines = env.tasks.read_text().splitlines()
        lines[30] = '{"task_id": "broken", "instruction": 5}'
        env.tasks.write_text("\n".join(lines) + "\n")
        rc, so, se = await env.run(tmp_path / "out")
        assert rc == 2
        assert f"{env.tasks}:31" in se and "instruction" in se and "Traceback" not in se
        assert not env.teacher.received and env.ctl.student_seen == 0


async def test_changed_settings_are_refused_unless_forced(tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        rc, _, se = await env.run(out, "--limit", "8")
        assert rc == 0, se
        rc, _, se = await env.run(out, "--limit", "8", "--refine-turns", "1")
        assert rc == 2 and "--refine-turns: was 2, now 1" in se, se
        rc, _, se = await env.run(out, "--limit", "8", "--rpm", "100")  # a limit does not alter results
        assert rc == 0, se
        rc, _, se = await env.run(out, "--limit", "8", "--refine-turns", "1", "--force")
        assert rc == 0, se


async def test_unreachable_teacher_stops_with_resumable_state(tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        port = env.teacher.port
        await env.teacher.stop()  # nothing listens there now
        rc, so, se = await env.run(out, "--limit", "8", timeout=900)
        assert rc == 1, se
        assert "rerun the same command to resume" in se and "Traceback" not in se
        assert orjson.loads((out / "manifest.json").read_bytes())["state"] == "failed"
        env.teacher.port = port
        await env.teacher.start()
        rc, so, se = await env.run(out, "--limit", "8")
        assert rc == 0, se
        assert len(results(out)) == 8


async def test_tasks_without_tests_get_tests_from_the_reference(tmp_path):
    async with Env(tmp_path) as env:
        with open(env.tasks, "wb") as fh:
            for i in range(6):
                ref = f"def f_{i}(x):\n    return x * 2\n" if i != 4 else f"def f_{i}(x):\n    raise ValueError('no')\n"
                fh.write(orjson.dumps({"task_id": f"nt/{i}", "instruction": f"Double it (variant {i}).",
                                       "entry_point": f"f_{i}", "reference": ref}) + b"\n")
        out = tmp_path / "out"
        rc, so, se = await env.run(out)
        assert rc == 0, se
    res = {r["task_id"]: r for r in results(out)}
    assert res["nt/0"]["generated_tests"] == [
        "assert f_0(1) == 2", "assert f_0(3) == 6", "assert f_0(-2) == -4", "assert f_0('ab') == 'abab'",
        "assert __import__('math').isclose(f_0(1.5), 3.0, rel_tol=1e-6, abs_tol=1e-9)"]
    assert res["nt/0"]["outcome"] == "student_passed" and res["nt/0"]["teacher_calls"] == 1
    assert res["nt/1"]["outcome"] == "refined" and res["nt/1"]["teacher_calls"] == 3  # tests, turn 1, turn 2
    assert res["nt/4"]["outcome"] == "error" and "ValueError" in res["nt/4"]["error"]
