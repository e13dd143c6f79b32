"""persd train end to end on CPU: real DeepSpeed (gloo), the tiny model, one and two processes.

One reference run (ZeRO-2, micro-batch 2, one process) is compared with runs that must
compute the same optimizer steps: gradient accumulation (1 x 2), ZeRO-3 with gradient
checkpointing, two processes under torchrun (ZeRO-2 and ZeRO-3), and runs resumed from
a checkpoint. Same steps, same data, so the loss curves must agree.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "data" / "persdistill-codegen6b"
STEPS = 8
COMMON = ["--seq-len", "256", "--epochs", "3", "--max-steps", str(STEPS), "--lr", "2e-3", "--warmup-steps", "2",
          "--schedule", "cosine", "--seed", "3", "--log-every", "1"]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """40 of the paper's records (20 tasks, two formats), or synthetic ones where the data is absent."""
    out = tmp_path_factory.mktemp("records") / "records.jsonl"
    rows = []
    if PAPER.is_dir():
        for name in ("persd.jsonl", "refine-gold.jsonl"):
            with (PAPER / name).open() as fh:
                rows += [json.loads(next(fh)) for _ in range(20)]
    else:
        rows = [{"id": f"t{i}/{fmt}", "task_id": f"t{i}", "format": fmt, "prompt": f"def f{i}(x):\n",
                 "completion": f"    return x * {i} + {i % 7}\n"} for i in range(20) for fmt in ("persd", "inpd")]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def run_train(out: Path, model: Path, data: Path, *extra: str, procs: int = 1) -> list[dict]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd = (launcher if procs > 1 else [sys.executable]) + ["-m", "persd", "train", "--data", str(data),
                                                           "--model", str(model), "--out", str(out), *COMMON, *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return metrics(out)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]


def losses(rows: list[dict]) -> list[float]:
    return [r["loss"] for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, records):
    out = tmp_path_factory.mktemp("ref")
    return out, run_train(out, tiny_model_dir, records, "--deepspeed", "zero2", "--micro-batch", "2",
                          "--grad-accum", "1", "--save-every", "4")


def test_loss_decreases_and_metrics_are_logged(reference):
    out, rows = reference
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s"} <= set(r) and r["tokens"] > 0 and r["tokens_per_s"] > 0
    assert rows[0]["lr"] == pytest.approx(1e-3) and rows[1]["lr"] == pytest.approx(2e-3)  # warmup, then cosine
    assert rows[-1]["lr"] < rows[2]["lr"]
    first, last = rows[0]["loss"], sum(losses(rows)[-3:]) / 3
    assert last < first - 0.1, losses(rows)
    summary = json.loads((out / "train.json").read_text())
    assert summary["export"]["tensors"] > 0 and summary["steps"] == STEPS


def test_export_is_complete_and_generates(reference, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persd.trainers.export import verify_export

    final = reference[0] / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in final.iterdir()}
    verify_export(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for (n, a), b in zip(model.state_dict().items(), before.state_dict().values()) if not torch.equal(a, b)]
    assert changed  # trained weights, not the starting ones
    ids = tok("def add(a, b):\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, tiny_model_dir, records, reference):
    # the same two rows per step, as 1 micro-batch of 2 or 2 accumulated micro-batches of 1: the loss is
    # normalised by the window's target tokens, so both give the same steps
    rows = run_train(tmp_path / "ga", tiny_model_dir, records, "--deepspeed", "zero2", "--micro-batch", "1",
                     "--grad-accum", "2")
    assert losses(rows) == pytest.approx(losses(reference[1]), rel=1e-4)


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_model_dir, records, reference):
    ref_out, ref_rows = reference
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_out / "checkpoints" / "step-00000004", out / "checkpoints" / "step-00000004")
    (out / "checkpoints" / "latest").write_text("step-00000004")
    # the log of the interrupted run reached step 6 before it died: those lines are replaced
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref_rows[:6]))
    rows = run_train(out, tiny_model_dir, records, "--deepspeed", "zero2", "--micro-batch", "2", "--grad-accum", "1",
                     "--save-every", "4", "--resume")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert losses(rows[4:]) == pytest.approx(losses(ref_rows[4:]), rel=1e-5)
    assert [r["lr"] for r in rows[4:]] == pytest.approx([r["lr"] for r in ref_rows[4:]])


