"""`persd loop` end to end on the tiny model with collect's offline stand-in teacher: two rounds of
collect -> train -> eval, added one round at a time (a rerun with a larger --rounds), then resumed.
The stage commands are the real ones, run as child processes, on the CPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import tomllib
from helpers import doubling_task, read_jsonl, write_jsonl
from persd.engine.rounds import Loop, LoopConfig, collect_results

pytestmark = [pytest.mark.e2e, pytest.mark.deepspeed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def write_tasks(path: Path, names: list[str]) -> Path:
    """Task i: {names[i]}_i(x) = 2x, id {names[i]}/i."""
    return write_jsonl(path, (doubling_task(i, name, f"{name}/{i}", f"{name} {i}") for i, name in enumerate(names)))


def loop(tmp: Path, rounds: int, *extra: str) -> subprocess.CompletedProcess:
    args = ["--rounds", str(rounds), "--tasks", str(tmp / "tasks.jsonl"), "--eval.tasks", str(tmp / "eval.jsonl"),
            "--out", str(tmp / "run"), "--no-eval-base", "--collect.max-tokens", "16", "--train.max-steps", "1",
            "--train.seq-len", "128", "--eval.n", "2", "--eval.temperature", "0.8", "--eval.max-tokens", "16",
            "--eval.refine-steps", "1", "--sandbox-workers", "1", "--progress", "none", *extra]
    return subprocess.run([sys.executable, "-m", "persd", "loop", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    write_tasks(tmp / "tasks.jsonl", ["dbl", "twice"])
    write_tasks(tmp / "eval.jsonl", ["ev"])
    first = loop(tmp, 1)
    assert first.returncode == 0, first.stderr[-3000:]
    second = loop(tmp, 2)  # adds round 2; round 1 is not redone
    assert second.returncode == 0, second.stderr[-3000:]
    return tmp, first, second


def test_two_rounds_end_to_end(two_rounds):
    tmp, first, second = two_rounds
    run = tmp / "run"
    base = run / "base-model"
    ckpt1, ckpt2 = run / "round-1" / "train" / "final", run / "round-2" / "train" / "final"
    # round 1: the tiny student fails, the stand-in teacher's refinements become records, training makes ckpt1
    res1 = read_jsonl(next((run / "round-1" / "collect" / "shards").glob("*.results.jsonl")))
    assert [r["outcome"] for r in res1] == ["refined", "refined"]
    m1 = orjson.loads((run / "round-1" / "collect" / "manifest.json").read_bytes())
    assert m1["state"] == "done" and m1["config"]["student_model"] == str(base)
    assert (ckpt1 / "config.json").is_file() and (ckpt2 / "config.json").is_file()
    # round 2: the tasks round 1's student did not solve, attempted by round 1's checkpoint
    assert [t["task_id"] for t in read_jsonl(run / "round-2" / "tasks.jsonl")] == ["dbl/0", "twice/1"]
    m2 = orjson.loads((run / "round-2" / "collect" / "manifest.json").read_bytes())
    assert m2["state"] == "done" and m2["config"]["student_model"] == str(ckpt1)
    # training on every round's records so far, ids unique across rounds, from the base model
    data = read_jsonl(run / "round-2" / "train-data.jsonl")
    assert len(data) == 8 and len({r["id"] for r in data}) == 8
    assert {r["meta"]["round"] for r in data} == {1, 2} and all(r["id"].startswith("round-") for r in data)
    assert {r["format"] for r in data} == {"persd", "persd-refine"}
    train2 = orjson.loads((run / "round-2" / "train" / "train.json").read_bytes())
    assert train2["config"]["model"] == str(base)
    # each round evaluated its own checkpoint, with refine-inference
    for r, ckpt in ((1, ckpt1), (2, ckpt2)):
        summary = orjson.loads((run / f"round-{r}" / "eval" / "summary.json").read_bytes())
        assert summary["protocol"]["student_model"] == str(ckpt) and summary["tasks"] == 1 and summary["n"] == 2
        assert [s["step"] for s in summary["steps"]] == [0, 1]
        assert len(read_jsonl(run / f"round-{r}" / "eval" / "results.jsonl")) == 4
    # the final table and the loop's summary
    assert "persd loop" in second.stdout and "pass@1" in second.stdout
    rows = orjson.loads((run / "summary.json").read_bytes())["rounds"]
    assert [r["round"] for r in rows] == [1, 2]
    assert [r["records"] for r in rows] == [4, 4] and [r["train_records"] for r in rows] == [4, 8]
    assert all(r["eval"]["pass@1"] is not None for r in rows)
    assert "round 1: collect: done already" in second.stderr and "round 1: train: done already" in second.stderr
    commands = (run / "commands.log").read_text()
    assert commands.count(" collect ") == 2 and commands.count(" train ") == 2 and commands.count(" eval ") == 2
    # each stage ran on its own config file: round-R/STAGE.toml, the loop's sections plus what the loop sets
    assert commands.count(" --config ") == 6
    collect1 = tomllib.loads((run / "round-1" / "collect.toml").read_text())
    assert (collect1["max_tokens"], collect1["student"]["model"], collect1["sandbox"]["workers"]) == (16, str(base), 1)
    train2 = tomllib.loads((run / "round-2" / "train.toml").read_text())
    assert (train2["max_steps"], train2["seq_len"], train2["model"]) == (1, 128, str(base))
    eval2 = tomllib.loads((run / "round-2" / "eval.toml").read_text())
    assert (eval2["n"], eval2["temperature"], eval2["refine_steps"]) == (2, 0.8, 1)
    assert eval2["student"]["model"] == str(ckpt2)


def test_rerun_resumes_at_the_interrupted_stage(two_rounds):
    tmp, _, _ = two_rounds
    run = tmp / "run"
    before = (run / "commands.log").read_text()
    results = (run / "round-2" / "eval" / "results.jsonl").read_bytes()
    (run / "round-2" / "eval" / "summary.json").unlink()  # as if stopped before the eval finished writing
    again = loop(tmp, 2)
    assert again.returncode == 0, again.stderr[-3000:]
    added = (run / "commands.log").read_text()[len(before):]
    assert added.count(" -m persd ") == 1 and " eval " in added  # only round 2's eval ran again
    assert "resuming" in again.stderr  # ... and it regenerated nothing
    assert (run / "round-2" / "eval" / "results.jsonl").read_bytes() == results
    changed = loop(tmp, 2, "--train.lr", "0.5")
    assert changed.returncode == 2 and "--train.lr: was None, now 0.5" in changed.stderr


def test_later_rounds_attempt_only_unsolved_tasks(tmp_path):
    """Round 2's task file leaves out what round 1's student passed (read from its sealed results)."""
    tasks = write_tasks(tmp_path / "tasks.jsonl", ["a", "b", "c", "d"])
    shards = tmp_path / "run" / "round-1" / "collect" / "shards"
    shards.mkdir(parents=True)
    outcomes = ["student_passed", "refined", "unresolved", "student_passed"]
    shards.joinpath("shard-00000.results.jsonl").write_bytes(b"".join(
        orjson.dumps({"task_id": t, "outcome": o}) + b"\n" for t, o in zip(["a/0", "b/1", "c/2", "d/3"], outcomes)))
    lp = Loop(LoopConfig(rounds=2, tasks=str(tasks), eval={"tasks": str(tasks)}, out=str(tmp_path / "run")))
    path = lp.round_tasks(2)
    assert [t["task_id"] for t in read_jsonl(path)] == ["b/1", "c/2"]
    assert read_jsonl(path)[0] == read_jsonl(tasks)[1]  # the original lines, unchanged


def test_later_rounds_name_dataset_rows_by_the_collect_stages_task_fields(tmp_path):
    """A parquet source whose id lives in another column (--collect.task-fields task_id=id): round 1's count
    and round 2's unsolved tasks read the ids as the collect stage does, not from a task_id column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"p/{i}", "statement": "Add.", "tests": {"inputs": ["1 2\n"], "outputs": ["3\n"]}}
            for i in range(3)]
    src = tmp_path / "tasks.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    shards = tmp_path / "run" / "round-1" / "collect" / "shards"
    shards.mkdir(parents=True)
    shards.joinpath("shard-00000.results.jsonl").write_bytes(b"".join(
        orjson.dumps({"task_id": t, "outcome": o}) + b"\n"
        for t, o in [("p/0", "refined"), ("p/1", "student_passed"), ("p/2", "unresolved")]))
    fields = {"task_fields": "task_id=id,instruction=statement,stdio_tests=tests"}
    lp = Loop(LoopConfig(rounds=2, tasks=str(src), collect=fields, eval={"tasks": str(src)},
                         out=str(tmp_path / "run")))
    assert lp.round_one_count() == 3
    path = lp.round_tasks(2)
    assert [t["id"] for t in read_jsonl(path)] == ["p/0", "p/2"]


