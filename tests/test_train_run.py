"""persd train end to end on CPU: real DeepSpeed (gloo), the tiny model, one and two processes.

One reference run (ZeRO-2, micro-batch 2, one process) is compared with runs that must
compute the same optimizer steps: gradient accumulation (1 x 2), ZeRO-3 with gradient
checkpointing, two processes under torchrun (ZeRO-2 and ZeRO-3), and runs resumed from
a checkpoint. Same steps, same data, so the loss curves must agree (assert_same_steps says
how closely, and why that holds on any CPU).
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
from helpers import PERSDISTILL_FIXTURE

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
SEQ_LEN, EPOCHS, SEED = 256, 3, 3
COMMON = ["--seq-len", str(SEQ_LEN), "--epochs", str(EPOCHS), "--max-steps", str(MAX_STEPS), "--lr", "2e-3",
          "--warmup-steps", "2", "--schedule", "cosine", "--seed", str(SEED), "--log-every", "1"]
# a guard against a hung run, not a speed requirement: a loaded 2-core machine can take minutes per run
HANG_S = 1800


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """40 of the paper's records (20 tasks, two formats) from the repository's fixture."""
    out = tmp_path_factory.mktemp("records") / "records.jsonl"
    rows = []
    for name in ("persd.jsonl", "refine-gold.jsonl"):
        with (PERSDISTILL_FIXTURE / name).open() as fh:
            rows += [json.loads(next(fh)) for _ in range(20)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def steps(records, tiny_model_dir) -> int:
    """Optimizer steps of the micro-batch-2 runs, from the data: every run compared here packs the same
    rows into each step (2 sequences), so they all plan this many steps."""
    from persd.trainers.data import load_records
    from persd.trainers.encode import encode_records
    from persd.trainers.packing import plan_epoch
    from transformers import AutoTokenizer

    recs, _ = load_records([str(records)])
    examples, _ = encode_records(recs, AutoTokenizer.from_pretrained(tiny_model_dir), SEQ_LEN)
    lengths = [len(e) for e in examples]
    planned = sum(len(plan_epoch(lengths, seq_len=SEQ_LEN, micro_batch=2, batching="pack", seed=SEED, epoch=e))
                  for e in range(EPOCHS))
    n = min(MAX_STEPS, planned)
    assert n >= 6, f"the records give only {planned} steps: the resume tests need a checkpoint at 4 and steps after it"
    return n


def assert_same_steps(rows: list[dict], ref: list[dict]) -> None:
    """Two runs that compute the same optimizer steps: the same losses and gradient norms, up to
    float32 rounding, with bounds measured on two kinds of CPU kernels and ten times wider.

    Step 1 is one forward and backward from the same weights on the same rows: ZeRO-3 gathers,
    partitions and reduces in another order than ZeRO-2, and two ranks add two partial gradients.
    With AVX-512 kernels the runs agree to 1e-7. Where oneDNN runs its AVX2 kernels (measured with
    ONEDNN_MAX_CPU_ISA=AVX2, which moves ZeRO-3 and leaves ZeRO-2 as it was) ZeRO-3's step-1 loss
    is 1.1e-5 away and its gradient norm 1.1e-4 (two ranks): bounds 1e-4 and 1e-3. A wrong scale
    (checked: DeepSpeed's own 1/grad_accum on top of ours, or a missing world-size factor) halves
    the gradient norm; Adam's updates barely change with the scale, so the losses would not show it.
    After step 1 the gap grows: Adam's first updates are about lr * sign(gradient), so an element that
    rounding moves across zero takes a full step the other way. By step 8 the losses are 1e-7 apart
    with AVX-512 and 1.6e-4 with the AVX2 kernels (1.5e-4 on the machine of issue 18, where the old
    bound of 1e-4 failed): bound 2e-3. Weights that a step never reached (checked: ZeRO-3 not copying
    the updated partition back into the model) move the loss by 6e-3 at step 2 and 8% by step 8.
    """
    assert [r["step"] for r in rows] == [r["step"] for r in ref]
    first, first_ref = rows[0], ref[0]
    assert first["loss"] == pytest.approx(first_ref["loss"], rel=1e-4, abs=0)
    assert first["grad_norm"] == pytest.approx(first_ref["grad_norm"], rel=1e-3, abs=0)
    assert losses(rows) == pytest.approx(losses(ref), rel=2e-3, abs=0)


def assert_same_weights(out: Path, ref_out: Path, start: Path) -> None:
    """The exported weights agree, compared with how far training moved them: the distance between
    the runs is 1.7% of the distance travelled with the AVX2 kernels (3e-6 with AVX-512); a run whose
    weights were never updated is 100% away."""
    from safetensors.torch import load_file

    a, b = (load_file(p / "final" / "model.safetensors") for p in (out, ref_out))
    w0 = load_file(start / "model.safetensors")
    assert a.keys() == b.keys()
    apart = sum(float((a[k].double() - b[k].double()).square().sum()) for k in a) ** 0.5
    moved = sum(float((b[k].double() - w0[k].double()).square().sum()) for k in b) ** 0.5
    assert moved > 0 and apart < 0.2 * moved, (apart, moved)


def run_train(out: Path, model: Path, data: Path, *extra: str, procs: int = 1) -> list[dict]:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    cmd = (launcher if procs > 1 else [sys.executable]) + ["-m", "persd", "train", "--data", str(data),
                                                           "--model", str(model), "--out", str(out), *COMMON, *extra]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_S)
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


def test_loss_decreases_and_metrics_are_logged(reference, steps):
    out, rows = reference
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert {"step", "loss", "lr", "tokens", "tokens_per_s"} <= set(r) and r["tokens"] > 0 and r["tokens_per_s"] > 0
    assert rows[0]["lr"] == pytest.approx(1e-3) and rows[1]["lr"] == pytest.approx(2e-3)  # warmup, then cosine
    assert rows[-1]["lr"] < rows[2]["lr"]
    first, last = rows[0]["loss"], sum(losses(rows)[-3:]) / 3
    assert last < first - 0.1, losses(rows)
    summary = json.loads((out / "train.json").read_text())
    assert summary["export"]["tensors"] > 0 and summary["steps"] == steps


def test_export_is_complete_and_generates(reference, tiny_model_dir):
    from persd.trainers.export import verify_export
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = reference[0] / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in final.iterdir()}
    verify_export(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for (n, a), b in zip(model.state_dict().items(), before.state_dict().values())
               if not torch.equal(a, b)]
    assert changed  # trained weights, not the starting ones
    ids = tok("def add(a, b):\n", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 8


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, tiny_model_dir, records, reference):
    # the same two rows per step, as 1 micro-batch of 2 or 2 accumulated micro-batches of 1: the loss is
    # normalised by the window's target tokens, so both give the same steps
    rows = run_train(tmp_path / "ga", tiny_model_dir, records, "--deepspeed", "zero2", "--micro-batch", "1",
                     "--grad-accum", "2")
    assert_same_steps(rows, reference[1])


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_model_dir, records, reference, steps):
    ref_out, ref_rows = reference
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_out / "checkpoints" / "step-00000004", out / "checkpoints" / "step-00000004")
    (out / "checkpoints" / "latest").write_text("step-00000004")
    # the log of the interrupted run reached step 6 before it died: those lines are replaced
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref_rows[:6]))
    rows = run_train(out, tiny_model_dir, records, "--deepspeed", "zero2", "--micro-batch", "2", "--grad-accum", "1",
                     "--save-every", "4", "--resume")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert_same_steps(rows[4:], ref_rows[4:])
    assert [r["lr"] for r in rows[4:]] == pytest.approx([r["lr"] for r in ref_rows[4:]])


def test_resume_with_different_settings_is_refused(tmp_path, tiny_model_dir, records, reference):
    out = tmp_path / "other"
    shutil.copytree(reference[0] / "checkpoints", out / "checkpoints")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "persd", "train", "--data", str(records), "--model",
                           str(tiny_model_dir), "--out", str(out), *COMMON, "--micro-batch", "2", "--lr", "1e-3",
                           "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 2 and "different settings" in proc.stderr and "lr" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, tiny_model_dir, records):
    out = tmp_path_factory.mktemp("zero3")
    return out, run_train(out, tiny_model_dir, records, "--deepspeed", "zero3", "--gradient-checkpointing",
                          "--micro-batch", "2", "--grad-accum", "1", "--save-every", "4")


def test_zero3_with_checkpointing_matches_zero2(zero3, reference, tiny_model_dir):
    from persd.trainers.export import verify_export

    assert_same_steps(zero3[1], reference[1])
    verify_export(zero3[0] / "final")  # no empty ZeRO-3 partitions in the export
    assert_same_weights(zero3[0], reference[0], tiny_model_dir)


def test_zero3_resume(tmp_path, tiny_model_dir, records, zero3, steps):
    out = tmp_path / "z3resumed"
    shutil.copytree(zero3[0] / "checkpoints", out / "checkpoints")
    rows = run_train(out, tiny_model_dir, records, "--deepspeed", "zero3", "--gradient-checkpointing",
                     "--micro-batch", "2", "--grad-accum", "1", "--save-every", "4", "--resume")
    assert [r["step"] for r in rows] == list(range(5, steps + 1))
    assert_same_steps(rows, zero3[1][4:])


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_processes_match_one(tmp_path, tiny_model_dir, records, reference, stage):
    # two ranks of micro-batch 1 see the same two rows per step as one rank of micro-batch 2
    out = tmp_path / f"2proc-{stage}"
    rows = run_train(out, tiny_model_dir, records, "--deepspeed", stage, "--micro-batch", "1", "--grad-accum", "1",
                     procs=2)
    assert_same_steps(rows, reference[1])
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["export"]["tensors"] > 0


def test_zero3_cpu_offload_matches_zero2(tmp_path, tiny_model_dir, records, reference):
    # the shipped offload config, here with torch AdamW (DeepSpeedCPUAdam, its GPU-cluster default,
    # is compiled on first use and is left out of CI)
    out = tmp_path / "offload"
    rows = run_train(out, tiny_model_dir, records, "--deepspeed", "zero3-offload", "--optimizer", "adamw",
                     "--micro-batch", "2", "--grad-accum", "1")
    assert_same_steps(rows, reference[1])


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
    rest = proc.communicate(timeout=HANG_S)[0]
    assert proc.returncode == 130, "".join(seen)[-2000:] + rest[-3000:]
    assert "--resume" in rest and "Traceback" not in rest
    done = len(metrics(out))
    total = metrics(out)[0]["total_steps"]
    assert 3 <= done < total and any((out / "checkpoints").iterdir())
    resumed = subprocess.run([*args, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, total + 1)) and (out / "final" / "config.json").exists()
