"""collect's parts on their own: flags and TOML, the shard journal and sealing, a full disk,
continuations, test generation from a reference, and the instant-backend engine in-process."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import orjson
import pytest
from persd.bench.instant import instant_backends, write_synthetic_tasks
from persd.engine.collect.config import parse_args
from persd.engine.collect.records import continuation
from persd.engine.collect.runner import Collector
from persd.engine.collect.shards import DiskError, ShardPlan, ShardStore
from persd.runtime.errors import UsageError

BASE = ["--student-model", "m", "--teacher-url", "http://127.0.0.1:9/v1", "--progress", "none"]


# ------------------------------------------------------------------ configuration


def test_flags_toml_and_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('tasks = "humaneval"\nout = "x"\nrpm = 60\nformats = ["persd", "stand"]\nrefine-turns = 3\n')
    cfg = parse_args(["--config", str(toml), "--rpm", "90", *BASE], environ={})
    assert (cfg.tasks, cfg.out, cfg.rpm, cfg.refine_turns) == ("humaneval", "x", 90, 3)
    assert cfg.formats == ("persd", "stand")
    assert cfg.fingerprint()["teacher_model"] == "gpt-3.5-turbo"
    assert "rpm" not in cfg.fingerprint()


@pytest.mark.parametrize("argv, needle", [
    (["--tasks", "t", "--out", "o", "--rpm", "fast"], "--rpm"),
    (["--tasks", "t", "--out", "o", "--formats", "persd,nope"], "'nope'"),
    (["--tasks", "t", "--out", "o", "--shard-index", "3", "--num-shards", "2"], "--shard-index"),
    (["--out", "o"], "--tasks"),
    (["--tasks", "t", "--out", "o", "--bogus"], "--bogus"),
    (["--tasks", "t", "--out", "o", "--student-backend", "openai"], "--student-url"),
])
def test_bad_flags_name_the_flag(argv, needle):
    with pytest.raises(UsageError) as exc:
        parse_args(argv + (["--student-model", "m"] if "--student-backend" not in argv else []), environ={})
    assert needle in str(exc.value)


def test_bad_toml_key(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('tasks = "t"\nout = "o"\nrmp = 5\n')
    with pytest.raises(UsageError, match="unknown key 'rmp'"):
        parse_args(["--config", str(toml)], environ={})


def test_vllm_flags_reach_the_student_config(tmp_path):
    from persd.engine.collect.backends import student_config
    from persd.engine.collect.config import resolve_student_backend

    toml = tmp_path / "c.toml"
    toml.write_text('kv-cache-gib = 4\nmax_model_len = 2048\n')
    cfg = parse_args(["--tasks", "t", "--out", "o", "--config", str(toml), "--student-backend", "hf",
                      "--gpu-memory-utilization", "0.5", "--tensor-parallel-size", "2", "--dtype", "bfloat16",
                      *BASE], environ={})
    scfg = student_config(cfg, cfg.seed)
    assert (scfg.backend, scfg.model, scfg.max_concurrency) == ("hf", "m", 64)
    assert (scfg.gpu_memory_utilization, scfg.kv_cache_gib, scfg.tensor_parallel_size, scfg.max_model_len,
            scfg.dtype) == (0.5, 4.0, 2, 2048, "bfloat16")
    assert "gpu_memory_utilization" not in cfg.fingerprint()
    assert scfg.log_path == str(Path("o") / "work" / "vllm.log")  # vLLM's own output: a file, not the terminal
    # unset by default: vLLM's own default on a GPU, persd's KV-cache sizing and eager mode on CPU
    plain = student_config(parse_args(["--tasks", "t", "--out", "o", *BASE], environ={}), 0)
    assert (plain.gpu_memory_utilization, plain.kv_cache_gib, plain.enforce_eager) == (None, None, None)
    eager = parse_args(["--tasks", "t", "--out", "o", "--no-enforce-eager", *BASE], environ={})
    assert student_config(eager, 0).enforce_eager is False
    with pytest.raises(UsageError, match="invalid positive number value"):
        parse_args(["--tasks", "t", "--out", "o", "--kv-cache-gib", "0", *BASE], environ={})
    assert resolve_student_backend("auto", "http://127.0.0.1:8000/v1") == "openai"
    assert resolve_student_backend("hf", "http://127.0.0.1:8000/v1") == "hf"


def test_slurm_array_defaults():
    cfg = parse_args(["--tasks", "t", "--out", "o", *BASE],
                     environ={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"})
    assert (cfg.num_shards, cfg.shard_index, cfg.partition) == (4, 2, "part-0002-of-0004")
    cfg = parse_args(["--tasks", "t", "--out", "o", "--num-shards", "2", "--shard-index", "1", *BASE],
                     environ={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert (cfg.num_shards, cfg.shard_index) == (2, 1)


# ------------------------------------------------------------------ shards


def test_plan_partitions_are_disjoint_and_complete():
    plans = [ShardPlan(103, 10, 3, i) for i in range(3)]
    owned = [set(p.owned()) for p in plans]
    assert set().union(*owned) == set(range(11)) and sum(map(len, owned)) == 11
    assert plans[0].span(10) == (100, 103) and sum(p.owned_tasks() for p in plans) == 103


def test_journal_torn_tail_and_seal(tmp_path):
    plan = ShardPlan(4, 4)
    store = ShardStore(tmp_path, plan)
    store.prepare()
    store.journal_attempt(0, 0, "a", {"texts": ["x"]})
    store.journal_done(0, 0, {"task_id": "a", "outcome": "refined"}, [{"id": "a/persd", "format": "persd"}])
    store.journal_attempt(0, 1, "b", {"texts": ["y"]})
    store.close()
    with open(store.journal_path(0), "ab") as fh:  # a crash in the middle of a line
        fh.write(b'{"e":"d","i":1,"r":{"task_id"')
    state = store.load(0)
    assert state.done == {0} and set(state.attempts) == {1} and state.skipped_lines == 1
    store.journal_done(0, 1, {"task_id": "b", "outcome": "student_passed"}, [])  # starts on a fresh line
    for i, t in ((3, "d"), (2, "c")):
        store.journal_done(0, i, {"task_id": t, "outcome": "unresolved"}, [])
    assert store.load(0).complete
    stats = store.seal(0)
    assert stats["tasks"] == 4 and stats["records"] == 1
    res = [orjson.loads(x)["task_id"] for x in store.results_path(0).read_bytes().splitlines()]
    assert res == ["a", "b", "c", "d"]  # task order, whatever the finishing order
    assert not store.journal_path(0).exists() and store.is_sealed(0)
    assert not list((tmp_path / "shards").glob(".*tmp"))


def test_continuation():
    prompt = '"""\nDouble it.\n"""\n\ndef f(x):\n'
    assert continuation(prompt, "def f(x):\n    return 2 * x\n") == "    return 2 * x\n"
    assert continuation(prompt, prompt + "    return 2 * x\n") == "    return 2 * x\n"
    whole = "import math\n\ndef f(x):\n    return 2 * x\n"
    assert continuation(prompt, whole) == whole  # no entry point known: the whole program
    # re-cut after the header: imports the prompt lacks go to the body's top, other code after it
    assert continuation(prompt, whole, "f") == "    import math\n    return 2 * x\n"
    mbpp_like = "R = 3\ndef f(x): \n\treturn R * x\n"
    assert continuation(prompt, mbpp_like, "f") == "\treturn R * x\n\n\nR = 3\n"
    assert continuation(prompt, "def f(y):\n    return 2 * y\n", "f") == "def f(y):\n    return 2 * y\n"
    assert continuation(prompt, "def f(x): return 2 * x\n", "f") == "def f(x): return 2 * x\n"


# ------------------------------------------------------------------ the engine with instant backends


def _cfg(tmp: Path, tasks: Path, *extra: str):
    return parse_args(["--tasks", str(tasks), "--out", str(tmp / "out"), "--shard-size", "50", *BASE, *extra],
                      environ={})


async def test_instant_engine_and_resume_after_disk_full(tmp_path, monkeypatch):
    tasks = write_synthetic_tasks(tmp_path / "t.jsonl", 300)
    ref = tmp_path / "ref"
    ref.mkdir()
    assert await Collector(_cfg(ref, tasks), open_backends=instant_backends, install_signals=False).run() == 0

    # the disk fills up after some journal lines: a short write, then ENOSPC
    real_write = os.write
    budget = {"n": 250}

    def full_disk_write(fd, data):
        if data.startswith(b'{"e":') and budget["n"] <= 0:
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        budget["n"] -= 1
        return real_write(fd, data)

    monkeypatch.setattr("persd.engine.collect.shards.os.write", full_disk_write)
    with pytest.raises(DiskError, match="disk is full"):
        await Collector(_cfg(tmp_path, tasks, "--max-in-flight", "16"), open_backends=instant_backends,
                        install_signals=False).run()
    sealed = list((tmp_path / "out" / "shards").glob("shard-*.results.jsonl"))
    assert 0 < len(sealed) < 6
    monkeypatch.setattr("persd.engine.collect.shards.os.write", real_write)
    assert await Collector(_cfg(tmp_path, tasks), open_backends=instant_backends, install_signals=False).run() == 0
    for name in sorted(p.name for p in (ref / "out" / "shards").iterdir()):
        assert (tmp_path / "out" / "shards" / name).read_bytes() == (ref / "out" / "shards" / name).read_bytes()


async def test_missing_tests_without_reference_is_an_error_outcome(tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(orjson.dumps({"task_id": "x/1", "instruction": "Do it.", "header": "def solve(x):\n",
                                   "entry_point": "solve"}).decode() + "\n")
    assert await Collector(_cfg(tmp_path, tasks), open_backends=instant_backends, install_signals=False).run() == 0
    res = orjson.loads((tmp_path / "out" / "shards" / "shard-00000.results.jsonl").read_bytes())
    assert res["outcome"] == "error" and "no reference" in res["error"]


async def test_a_prompt_the_student_rejects_fails_only_its_task(tmp_path):
    """A request the student can never serve (prompt too long) is that task's `error`; the run goes on."""
    import contextlib

    from persd.bench.instant import InstantSandbox, InstantStudent, InstantTeacher
    from persd.engine.collect.flow import Backends
    from persd.runtime.student import RequestRejected

    class PickyStudent(InstantStudent):
        async def generate(self, req):
            if "[task 7]" in (req.prompt or req.messages[-1]["content"]):
                raise RequestRejected("prompt of 9000 tokens + max_tokens 512 exceeds max_model_len 2048")
            return await super().generate(req)

    @contextlib.asynccontextmanager
    async def backends(cfg, collector):
        yield Backends(student=PickyStudent(), sandbox=InstantSandbox(), teacher=InstantTeacher())

    tasks = write_synthetic_tasks(tmp_path / "t.jsonl", 20)
    assert await Collector(_cfg(tmp_path, tasks), open_backends=backends, install_signals=False).run() == 0
    lines = (tmp_path / "out" / "shards" / "shard-00000.results.jsonl").read_bytes().splitlines()
    results = {r["task_id"]: r for r in map(orjson.loads, lines)}
    assert len(results) == 20
    assert results["synth/7"]["outcome"] == "error" and "max_model_len" in results["synth/7"]["error"]
    assert {r["outcome"] for t, r in results.items() if t != "synth/7"} <= {"student_passed", "refined"}