def test_loops_collect_stage_in_batch_mode_on_a_mapped_parquet(tmp_path):
    """The loop's collect stage with --collect.teacher.mode batch and --collect.task-fields on a parquet
    source: the stage's TOML carries both, the real `persd collect` child runs through the stand-in's Batch
    API, and every task gets its result line under the source's own ids."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"p/{i}", **{k: v for k, v in doubling_task(i).items() if k != "task_id"}} for i in range(4)]
    src = tmp_path / "tasks.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    fields = "task_id=id"
    lp = Loop(LoopConfig(rounds=1, tasks=str(src), out=str(tmp_path / "run"), sandbox_workers=1,
                         collect={"task_fields": fields, "max_tokens": 16, "teacher": {"mode": "batch"}},
                         eval={"tasks": str(src), "task_fields": fields}, progress="none"))
    lp.prepare()  # checks every row of both sources through their --task-fields
    lp.stage_collect(1, lp.round_tasks(1), lp.base_model)
    stage = tomllib.loads(lp.lay.stage_config(1, "collect").read_text())
    assert (stage["teacher"]["mode"], stage["task_fields"]) == ("batch", fields)
    out = lp.lay.collect(1)
    results = collect_results(out)
    assert sorted(r["task_id"] for r in results) == [f"p/{i}" for i in range(4)]
    teacher = orjson.loads((out / "metrics.json").read_bytes())["teacher"]
    failed = sum(r["outcome"] != "student_passed" for r in results)  # the tiny random student fails them
    assert failed
    assert (teacher["mode"], teacher["batch_submitted"], teacher["requests"]) == ("batch", failed, failed)
    from persd.runtime.teacher.batch import read_batches

    batches = read_batches(out / "work" / "teacher.journal.batches.jsonl")
    assert sum(b.requests for b in batches) == failed and all(b.ended for b in batches)
