"""persd train, configuration side: presets, shipped DeepSpeed configs, the memory plan, the lr schedule."""
from __future__ import annotations

import json

import pytest
from persd.runtime.errors import PersdError, UsageError
from persd.trainers.cli import parse_args
from persd.trainers.config import (
    SHIPPED_DS_CONFIGS,
    TrainConfig,
    load_ds_config,
    offload,
    resolve_ds_config,
    zero_stage,
)
from persd.trainers.model import lr_lambda


def cfg_of(*argv: str) -> TrainConfig:
    return parse_args(list(argv))


def test_shipped_deepspeed_configs_resolve():
    stages = {}
    for name in SHIPPED_DS_CONFIGS:
        ds = resolve_ds_config(TrainConfig(micro_batch=2, grad_accum=4, clip=0.5), load_ds_config(name),
                               world_size=8, precision="bf16")
        assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 4
        assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
        assert "auto" not in json.dumps(ds)
        stages[name] = (zero_stage(ds), offload(ds))
    assert stages == {"zero2": (2, (False, False)), "zero3": (3, (False, False)), "zero3-offload": (3, (True, True))}


def test_deepspeed_file_contradicting_the_flags_is_refused(tmp_path):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 2}}))
    with pytest.raises(UsageError, match="train_micro_batch_size_per_gpu=4 contradicts"):
        resolve_ds_config(TrainConfig(micro_batch=1), load_ds_config(str(f)), world_size=1, precision="fp32")
    f.write_text(json.dumps({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(UsageError, match="leave out \"optimizer\""):
        resolve_ds_config(TrainConfig(), load_ds_config(str(f)), world_size=1, precision="fp32")
    with pytest.raises(UsageError, match="--deepspeed zero9: no such file"):
        load_ds_config("zero9")


def test_preset_then_flags_override():
    cfg = cfg_of("--preset", "paper", "--data", "d", "--model", "m", "--out", "o", "--epochs", "2")
    assert cfg.lr == 5e-6 and cfg.precision == "bf16" and cfg.deepspeed == "zero3-offload" and cfg.seq_len == 2048
    assert cfg.epochs == 2  # the flag wins over the preset
    assert cfg.reference_batch == (12, 20, 8) and cfg.betas == (0.9, 0.999) and cfg.eps == 1e-8
    assert cfg.schedule == "warmuplr" and cfg.warmup_steps == 0 and cfg.weight_decay == 0.0 and cfg.clip == 1.0
    assert cfg.prompt_cleanup == "auto"  # the values themselves: tests/test_paper_schedule.py, against the reference
    assert cfg_of("--formats", "persd, persd-refine").formats == ["persd", "persd-refine"]


def test_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="--micro-batch: must be at least 1"):
        cfg_of("--micro-batch", "0")
    with pytest.raises(UsageError, match="--eval-fraction"):
        cfg_of("--eval-fraction", "1.5")
    with pytest.raises(UsageError):
        cfg_of("--batching", "zip")


def test_warmup_then_cosine_to_the_floor():
    fn = lr_lambda(schedule="cosine", total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert fn(0) == pytest.approx(0.1) and fn(9) == pytest.approx(1.0)
    assert fn(10) == pytest.approx(1.0) and fn(55) == pytest.approx(0.55) and fn(100) == pytest.approx(0.1)
    assert all(fn(i) >= fn(i + 1) for i in range(10, 100))
    assert lr_lambda(schedule="constant", total_steps=100, warmup_steps=0, min_lr_ratio=0.1)(77) == 1.0


def test_memory_plan_refuses_what_cannot_fit(capsys):
    from persd.engine.cli.main import main

    args = ["train", "--plan", "--model", "codegen-16b", "--gpus-per-node", "8", "--gpu-memory", "80",
            "--cpu-memory", "1024", "--seq-len", "2048", "--micro-batch", "1"]
    # 16B on one node of 8x80GB: ZeRO-2 keeps 16-bit weights whole on every GPU (32 GB) plus a share of
    # the rest: refused; ZeRO-3 shards everything: fits; full CPU offload moves the states to the host
    assert main(args + ["--deepspeed", "zero2"]) == 1
    assert "will not fit" in capsys.readouterr().err
    assert main(args + ["--deepspeed", "zero3", "--gradient-checkpointing"]) == 0
    assert "plan fits" in capsys.readouterr().out
    assert main(args + ["--deepspeed", "zero3-offload", "--gpus-per-node", "1"]) == 0
    assert main(args + ["--deepspeed", "zero3-offload", "--gpus-per-node", "1", "--cpu-memory", "64"]) == 1
    assert "CPU memory per node" in capsys.readouterr().err


def test_memory_plan_reads_a_model_directory(tiny_model_dir, tmp_path):
    from persd.trainers import plan

    shape = plan.shape_of(str(tiny_model_dir))
    assert shape.params > 0 and shape.layers == 2 and shape.hidden == 64
    p = plan.make_plan(shape, stage=3, offload_optimizer=False, offload_params=False, gpus_per_node=2, nodes=1,
                       seq_len=128, micro_batch=1, gradient_checkpointing=True, gpu_memory=1e12, cpu_memory=1e12)
    assert p.fits_gpu and p.model_states_gpu > 0 and p.activations_gpu > 0
    with pytest.raises(PersdError, match="will not fit"):
        plan.refuse_if_unfit(plan.make_plan(shape, stage=3, offload_optimizer=False, offload_params=False,
                                            gpus_per_node=1, nodes=1, seq_len=128, micro_batch=1,
                                            gradient_checkpointing=False, gpu_memory=1e6, cpu_memory=1e12))


def test_tensorboard_missing_is_a_clear_error():
    from persd.trainers.metrics import require_tensorboard

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="tensorboard package is not installed"):
            require_tensorboard()
    else:
        assert require_tensorboard() is not None


def test_packed_run_takes_the_reference_number_of_steps():
    """The reference's steps over the reference's share of the stream (trainers/reference.py; the counts
    themselves are checked against the Trainer's loop in tests/test_paper_schedule.py)."""
    from persd.trainers.loop import Schedule, match_reference_steps
    from persd.trainers.reference import trainer_run

    run = trainer_run(3248, 20, 12, 20, 8)
    plans = [[[[i]] for i in range(37)] for _ in range(20)]  # 37 packed micro-batches an epoch, 20 epochs
    for world in (1, 2, 8):
        cfg = TrainConfig(epochs=20, reference_batch=(12, 20, 8))
        steps, take = match_reference_steps(cfg, plans, 3248, world)
        assert steps == cfg.max_steps == run.steps
        assert take == round(740 * run.share_of_stream) < 740  # the Trainer stopped before the 20th epoch
        sched = Schedule(plans, world * cfg.grad_accum, steps=steps, take=take)
        assert sched.total == run.steps
        seen = [mb for step in range(sched.total) for rank in range(world)
                for mb in sched.window(step, rank, world, cfg.grad_accum)[1] if mb]
        assert len(seen) == take  # the stream's first `take` micro-batches, once each, across epoch ends
