"""Failures around a `persd collect` run, not inside it: a second run on a directory in use, a sealed
shard damaged after the fact, a corrupted manifest, a start-up failure, wrong --out paths, teacher
options from the config file. The real CLI in subprocesses against the scripted servers of
test_collect_e2e (student and teacher on 127.0.0.1)."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
from persd.runtime.local_server import LocalOpenAIServer
from test_collect_e2e import REPO, SECRET, Env, request_key, shard_bytes

LIMIT = ("--limit", "16")  # two shards of 8


def persd(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["OPENAI_API_KEY"] = SECRET
    return subprocess.run([sys.executable, "-m", "persd", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


class Gate:
    """A teacher whose answers wait until the test opens the gate (the first run stays in flight)."""

    def __init__(self, respond):
        self.respond = respond
        self.seen = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, body: dict) -> str:
        self.seen.set()
        await self.open.wait()
        return self.respond(body)


async def test_a_second_run_on_a_directory_in_use_is_refused_and_nothing_is_paid_twice(tmp_path):
    async with Env(tmp_path) as env:
        gate = Gate(env.teacher.responder)
        env.teacher.responder = gate
        out = tmp_path / "out"
        first = asyncio.create_task(env.run(out, *LIMIT))
        await asyncio.wait_for(gate.seen.wait(), 120)  # the first run is paying the teacher now
        try:
            rc, so, se = await env.run(out, *LIMIT, timeout=60)
        finally:
            gate.open.set()
        assert rc == 2, se
        assert "in use by another run" in se and "Traceback" not in se
        rc1, _, se1 = await first
        assert rc1 == 0, se1
        keys = Counter(request_key(b) for b in env.teacher.received)
        assert keys and max(keys.values()) == 1  # every teacher request sent once
        results = [orjson.loads(x) for x in shard_bytes(out, ".results").splitlines()]
        assert len(results) == 16


async def test_partitions_sharing_a_directory_run_at_once(tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        runs = await asyncio.gather(*(env.run(out, *LIMIT, "--num-shards", "2", "--shard-index", str(i))
                                      for i in range(2)))
        for rc, _, se in runs:
            assert rc == 0, se
        assert len(shard_bytes(out, ".results").splitlines()) == 16


async def test_a_damaged_shard_is_reported_refused_by_train_and_rebuilt_without_new_work(tmp_path):
    from persd.runtime.errors import UsageError
    from persd.trainers.data import record_files

    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        rc, _, se = await env.run(out, *LIMIT)
        assert rc == 0, se
        good_records, good_results = shard_bytes(out), shard_bytes(out, ".results")
        seal = orjson.loads((out / "shards" / "shard-00000.seal.json").read_bytes())
        assert seal["records"]["bytes"] == (out / "shards" / "shard-00000.jsonl").stat().st_size
        manifest = orjson.loads((out / "manifest.json").read_bytes())
        assert manifest["shards"][0]["seal"]["records"]["sha256"] == seal["records"]["sha256"]

        for damage in ("truncate", "garbage"):
            rec = out / "shards" / "shard-00001.jsonl"
            data = rec.read_bytes()
            rec.write_bytes(data[: len(data) // 2] if damage == "truncate" else data + b"garbage\n")
            status = persd("status", str(out))
            assert status.returncode == 1, status.stdout
            assert "damaged" in status.stdout and "shard-00001.jsonl" in status.stdout
            try:
                record_files(out)
                raise AssertionError("train read a damaged shard")
            except UsageError as exc:
                assert "shard-00001.jsonl" in str(exc) and "persd collect" in str(exc)
            requests = len(env.teacher.received)
            env.ctl.student_seen = 0
            rc, so, se = await env.run(out, *LIMIT)
            assert rc == 0, se
            assert "damaged" in se and "rebuilt from its journal" in se
            assert len(env.teacher.received) == requests and env.ctl.student_seen == 0  # nothing redone
            assert shard_bytes(out) == good_records and shard_bytes(out, ".results") == good_results
            assert persd("status", str(out)).returncode == 0

        # with its journal gone a damaged shard cannot be rebuilt: refused, naming the file
        for kept in (out / "work" / "sealed").iterdir():
            kept.unlink()
        res = out / "shards" / "shard-00000.results.jsonl"
        res.write_bytes(res.read_bytes()[:-5])
        rc, _, se = await env.run(out, *LIMIT)
        assert rc == 2 and "shard-00000.results.jsonl" in se and "journal is gone" in se, se


async def test_a_corrupted_manifest_does_not_let_other_settings_through(tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        rc, _, se = await env.run(out, "--limit", "8")
        assert rc == 0, se
        (out / "manifest.json").write_bytes(b'{"fingerprint": {"tas')
        status = persd("status", str(out))
        assert status.returncode == 1
        rc, _, se = await env.run(out, "--limit", "8", "--refine-turns", "1")
        assert rc == 2 and "manifest.json" in se and "--force" in se and "Traceback" not in se, se
        rc, _, se = await env.run(out, "--limit", "8", "--refine-turns", "1", "--force")
        assert rc == 0, se


async def test_a_start_up_failure_does_not_tie_the_directory_to_its_settings(tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        not_a_model = tmp_path / "empty-model"
        not_a_model.mkdir()
        base = ["--tasks", str(env.tasks), "--out", str(out), "--limit", "8", "--teacher-url", env.teacher.base_url,
                "--teacher-model", "scripted-teacher", "--sandbox-workers", "1", "--progress", "none"]
        bad = persd("collect", *base, "--student-backend", "hf", "--student-model", str(not_a_model))
        assert bad.returncode == 2 and "--student-model" in bad.stderr and "config.json" in bad.stderr
        assert "Traceback" not in bad.stderr
        assert not list(out.glob("manifest*.json"))
        # the user fixes the flag (and changes a sampling setting): the run starts, nothing holds it back
        rc, so, se = await env.run(out, "--limit", "8", "--temperature", "0.7")
        assert rc == 0, se


async def test_teacher_options_from_flags_and_config_and_prices_for_unknown_models(tmp_path):
    async with Env(tmp_path) as env:
        out = tmp_path / "out"
        # --max-cost for a model outside the price table: refused before any work, naming the flags
        rc, _, se = await env.run(out, "--limit", "8", "--max-cost", "5")
        assert rc == 2 and "--price-in" in se and not env.teacher.received, se
        toml = tmp_path / "run.toml"
        toml.write_text('teacher-headroom = 0.9\nteacher-limit-window = 2.0\nteacher-jitter = 0.01\n'
                        'teacher-reconcile-tokens = false\nprices = {other-model = [1.0, 2.0]}\n'
                        'teacher-retries = 3\nteacher-retry-delay = 0.02\nteacher-max-retry-delay = 1.0\n'
                        'teacher-deadline = 60\nteacher-timeout = 30\n')
        rc, _, se = await env.run(out, "--limit", "8", "--max-cost", "5", "--price-in", "0.5", "--price-out", "1.5",
                                  "--config", str(toml))
        assert rc == 0, se
        cfg = orjson.loads((out / "manifest.json").read_bytes())["config"]
        assert cfg["teacher_headroom"] == 0.9 and cfg["teacher_timeout"] == 30 and cfg["teacher_deadline"] == 60
        assert cfg["teacher_retries"] == 4  # the command line (Env passes --teacher-retries 4) wins over the file
        assert cfg["prices"] == {"other-model": [1.0, 2.0]} and cfg["price_in"] == 0.5
        metrics = orjson.loads((out / "metrics.json").read_bytes())
        assert metrics["teacher"]["cost_usd"] > 0  # priced by --price-in/--price-out


async def test_a_teacher_that_never_answers_times_out_and_shows_in_flight(tmp_path):
    hung = asyncio.Event()

    async def never(body: dict) -> str:
        await hung.wait()
        return ""

    async with Env(tmp_path) as env, LocalOpenAIServer(never) as silent:
        out = tmp_path / "out"
        args = [a for a in env.args(out, "--limit", "8", "--teacher-timeout", "1", "--teacher-retries", "1",
                                    "--log-every", "0.2")]
        args[args.index(env.teacher.base_url)] = silent.base_url
        res = await asyncio.to_thread(persd, "collect", *args)
        hung.set()
        assert res.returncode == 1, res.stderr
        assert "timeout" in res.stderr.lower() and "rerun the same command to resume" in res.stderr
        assert "in flight" in res.stdout


def test_wrong_out_paths_are_one_line_each(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    from helpers import write_doubling_tasks

    write_doubling_tasks(tasks, 2)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    res = persd("collect", "--tasks", str(tasks), "--out", str(a_file))
    assert res.returncode == 2 and "not a directory" in res.stderr and "disk" not in res.stderr, res.stderr
    res = persd("check", "--tasks", str(tasks), "--references", "--out", str(tmp_path))
    assert res.returncode == 2 and "is a directory" in res.stderr and "Traceback" not in res.stderr
    res = persd("check", "--tasks", str(tasks), "--references", "--out", str(a_file / "r.jsonl"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    res = persd("check", "--tasks", str(tasks), "--references", "--out", str(tmp_path / "sub" / "r.jsonl"),
                "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["r.jsonl"]
    assert not list(tmp_path.glob("*.tmp")) and not list((tmp_path / "sub").glob("*.tmp"))


def test_progress_none_still_prints_the_summary_and_status_names_the_stand_in(tmp_path):
    from helpers import write_doubling_tasks

    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    out = tmp_path / "out"
    res = persd("collect", "--tasks", str(tasks), "--out", str(out), "--progress", "none", "--sandbox-workers", "1",
                "--max-tokens", "8", "--student-backend", "hf")
    assert res.returncode == 0, res.stderr
    assert "persd collect" in res.stdout and "tasks (this partition)" in res.stdout
    status = persd("status", str(out), "--json")
    assert status.returncode == 0 and orjson.loads(status.stdout)["partitions"][0]["offline_stand_in"] is True
    assert "stand-in" in persd("status", str(out)).stdout
