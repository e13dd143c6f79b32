"""Paper mode's training schedule against the arithmetic of the software the reference ran
(environment.yml: transformers 4.29.2, DeepSpeed 0.9.2) and against the reference's own pipeline values.

The Trainer's loop is replayed here the way trainer.py (4.29.2, :1684-1699, :1873-2031) writes it, with
DeepSpeed stepping on its own global micro-step counter; persd's trainers/reference.py must agree for any
record count and batch triple. The learning rate is checked with DeepSpeed's own WarmupLR class.
"""
from __future__ import annotations

import math
import random
import re

import pytest
from persd.trainers.cli import parse_args
from persd.trainers.model import lr_lambda
from persd.trainers.reference import trainer_run, warmuplr_multiplier

from tests.paper_reference import require_reference


def trainer_loop(n: int, epochs: int, per_gpu: int, accum: int, gpus: int) -> tuple[int, int]:
    """(DeepSpeed optimizer steps, micro-batches per rank run) of Trainer.train with DeepSpeed, 4.29.2."""
    num_samples = math.ceil(n / gpus)  # DistributedSampler, drop_last False: ranks padded to equal length
    len_dataloader = math.ceil(num_samples / per_gpu)
    num_update_steps_per_epoch = max(len_dataloader // accum, 1)
    max_steps = math.ceil(epochs * num_update_steps_per_epoch)
    global_step = total_batched_samples = ds_micro_steps = ds_steps = 0
    should_training_stop = False
    steps_in_epoch = len_dataloader
    for _epoch in range(math.ceil(epochs)):
        for step in range(steps_in_epoch):
            total_batched_samples += 1
            # self.deepspeed.step() on every micro-batch: the engine steps at its own boundary
            if (ds_micro_steps + 1) % accum == 0:
                ds_steps += 1
            ds_micro_steps += 1
            if total_batched_samples % accum == 0 or (steps_in_epoch <= accum and (step + 1) == steps_in_epoch):
                global_step += 1
                should_training_stop = global_step >= max_steps  # DefaultFlowCallback.on_step_end
            if should_training_stop:
                break
        if should_training_stop:
            break
    return ds_steps, total_batched_samples


def test_the_papers_two_runs():
    """3,248 PERsD / InpD records and 6,496 PERsD-combined records at 12 x 20 x 8, 20 epochs."""
    for n in (3248, 6496):
        run = trainer_run(n, 20, 12, 20, 8)
        assert (run.steps, run.micro_processed) == trainer_loop(n, 20, 12, 20, 8)
    one, two = trainer_run(3248, 20, 12, 20, 8), trainer_run(6496, 20, 12, 20, 8)
    assert (one.steps, two.steps) == (20, 60)  # the audit, not persd's earlier 34 and 68
    assert round(one.epochs_seen, 1) == 11.8 and round(two.epochs_seen, 1) == 17.6


def test_any_record_count_and_batch_triple_matches_the_trainer_loop():
    rng = random.Random(7)
    cases = [(500, 20, 12, 20, 8), (1920, 20, 12, 20, 8), (1921, 3, 12, 40, 4), (1, 1, 1, 1, 1), (7, 5, 2, 3, 1)]
    cases += [(rng.randint(1, 9000), rng.randint(1, 25), rng.randint(1, 16), rng.randint(1, 48),
               rng.choice((1, 2, 4, 8))) for _ in range(300)]
    for case in cases:
        run = trainer_run(*case)
        assert (run.steps, run.micro_processed) == trainer_loop(*case), case
        assert run.micro_applied == run.steps * case[3] <= run.micro_processed


def test_warmuplr_as_deepspeed_ran_it():
    """DeepSpeed's WarmupLR with the Trainer's "auto" values (min 0, max lr, warm-up 0 -> clamped to 2):
    0.9.2's constructor leaves the optimizer's lr alone (step 1 at the configured lr); the engine then steps
    the schedule after every optimizer step. The installed DeepSpeed computes the later values."""
    import torch
    from deepspeed.runtime.lr_schedules import WarmupLR

    for warm in (0, 1, 5):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-6)
        configured = opt.param_groups[0]["lr"]
        sched = WarmupLR(opt, warmup_min_lr=0.0, warmup_max_lr=5e-6, warmup_num_steps=max(2, warm))
        lrs = [configured]
        for _ in range(8):
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
        fn = lr_lambda(schedule="warmuplr", total_steps=9, warmup_steps=warm, min_lr_ratio=0.1)
        assert [5e-6 * fn(i) for i in range(9)] == pytest.approx(lrs, abs=1e-18), warm
        assert [warmuplr_multiplier(i, warm) for i in range(9)] == [fn(i) for i in range(9)]
    assert [lr_lambda(schedule="warmuplr", total_steps=5, warmup_steps=0, min_lr_ratio=0.1)(i) for i in range(4)] \
        == [1.0, 0.0, 1.0, 1.0]  # the paper's runs: step 2 at lr 0


