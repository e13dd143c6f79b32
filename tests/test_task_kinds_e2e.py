"""The task kinds and sources of issue 24 end to end: `persd collect` on a parquet file (CodeContests layout,
stdin/stdout), on a saved dataset (KodCode layout, pytest-style) and on call-based problems in APPS's layout,
`persd eval` on JSONL and on `hf:` (a local dataset folder, offline), then `persd export` of the collected
records, loaded back with `datasets`.

The student (the `openai` backend on FakeOpenAIServer) answers right for some tasks and wrong for the others;
the teacher (LocalOpenAIServer) answers with the task's reference, so every failed task is refined.
"""
from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import orjson
import pytest
from helpers import FIXTURES, read_jsonl
from persd.engine.tasks import iter_tasks
from persd.runtime.local_server import FakeOpenAIServer, LocalOpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TASKS = FIXTURES / "tasks"
SOURCES = {"stdio-jsonl": TASKS / "stdio.jsonl", "stdio-parquet": TASKS / "stdio-codecontests.parquet",
           "pytest-jsonl": TASKS / "pytest.jsonl", "pytest-saved": f"{TASKS / 'pytest-kodcode-saved'}@test",
           "call-jsonl": TASKS / "apps-call-based.jsonl"}
RIGHT = {"stdio/sum", "pytest/word-count", "stdio/mean", "9001"}  # the student's right answers; the rest are wrong
WRONG = {"stdio": "import sys\nprint(len(sys.stdin.read()))\n",
         "pytest/clamp": "def clamp(x, lo, hi):\n    return x\n",
         "pytest/mean": "def mean(xs):\n    return sum(xs) // len(xs)\n",
         "pytest/word-count": "def word_count(text):\n    return {}\n",
         "9002": "class Solution:\n    def twoSum(self, nums, target):\n        return (0, 1)\n",
         "9003": "def min_max(xs):\n    return [max(xs), min(xs)]\n",
         "9004": "def length_counts(words):\n    return {str(len(w)): 1 for w in words}\n"}


def all_tasks():
    out = {}
    for src in SOURCES.values():
        for t in iter_tasks(src):
            out[t.task_id] = t
    return out


def which(text: str, tasks: dict):
    for t in tasks.values():
        first = t.instruction.strip().split("\n")[0][:60]
        if first in text:
            return t
    raise AssertionError(f"no task in: {text[:200]}")


def student(tasks):
    def reply(payload: dict, index: int) -> str:
        text = payload.get("prompt") or payload["messages"][-1]["content"]
        t = which(text, tasks)
        code = t.reference if t.task_id in RIGHT else WRONG.get(t.task_id, WRONG["stdio"])
        return code if "prompt" in payload else f"```python\n{code}```"
    return reply


def teacher(tasks, seen: list):
    def respond(body: dict) -> str:
        user = body["messages"][1]["content"]
        seen.append(user)
        return f"Fixed:\n```python\n{which(user, tasks).reference}```\n"
    return respond


async def run_persd(*args: str, env: dict | None = None, timeout: float = 600) -> tuple[int, str, str]:
    full = {**os.environ, "OPENAI_API_KEY": "sk-test", **(env or {})}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "persd", *args, cwd=REPO, env=full,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    so, se = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, so.decode(), se.decode()


def collect_args(src, out: Path, student_url: str, teacher_url: str) -> list[str]:
    return ["collect", "--tasks", str(src), "--out", str(out), "--student-backend", "openai", "--student-url",
            student_url, "--student-model", "scripted", "--teacher-url", teacher_url, "--teacher-model",
            "scripted-teacher", "--sandbox-workers", "2", "--refine-turns", "1", "--exec-timeout", "10",
            "--progress", "none", "--formats", "persd,persd-refine,stand"]


@pytest.fixture(scope="module")
async def collected(tmp_path_factory):
    """Two collect runs: stdin/stdout tasks from parquet, pytest-style tasks from a saved dataset."""
    tmp = tmp_path_factory.mktemp("kinds")
    tasks = all_tasks()
    seen: list[str] = []
    async with FakeOpenAIServer(reply=student(tasks)) as stu:
        srv = LocalOpenAIServer(teacher(tasks, seen))
        await srv.start()
        try:
            runs = {}
            for name in ("stdio-parquet", "pytest-saved", "stdio-jsonl", "call-jsonl"):
                out = tmp / name
                rc, so, se = await run_persd(*collect_args(SOURCES[name], out, stu.url, srv.base_url))
                assert rc == 0, se
                runs[name] = out
        finally:
            await srv.stop()
    return {"runs": runs, "teacher_saw": seen, "tmp": tmp}