def test_resume_with_different_settings_is_refused(tmp_path, tiny_model_dir, records, reference):
    out = tmp_path / "other"
    shutil.copytree(reference[0] / "checkpoints", out / "checkpoints")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "persd", "train", "--data", str(records), "--model",
                           str(tiny_model_dir), "--out", str(out), *COMMON, "--micro-batch", "2", "--lr", "1e-3",
                           "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "different settings" in proc.stderr and "lr" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, tiny_model_dir, records):
    out = tmp_path_factory.mktemp("zero3")
    return out, run_train(out, tiny_model_dir, records, "--deepspeed", "zero3", "--gradient-checkpointing",
                          "--micro-batch", "2", "--grad-accum", "1", "--save-every", "4")


def test_zero3_with_checkpointing_matches_zero2(zero3, reference):
    from safetensors.torch import load_file

    from persd.trainers.export import verify_export

    assert losses(zero3[1]) == pytest.approx(losses(reference[1]), rel=1e-4)
    verify_export(zero3[0] / "final")  # no empty ZeRO-3 partitions in the export
    a = load_file(zero3[0] / "final" / "model.safetensors")
    b = load_file(reference[0] / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


def test_zero3_resume(tmp_path, tiny_model_dir, records, zero3):
    out = tmp_path / "z3resumed"
    shutil.copytree(zero3[0] / "checkpoints", out / "checkpoints")
    rows = run_train(out, tiny_model_dir, records, "--deepspeed", "zero3", "--gradient-checkpointing",
                     "--micro-batch", "2", "--grad-accum", "1", "--save-every", "4", "--resume")
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1))
    assert losses(rows) == pytest.approx(losses(zero3[1][4:]), rel=1e-5)


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_processes_match_one(tmp_path, tiny_model_dir, records, reference, stage):
    # two ranks of micro-batch 1 see the same two rows per step as one rank of micro-batch 2
    out = tmp_path / f"2proc-{stage}"
    rows = run_train(out, tiny_model_dir, records, "--deepspeed", stage, "--micro-batch", "1", "--grad-accum", "1",
                     procs=2)
    assert losses(rows) == pytest.approx(losses(reference[1]), rel=1e-4)
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["export"]["tensors"] > 0


def test_zero3_cpu_offload_matches_zero2(tmp_path, tiny_model_dir, records, reference):
    # the shipped offload config, here with torch AdamW (DeepSpeedCPUAdam, its GPU-cluster default,
    # is compiled on first use and is left out of CI)
    out = tmp_path / "offload"
    rows = run_train(out, tiny_model_dir, records, "--deepspeed", "zero3-offload", "--optimizer", "adamw",
                     "--micro-batch", "2", "--grad-accum", "1")
    assert losses(rows) == pytest.approx(losses(reference[1]), rel=1e-4)


def test_sigint_checkpoints_the_last_step_then_resume_finishes(tmp_path, tiny_model_dir, records):
    """Ctrl-C (or a scheduler's SIGTERM) mid-run: exit 130 with a checkpoint and a --resume hint;
    rerunning with --resume finishes, and the log has every step once."""
    out = tmp_path / "interrupted"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    args = [sys.executable, "-m", "persd", "train", "--data", str(records), "--model", str(tiny_model_dir),
            "--out", str(out), "--seq-len", "256", "--epochs", "6", "--lr", "2e-3", "--seed", "3", "--log-every", "1"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # wait (on the pipe, no sleeping) until a few steps are logged
        seen.append(line)
        if (out / "metrics.jsonl").exists() and len(metrics(out)) >= 3:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, "".join(seen)[-2000:] + rest[-3000:]
    assert "--resume" in rest and "Traceback" not in rest
    done = len(metrics(out))
    total = metrics(out)[0]["total_steps"]
    assert 3 <= done < total and any((out / "checkpoints").iterdir())
    resumed = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, total + 1)) and (out / "final" / "config.json").exists()