def test_generated_tests_that_only_expect_none_are_refused():
    from persd.engine.collect.testgen import parse_probe

    marker = "__M__"
    calls = ["f(1)", "f(2)"]
    none_out = "\n".join(f'{marker}[{i}, true, "None", "NoneType"]' for i in range(2))
    problems: list[str] = []
    assert parse_probe(none_out, calls, marker, problems) == []
    assert "returns None for every input" in problems[0]
    mixed = f'{marker}[0, true, "None", "NoneType"]\n{marker}[1, true, "3", "int"]'
    assert parse_probe(mixed, calls, marker) == ["assert f(1) == None", "assert f(2) == 3"]


def test_stand_in_guesses_calls_from_parameter_names():
    from persd.engine.collect.standin import _guessed_calls
    from persd.engine.tasks import Task

    task = Task(task_id="t", shape="generic", instruction="x", prompt="", entry_point="f",
                header="def f(nums, text, set1, n, flag=True):\n", test_program="")
    calls = _guessed_calls(task)
    assert len(calls) == 5
    assert calls[0] == "f([3, 1, 2], 'hello world', {1, 2, 3}, 3)"


async def test_forced_rerun_with_a_larger_limit_does_not_skip_tasks_silently(tmp_path):
    tasks = write_synthetic_tasks(tmp_path / "t.jsonl", 60)
    assert await Collector(_cfg(tmp_path, tasks, "--limit", "30"), open_backends=instant_backends,
                           install_signals=False).run() == 0
    with pytest.raises(UsageError, match=r"shard 0 was sealed with 30 tasks.*holds 50"):
        await Collector(_cfg(tmp_path, tasks, "--limit", "60", "--force"), open_backends=instant_backends,
                        install_signals=False).run()