def results(out: Path) -> dict[str, dict]:
    return {r["task_id"]: r for p in sorted((out / "shards").glob("*.results.jsonl")) for r in read_jsonl(p)}


def recs(out: Path) -> list[dict]:
    return [r for p in sorted((out / "shards").glob("shard-*.jsonl")) if not p.name.endswith(".results.jsonl")
            for r in read_jsonl(p)]


async def test_collect_stdio_from_parquet(collected):
    res = results(collected["runs"]["stdio-parquet"])
    assert set(res) == {"stdio/sum", "stdio/reverse-words"}
    assert res["stdio/sum"]["outcome"] == "student_passed"
    wrong = res["stdio/reverse-words"]
    assert wrong["outcome"] == "refined" and wrong["status"] == "failed"
    # the first failing input, the expected and the actual output
    assert wrong["feedback"].startswith("Wrong answer on test 1 of 3")
    assert "INPUT:\na b c\nOUTPUT:\n6\nEXPECTED:\nc b a" in wrong["feedback"], wrong["feedback"]
    assert any("Wrong answer on test 1 of 3" in u and "INCORRECT CODE" in u for u in collected["teacher_saw"])
    by_format = {(r["task_id"], r["format"]): r for r in recs(collected["runs"]["stdio-parquet"])}
    refine = by_format[("stdio/reverse-words", "persd-refine")]
    assert "Wrong answer on test 1 of 3" in refine["prompt"]
    assert refine["meta"]["solution"].startswith("import sys")


async def test_collect_stdio_from_jsonl(collected):
    res = results(collected["runs"]["stdio-jsonl"])
    assert {k: r["outcome"] for k, r in res.items()} == {"stdio/sum": "student_passed", "stdio/mean": "student_passed",
                                                        "stdio/reverse-words": "refined"}


async def test_collect_pytest_from_saved_dataset(collected):
    res = results(collected["runs"]["pytest-saved"])
    assert res["pytest/word-count"]["outcome"] == "student_passed"
    clamp = res["pytest/clamp"]
    assert clamp["outcome"] == "refined"
    # the failing test and its assertion, with the values
    assert clamp["feedback"].startswith("test_below failed: AssertionError: assert clamp(-3, 0, 10) == 0")
    assert "OUTPUT: -3\nEXPECTED: 0" in clamp["feedback"]
    mean = res["pytest/mean"]
    assert mean["outcome"] == "refined" and mean["feedback"].startswith("TestMean.test_ints failed")


async def test_collect_call_based_from_apps_layout(collected):
    """APPS's call-based problems: outputs stored wrapped in a list pass unwrapped, a tuple answer counts as a
    list, JSON's string keys are ints again, `class Solution` is called as LeetCode's harness calls it; a wrong
    answer's feedback names the input, the output and the expected value, and its refinement is a record."""
    res = results(collected["runs"]["call-jsonl"])
    assert {k: r["outcome"] for k, r in res.items()} == {"9001": "student_passed", "9002": "refined",
                                                        "9003": "refined", "9004": "refined"}
    assert res["9002"]["feedback"] == ("AssertionError: assert Solution().twoSum([3, 2, 4], 6) == _persd_expected"
                                       "([1, 2])\nINPUT: [3, 2, 4], 6\nOUTPUT: (0, 1)\nEXPECTED: [1, 2]")
    assert "INPUT: [3, 1, 5]\nOUTPUT: [5, 1]\nEXPECTED: [1, 5] (or [[1, 5]])" in res["9003"]["feedback"]
    assert "OUTPUT: {'2': 1, '3': 1}\nEXPECTED: {2: 2, 3: 1}" in res["9004"]["feedback"]
    by_format = {(r["task_id"], r["format"]): r for r in recs(collected["runs"]["call-jsonl"])}
    assert by_format[("9003", "persd")]["completion"] == "    return min(xs), max(xs)\n"
    assert "Complete this code:\nclass Solution:" in by_format[("9002", "persd")]["prompt"]
    assert by_format[("9002", "persd")]["completion"].startswith("class Solution:")


