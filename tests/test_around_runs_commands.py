"""Failures around eval, train, loop, status and tiny-model runs: a directory in use, a directory that
belongs to another command, wrong model paths, conflicting flags, interrupts, a train rerun over an
earlier run. The real CLI in subprocesses (fast: each is refused or finishes in seconds)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers import write_doubling_tasks, write_jsonl
from persd.engine.runlock import is_locked, run_lock
from persd.runtime.errors import UsageError
from persd.runtime.local_server import FakeOpenAIServer
from persd.runtime.student.model_dir import model_dir_problem

REPO = Path(__file__).resolve().parents[1]
RIGHT = "    return x * 2\n"


def persd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persd", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def eval_args(tasks: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["eval", "--tasks", str(tasks), "--out", str(out), "--student-backend", "openai", "--student-url", url,
            "--student-model", "scripted", "--sandbox-workers", "1", "--progress", "none", *extra]


# ------------------------------------------------------------------ one run per directory


def test_the_lock_is_freed_when_its_holder_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from persd.engine.runlock import run_lock\n"
        f"with run_lock({str(tmp_path)!r}, 'collect'):\n"
        "    print('held', flush=True); sys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(tmp_path)
        with pytest.raises(UsageError, match="in use by another run .*pid"):
            with run_lock(tmp_path, "eval"):
                pass
        holder.kill()  # kill -9: the kernel releases the flock
        holder.wait()
        assert not is_locked(tmp_path)
        with run_lock(tmp_path, "eval"):
            assert is_locked(tmp_path)
    finally:
        holder.kill()


@pytest.mark.parametrize("command", ["eval", "train", "loop"])
def test_eval_train_and_loop_refuse_a_directory_in_use(tmp_path, command, tiny_model_dir):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    records = write_jsonl(tmp_path / "records.jsonl", [{"id": "a/persd", "task_id": "a", "format": "persd",
                                                        "prompt": "p", "completion": "c"}])
    out = tmp_path / "out"
    args = {"eval": eval_args(tasks, out, "http://127.0.0.1:9/v1"),
            "train": ["train", "--data", str(records), "--model", str(tiny_model_dir), "--out", str(out)],
            "loop": ["loop", "--rounds", "1", "--tasks", str(tasks), "--eval.tasks", str(tasks), "--out", str(out)]}
    with run_lock(out, command):
        res = persd(*args[command])
    assert res.returncode == 2, res.stderr
    assert "in use by another run" in res.stderr and "Traceback" not in res.stderr


async def test_eval_refuses_a_collect_directory_even_with_force(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    collect_dir = tmp_path / "collected"
    (collect_dir / "work").mkdir(parents=True)
    (collect_dir / "shards").mkdir()
    (collect_dir / "work" / "teacher.journal.jsonl").write_text("{}\n")
    (collect_dir / "manifest.json").write_text('{"fingerprint": {}}')
    async with FakeOpenAIServer(reply=lambda p, i: RIGHT) as server:
        res = await asyncio.to_thread(persd, *eval_args(tasks, collect_dir, server.url, "--force"))
    assert res.returncode == 2 and "persd collect" in res.stderr, res.stderr
    assert (collect_dir / "work" / "teacher.journal.jsonl").exists()


async def test_eval_out_file_conflicting_flags_and_greedy_samples(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    async with FakeOpenAIServer(reply=lambda p, i: RIGHT) as server:
        res = await asyncio.to_thread(persd, *eval_args(tasks, a_file, server.url))
        assert res.returncode == 2 and "not a directory" in res.stderr and "Traceback" not in res.stderr
        res = await asyncio.to_thread(persd, *eval_args(tasks, tmp_path / "o1", server.url, "--refine",
                                                       "--refine-steps", "3"))
        assert res.returncode == 2 and "--refine" in res.stderr and "--refine-steps 3" in res.stderr
        res = await asyncio.to_thread(persd, *eval_args(tasks, tmp_path / "o2", server.url, "--n", "2"))
        assert res.returncode == 0 and "identical samples" in res.stderr, res.stderr
    res = persd("eval", "--tasks", str(tasks), "--out", str(tmp_path / "o3"), "--student-backend", "hf",
                "--student-model", "x", "--student-url", "http://127.0.0.1:9/v1")
    assert res.returncode == 2 and "--student-url" in res.stderr and "openai" in res.stderr


async def test_eval_interrupted_says_how_to_resume(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    # a barrier never reached: the student holds every request, so the eval is mid-run when interrupted
    async with FakeOpenAIServer(reply=lambda p, i: RIGHT, barrier=1000, barrier_timeout_s=120) as server:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "persd", *eval_args(tasks, tmp_path / "o",
                                                                                              server.url),
                                                    cwd=REPO, stderr=asyncio.subprocess.PIPE)
        while server.in_flight == 0 and proc.returncode is None:
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        server._released.set()
    assert proc.returncode == 130, err.decode()
    assert "rerun the same command to resume" in err.decode()


# ------------------------------------------------------------------ model paths


def test_model_path_problems_name_the_reason(tmp_path, tiny_model_dir):
    assert model_dir_problem(str(tiny_model_dir)) is None
    assert "no such directory" in model_dir_problem(str(tmp_path / "nope"))
    assert model_dir_problem("bigcode/starcoder") is None  # a Hub id is left to the loader
    (tmp_path / "f").write_text("x")
    assert "not a directory" in model_dir_problem(str(tmp_path / "f"))
    (tmp_path / "empty").mkdir()
    assert "config.json" in model_dir_problem(str(tmp_path / "empty"))
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (run / "train.json").write_text("{}")
    assert f"{run / 'final'}" in model_dir_problem(str(run))
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    assert "weights" in model_dir_problem(str(half))
    (half / "model.safetensors").write_bytes(b"x")
    assert "tokenizer" in model_dir_problem(str(half))


def test_student_and_train_model_paths_are_checked_before_loading(tmp_path, tiny_model_dir):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    run = tmp_path / "train-run"
    (run / "final").mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        (run / "final" / f.name).write_bytes(f.read_bytes())
    (run / "train.json").write_text("{}")
    res = persd("eval", "--tasks", str(tasks), "--out", str(tmp_path / "o"), "--student-backend", "hf",
                "--student-model", str(run))
    assert res.returncode == 2 and "final" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "o" / "work" / "eval.json").exists()
    res = persd("train", "--data", str(tasks), "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "t"))
    assert res.returncode == 2 and "no such directory" in res.stderr and "Traceback" not in res.stderr


# ------------------------------------------------------------------ train over an earlier run


def test_train_never_starts_over_silently(tmp_path):
    from persd.trainers.cli import rerun_decision

    out = tmp_path / "run"
    out.mkdir()
    assert rerun_decision(out, resume=False, force=False) is False  # a new directory: a new run
    write_jsonl(out / "metrics.jsonl", [{"step": 1}, {"step": 2}])
    with pytest.raises(UsageError, match="--force"):  # interrupted before any checkpoint
        rerun_decision(out, resume=False, force=False)
    (out / "checkpoints" / "step-00000002").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-00000002")
    assert rerun_decision(out, resume=False, force=False) is True  # an interrupted run: resumed
    (out / "final").mkdir()
    (out / "final" / "config.json").write_text("{}")
    (out / "train.json").write_text("{}")
    with pytest.raises(UsageError, match="finished training run.*--force"):
        rerun_decision(out, resume=False, force=False)
    assert rerun_decision(out, resume=False, force=True) is False  # --force: start over, old files gone
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


# ------------------------------------------------------------------ loop checks before any stage


def test_loop_checks_tasks_and_stage_args_before_any_stage(tmp_path):
    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    bad = tmp_path / "bad-eval.jsonl"
    write_jsonl(bad, [{"task_id": "a", "instruction": "x", "tests": ["assert True"]}, b'{"task_id": "b", '])
    base = ["loop", "--rounds", "1", "--tasks", str(tasks), "--no-eval-base", "--progress", "none"]
    cases = [
        (["--eval.tasks", str(bad), "--out", str(tmp_path / "o1")], f"{bad}:2"),
        (["--eval.tasks", str(tasks), "--out", str(tmp_path / "o2"), "--train.lr", "fast"], "--train.lr"),
        (["--eval.tasks", str(tasks), "--out", str(tmp_path / "o3"), "--collect.no-such-flag", "1"],
         "--collect.no-such-flag"),
        (["--eval.tasks", str(tasks), "--out", str(tmp_path / "o4"), "--train-launcher", "torchrun '--x"],
         "--train-launcher"),
        (["--eval.tasks", str(tasks), "--out", str(tmp_path / "o5"), "--student-model", str(tmp_path)],
         "--student-model"),
    ]
    for extra, expected in cases:
        res = persd(*base, *extra)
        assert res.returncode == 2, res.stderr
        assert expected in res.stderr and "Traceback" not in res.stderr, res.stderr
        out = Path(extra[extra.index("--out") + 1])
        assert not list(out.glob("round-*")) and not (out / "commands.log").exists()


# ------------------------------------------------------------------ status and tiny-model


def test_status_exits_non_zero_on_an_unreadable_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    res = persd("status", str(tmp_path))
    assert res.returncode == 1 and "unreadable" in res.stdout


def test_tiny_model_refuses_to_overwrite(tmp_path):
    out = tmp_path / "m"
    assert persd("tiny-model", "--out", str(out)).returncode == 0
    before = (out / "config.json").read_bytes()
    res = persd("tiny-model", "--out", str(out), "--seed", "3")
    assert res.returncode == 2 and "--force" in res.stderr
    assert (out / "config.json").read_bytes() == before
    assert persd("tiny-model", "--out", str(out), "--seed", "3", "--force").returncode == 0


def test_train_reads_no_damaged_shard_through_the_cli(tmp_path, tiny_model_dir):
    """persd train names the damaged shard (exit 2) before loading anything heavy."""
    coll = tmp_path / "c"
    (coll / "shards").mkdir(parents=True)
    rec = {"id": "a/persd", "task_id": "a", "format": "persd", "prompt": "p", "completion": "c"}
    (coll / "shards" / "shard-00000.jsonl").write_bytes(orjson.dumps(rec) + b"\n")
    (coll / "shards" / "shard-00000.results.jsonl").write_bytes(b'{"task_id": "a"}\n')
    (coll / "manifest.json").write_text('{"fingerprint": {}}')
    seal = {"shard": 0, "tasks": 1, "records": {"file": "shard-00000.jsonl", "bytes": 999, "sha256": "0"},
            "results": {"file": "shard-00000.results.jsonl", "bytes": 17, "sha256": "0"}}
    (coll / "shards" / "shard-00000.seal.json").write_bytes(orjson.dumps(seal))
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    res = subprocess.run([sys.executable, "-m", "persd", "train", "--data", str(coll), "--model", str(tiny_model_dir),
                          "--out", str(tmp_path / "t"), "--max-steps", "1", "--seq-len", "64"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "shard-00000.jsonl" in res.stderr and "persd collect" in res.stderr and "Traceback" not in res.stderr


def test_status_tells_a_stopped_run_from_a_running_one(tmp_path):
    """A manifest left at "running" by a killed run: status says stopped (no process holds the lock)."""
    manifest = {"fingerprint": {}, "state": "running", "shards": [{"index": 0, "tasks": 2}],
                "partition": {"index": 0, "count": 1}, "totals": {"tasks": 2}}
    (tmp_path / "manifest.json").write_bytes(orjson.dumps(manifest))
    res = persd("status", str(tmp_path), "--json")
    assert orjson.loads(res.stdout)["partitions"][0]["state"] == "stopped"
    with run_lock(tmp_path, "collect"):
        res = persd("status", str(tmp_path), "--json")
    assert orjson.loads(res.stdout)["partitions"][0]["state"] == "running"


def test_train_on_an_unfinished_collection_says_so(tmp_path, capsys):
    from persd.trainers.data import record_files

    (tmp_path / "shards").mkdir()
    rec = {"id": "a/persd", "task_id": "a", "format": "persd", "prompt": "p", "completion": "c"}
    (tmp_path / "shards" / "shard-00000.jsonl").write_bytes(orjson.dumps(rec) + b"\n")
    (tmp_path / "shards" / "shard-00000.results.jsonl").write_bytes(b'{"task_id": "a"}\n')
    (tmp_path / "manifest.json").write_bytes(orjson.dumps({"fingerprint": {}, "shards": [{"index": 0}, {"index": 1}]}))
    assert len(record_files(tmp_path)) == 1
    assert "1 of 2 shards are sealed" in capsys.readouterr().err