def _sh_values() -> dict[str, str]:
    text = (require_reference() / "code" / "chatgpt_ilf_pipeline_auto_feedback_alpaca.sh").read_text()
    return dict(re.findall(r"^([A-Z0-9_]+)=([0-9.e-]+)\s*(?:#.*)?$", text, re.M))


def test_training_preset_from_the_reference_pipeline():
    """--preset paper's values from the pipeline script and DeepSpeed config themselves (8 GPUs assumed,
    as the script does), its step count from the Trainer arithmetic on the script's batch."""
    import json

    sh = _sh_values()
    ds = json.loads((require_reference() / "configs" / "deepspeed_configs.json").read_text())
    cfg = parse_args(["--preset", "paper", "--data", "d", "--model", "m", "--out", "o"])
    assert cfg.lr == float(sh["GOLD_CHATGPT_LEARNING_RATE"]) == float(sh["GOLD_LEARNING_RATE"])
    assert cfg.epochs == int(sh["ONLYCHATGPT_NUM_EPOCHS"]) == int(sh["GOLD_NUM_EPOCHS"])
    assert cfg.reference_batch == (int(sh["BATCH_SIZE_PER_GPU"]), int(sh["CHATGPT_GRADIENT_ACCUMULATION_STEPS"]), 8)
    assert ds["scheduler"]["type"] == "WarmupLR" and cfg.schedule == "warmuplr" and cfg.warmup_steps == 0
    assert ds["zero_optimization"]["stage"] == 3 and cfg.deepspeed == "zero3-offload"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    steps = trainer_loop(3248, cfg.epochs, *cfg.reference_batch)[0]
    assert trainer_run(3248, cfg.epochs, *cfg.reference_batch).steps == steps


def test_eval_presets_from_the_reference_pipeline():
    """paper-humaneval (n, T) and paper-humaneval-passk (n, T, k) as the pipeline script runs them."""
    from persd.engine.evaluation.config import parse_args as eval_args

    text = (require_reference() / "code" / "chatgpt_ilf_pipeline_auto_feedback_alpaca.sh").read_text()
    sh = _sh_values()
    runs = re.findall(r"--num-samples=(\d+).*?--temperature=\$\{(\w+)\}", text, re.S)
    ks = re.findall(r"eval_humaneval\.py \\\n.*?--k=([0-9,]+)", text)
    assert runs[-2:] == [("20", "TEMP1"), ("100", "TEMP10")] and len(ks) == 2
    base = ["--out", "x", "--student-model", "m"]
    pass1 = eval_args(["--protocol", "paper-humaneval", *base])
    passk = eval_args(["--protocol", "paper-humaneval-passk", *base])
    assert (pass1.n, pass1.temperature) == (20, float(sh["TEMP1"]))
    assert (passk.n, passk.temperature) == (100, float(sh["TEMP10"]))
    assert list(passk.k) == [int(k) for k in ks[1].split(",")]  # 1, 5, 10, 20
    assert 1 in pass1.k and [int(k) for k in ks[0].split(",")] == [1]
    assert pass1.top_k == passk.top_k == 50  # Hugging Face generate's default, which the reference sampled with