async def test_manifest_totals_count_every_sealed_record_after_reruns(tmp_path):
    tasks = write_synthetic_tasks(tmp_path / "t.jsonl", 120)
    assert await Collector(_cfg(tmp_path, tasks), open_backends=instant_backends, install_signals=False).run() == 0
    first = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())["totals"]
    assert sum(first["records"].values()) == first["records_sealed"] > 0
    assert await Collector(_cfg(tmp_path, tasks), open_backends=instant_backends, install_signals=False).run() == 0
    again = orjson.loads((tmp_path / "out" / "manifest.json").read_bytes())["totals"]
    assert again["records"] == first["records"] and again["outcomes"] == first["outcomes"]


def test_manifest_scrubs_credentials_in_urls():
    from persd.engine.collect.manifest import scrub

    data = {"teacher": {"url": "https://user:sk-SECRET-1@api.example.com/v1"}, "other": ["sk-KNOWN here"]}
    clean = scrub(data, ["sk-KNOWN"])
    assert clean == {"teacher": {"url": "https://***@api.example.com/v1"}, "other": ["*** here"]}


async def test_a_bad_line_past_the_limit_is_never_read(tmp_path):
    tasks = write_synthetic_tasks(tmp_path / "t.jsonl", 5)
    with open(tasks, "ab") as fh:
        fh.write(b"{broken\n")
    assert await Collector(_cfg(tmp_path, tasks, "--limit", "5"), open_backends=instant_backends,
                           install_signals=False).run() == 0
    from persd.engine.collect.standin import StandinResponder

    assert len(StandinResponder(str(tasks), limit=5).references) == 5
