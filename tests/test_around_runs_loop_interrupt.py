"""Ctrl-C during `persd loop`'s training stage, as a terminal sends it (SIGINT to the whole process
group): the stage stops at its own safe point (train checkpoints the last finished step), the loop
waits for it and exits 130 with the resume line, and the rerun trains on from that checkpoint.
The real loop on the tiny model, on the CPU (slow: a collect, a DeepSpeed start-up, a resume)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import doubling_task, read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def loop_cmd(tmp: Path) -> list[str]:
    return [sys.executable, "-m", "persd", "loop", "--rounds", "1", "--tasks", str(tmp / "tasks.jsonl"),
            "--eval.tasks", str(tmp / "eval.jsonl"), "--out", str(tmp / "run"), "--no-eval-base",
            "--collect.max-tokens", "16", "--train.epochs", "60", "--train.max-steps", "60", "--train.seq-len", "128",
            "--eval.max-tokens", "16", "--sandbox-workers", "1", "--progress", "none",
            "--train.grad-accum", "1", "--train.save-every", "0", "--train.warmup-steps", "0"]


def metrics_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_bytes().splitlines() if line.strip())
    except OSError:
        return 0


def test_ctrl_c_in_the_training_stage_checkpoints_then_the_rerun_resumes(tmp_path):
    write_jsonl(tmp_path / "tasks.jsonl", (doubling_task(i, n, f"{n}/{i}") for i, n in enumerate(["dbl", "twice"])))
    write_jsonl(tmp_path / "eval.jsonl", [doubling_task(0, "ev", "ev/0")])
    train = tmp_path / "run" / "round-1" / "train"
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    with open(tmp_path / "err1", "wb") as err:
        # its own session: the group signal below stands for a terminal's Ctrl-C
        proc = subprocess.Popen(loop_cmd(tmp_path), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while metrics_lines(train / "metrics.jsonl") < 3:  # wait for a condition: training is under way
                assert proc.poll() is None, (tmp_path / "err1").read_text()[-3000:]
                assert time.monotonic() < deadline, "training never started"
                time.sleep(0.1)
            os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stderr = (tmp_path / "err1").read_text()
    assert rc == 130, stderr[-3000:]
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    steps_done = metrics_lines(train / "metrics.jsonl")
    tags = sorted(p.name for p in (train / "checkpoints").glob("step-*"))
    assert tags, stderr[-3000:]  # the last finished step was checkpointed
    saved = int(tags[-1].split("-")[1])
    assert saved >= 3 and saved <= steps_done

    again = subprocess.run(loop_cmd(tmp_path), cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"next step {saved + 1}" in again.stderr  # resumed where it stopped, not from step 1
    steps = [row["step"] for row in read_jsonl(train / "metrics.jsonl")]
    assert steps == list(range(1, 61))
    assert orjson.loads((train / "train.json").read_bytes())["resumed_at"] == saved