async def test_eval_every_source_kind(tmp_path):
    """eval (in a subprocess, like a user) on JSONL, on hf:<a local dataset folder> with the hub off, on parquet
    (stdin/stdout) and on a saved dataset (pytest-style)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tasks = all_tasks()
    hf_dir = tmp_path / "hf-set" / "data"
    hf_dir.mkdir(parents=True)
    rows = [orjson.loads(line) for line in (TASKS / "stdio.jsonl").read_bytes().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), hf_dir / "test-00000-of-00001.parquet")
    offline = {"HF_HOME": str(tmp_path / "hf-home"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    async with FakeOpenAIServer(reply=student(tasks)) as stu:
        base = ["--student-backend", "openai", "--student-url", stu.url, "--student-model", "scripted",
                "--sandbox-workers", "2", "--exec-timeout", "10", "--progress", "none"]
        for name, src in (("jsonl", SOURCES["stdio-jsonl"]), ("hf", f"hf:{tmp_path / 'hf-set'}@test")):
            out = tmp_path / f"eval-{name}"
            rc, so, se = await run_persd("eval", "--tasks", str(src), "--out", str(out), *base, env=offline)
            assert rc == 0, se
            summary = orjson.loads((out / "summary.json").read_bytes())
            assert summary["tasks"] == 3 and summary["pass@1"] == pytest.approx(2 / 3)
            lines = {r["task_id"]: r for r in read_jsonl(out / "results.jsonl")}
            assert lines["stdio/reverse-words"]["status"] == "failed"
            assert "Wrong answer on test 1 of 3" in lines["stdio/reverse-words"]["feedback"]
        for name, tasks_n, passed in (("stdio-parquet", 2, 1), ("pytest-saved", 3, 1), ("call-jsonl", 4, 1)):
            out = tmp_path / f"eval-{name}"
            rc, so, se = await run_persd("eval", "--tasks", str(SOURCES[name]), "--out", str(out), *base, env=offline)
            assert rc == 0, se
            summary = orjson.loads((out / "summary.json").read_bytes())
            assert summary["tasks"] == tasks_n and summary["pass@1"] == pytest.approx(passed / tasks_n), name
        rc, so, se = await run_persd("eval", "--tasks", "hf:nobody/no-such-set", "--out", str(tmp_path / "x"),
                                     *base, env=offline)
        assert rc == 2 and "hf:nobody/no-such-set" in se and "Traceback" not in se, se


@pytest.mark.parametrize("fmt,style", [("parquet", "messages"), ("hf", "prompt-completion"),
                                       ("jsonl", "prompt-completion")])
async def test_export_loads_back(collected, fmt, style):
    import datasets

    runs = collected["runs"]
    out = collected["tmp"] / f"export-{fmt}"
    rc, so, se = await run_persd("export", str(runs["stdio-parquet"]), str(runs["pytest-saved"]), "--out", str(out),
                                 "--format", fmt, "--style", style, "--tasks-license", "CC0-1.0",
                                 "--teacher-terms", "the teacher's terms")
    assert rc == 0, se
    if fmt == "parquet":
        ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train",
                                   cache_dir=str(collected["tmp"] / "cache"))
    elif fmt == "jsonl":
        ds = datasets.load_dataset("json", data_files=str(out / "data" / "*.jsonl"), split="train",
                                   cache_dir=str(collected["tmp"] / "cache"))
    else:
        ds = datasets.load_from_disk(str(out))
    want = recs(runs["stdio-parquet"]) + recs(runs["pytest-saved"])
    got = list(ds)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert (g["id"], g["task_id"], g["format"]) == (w["id"], w["task_id"], w["format"])
        if style == "messages":
            assert g["messages"] == [{"role": "user", "content": w["prompt"]},
                                     {"role": "assistant", "content": w["completion"]}]
        else:
            assert (g["prompt"], g["completion"]) == (w["prompt"], w["completion"])
        assert orjson.loads(g["meta"]) == w["meta"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: other\n")
    assert "scripted-teacher" in card and "CC0-1.0" in card and "the teacher's terms" in card
    assert "| refined | 3 |" in card and "| student_passed | 2 |" in card
    assert f"| persd | {sum(w['format'] == 'persd' for w in want)} |" in card
    assert "persd version: " in card


async def test_push_to_hub_reaches_the_hub(collected, tmp_path):
    """--push-to-hub against a local stand-in for the hub (HF_ENDPOINT): the repository is created as a dataset
    repository with the right name; the stand-in refuses the token, and persd says so (exit 1, no traceback)."""
    from aiohttp import web

    seen: list[tuple[str, str, dict]] = []

    async def anything(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.path, orjson.loads(body) if body.startswith(b"{") else {}))
        return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        out = tmp_path / "push"
        rc, so, se = await run_persd("export", str(collected["runs"]["stdio-parquet"]), "--out", str(out),
                                     "--push-to-hub", "someone/persd-records",
                                     env={"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_TOKEN": "hf_test"})
    finally:
        await runner.cleanup()
    assert rc == 1, se
    assert "--push-to-hub someone/persd-records" in se and "Traceback" not in se, se
    create = [s for s in seen if s[1] == "/api/repos/create"]
    assert create and create[0][0] == "POST"
    assert create[0][2].get("name") == "persd-records" and create[0][2].get("type") == "dataset"
    assert create[0][2].get("organization") == "someone"
    assert (out / "README.md").is_file() and (out / "data" / "train-00000-of-00001.parquet").is_file()