@pytest.mark.slow
@pytest.mark.deepspeed
def test_paper_training_run_takes_the_trainers_steps_and_lrs(tmp_path, tiny_model_dir):
    """`persd train --preset paper` (shrunk to a CPU): as many optimizer steps as the Trainer's arithmetic
    gives for these records and this batch triple, the second one at lr 0."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import PERSDISTILL_FIXTURE

    with (PERSDISTILL_FIXTURE / "persd.jsonl").open() as fh:
        rows = [json.loads(next(fh)) for _ in range(10)]
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "persd", "train", "--preset", "paper", "--data", str(data), "--model",
           str(tiny_model_dir), "--out", str(out), "--deepspeed", "zero2", "--precision", "fp32", "--seq-len", "256",
           "--micro-batch", "1", "--epochs", "3", "--reference-batch", "2,2,1", "--no-plan-check"]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    run = trainer_run(10, 3, 2, 2, 1)
    assert run.steps == trainer_loop(10, 3, 2, 2, 1)[0] == 6 and run.micro_applied < 3 * run.micro_per_epoch
    assert [m["step"] for m in metrics] == list(range(1, run.steps + 1))
    assert [m["lr"] for m in metrics] == pytest.approx([5e-6, 0.0] + [5e-6] * (run.steps - 2), abs=1e-20)
    ref = json.loads((out / "train.json").read_text())["reference"]
    assert ref["steps"] == run.steps and ref["batch"] == [2, 2, 1]
    assert ref["micro_batches_taken"] == round(ref["micro_batches"] * run.share_of_stream)  # 12 of 15 per epoch


def test_training_prompts_cleaned_up_unless_the_tokenizer_says_no(tmp_path):
    """finetune.py:495-501 decodes each prompt back (transformers 4.29.2: clean-up on by default, off where the
    tokenizer_config.json says so); the completions are encoded as they are."""
    import json

    from persd.engine.collect.layout import Record
    from persd.trainers.reference import clean_prompts
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    recs = [Record("a/persd", "a", "persd", "def f(x):\n    return ' '.join(x) , 1\n", "    return ' '.join(x)\n")]
    tidy = PreTrainedTokenizerBase.clean_up_tokenization
    want = tidy(None, recs[0].prompt) if "self" in tidy.__code__.co_varnames else tidy(recs[0].prompt)
    assert want != recs[0].prompt
    on = clean_prompts(recs, "auto", str(tmp_path))  # no tokenizer config: 4.29.2's default, on
    assert on[0].prompt == want and on[0].completion == recs[0].completion
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"clean_up_tokenization_spaces": False}))
    assert clean_prompts(recs, "auto", str(tmp_path)) == recs
    assert clean_prompts(recs, "on", str(tmp_path))[0].prompt == want and clean_prompts(recs, "off", None) == recs


def test_collect_preset_from_the_reference_scripts():
    """--preset paper's collection sampling from the pipeline script and generate_code_for_alpaca.py."""
    from persd.engine.collect.config import parse_args as collect_args
    from persd.engine.evaluation.config import PAPER_REFINE_STEPS

    ref = require_reference()
    sh = _sh_values()
    text = (ref / "code" / "chatgpt_ilf_pipeline_auto_feedback_alpaca.sh").read_text()
    gen = (ref / "code" / "generate_code_for_alpaca.py").read_text()
    ev = (ref / "code" / "eval_alpaca.py").read_text()
    cfg = collect_args(["--tasks", "t.jsonl", "--out", "o", "--student-backend", "hf", "--preset", "paper"])
    student = text[text.index('"gen_student_attempt"'):text.index('"eval_student_attempt"')]
    assert cfg.samples == int(re.search(r"--num-samples=(\d+)", student).group(1))
    assert cfg.temperature == float(sh["TEMP"])
    assert cfg.top_p == float(re.search(r"top_p=([0-9.]+)", gen).group(1))
    assert cfg.max_tokens == int(re.search(r"max_length=input_ids.shape\[1\] \+ (\d+)", gen).group(1))
    assert "top_k" not in gen and cfg.top_k == 50  # none passed: generate's default
    assert cfg.exec_timeout == float(re.search(r"p\.join\((\d+)\)", ev).group(1))
    assert PAPER_REFINE_STEPS == int(re.search(r"--num-refine=(\d+)", text).group(1))


def test_warmuplr_of_deepspeed_0_9_2_itself():
    """The 0.9.2 class itself (its constructor differs from today's): run where its source is at hand,
    `pip download --no-deps deepspeed==0.9.2` unpacked and PERSD_DEEPSPEED_092 pointing at it."""
    import importlib.util
    import logging
    import os
    import sys
    import types
    from pathlib import Path

    import torch

    src = Path(os.environ.get("PERSD_DEEPSPEED_092", "/nonexistent")) / "deepspeed" / "runtime" / "lr_schedules.py"
    if not src.is_file():
        pytest.skip("DeepSpeed 0.9.2's source is not here (set PERSD_DEEPSPEED_092 to an unpacked deepspeed-0.9.2)")
    saved = {k: sys.modules.get(k) for k in ("deepspeed", "deepspeed.utils")}
    stub, utils = types.ModuleType("deepspeed"), types.ModuleType("deepspeed.utils")
    utils.logger = logging.getLogger("deepspeed-0.9.2")
    sys.modules.update({"deepspeed": stub, "deepspeed.utils": utils})
    try:
        spec = importlib.util.spec_from_file_location("persd_test_lr_schedules_092", src)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-6)
    sched = mod.WarmupLR(opt, warmup_min_lr=0, warmup_max_lr=5e-6, warmup_num_steps=0)  # the Trainer's "auto"
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()  # the engine, after each optimizer step
    fn = lr_lambda(schedule="warmuplr", total_steps=6, warmup_steps=0, min_lr_ratio=0.1)
    assert lrs == pytest.approx([5e-6 * fn(i) for i in range(6)], abs=1e-20) and lrs[1] == 0.0
