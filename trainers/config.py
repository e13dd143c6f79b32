"""The training configuration: one dataclass, and the DeepSpeed config it resolves to.

Each field carries its help and whether it changes results (persd.config); the command line, `--config`
and the presets (`--preset paper|FILE.toml`, package data in trainers/presets/) are generated from it
(trainers/cli.py). Precedence: flag > `--config` key > preset > the defaults below.
The DeepSpeed JSON (`--deepspeed zero2|zero3|zero3-offload|FILE.json`) says how to shard
and where to keep state; its "auto" values are filled from this config so that batch
size, precision and clipping are set in one place.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from persd.config import comma_list, opt, result_fields
from persd.runtime.errors import ConfigError, UsageError

SHIPPED_DS_CONFIGS = ("zero2", "zero3", "zero3-offload")
BATCHING = ("pack", "group", "pad")
SCHEDULES = ("cosine", "constant", "linear", "warmuplr")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    """What a training run computes and how. Fields marked changes_results are the run's identity:
    a resumed run must match them (RESUME_KEYS)."""

    RESUME_KEYS: ClassVar[tuple[str, ...]] = ()  # set below from the metadata

    # what to train on, and where
    data: list[str] = opt(default_factory=list, help="collect output dirs (sealed shards) or record JSONL files",
                          changes_results=False, nargs="+", type=str, metavar="DIR|FILE", group="data and model",
                          shown="required")  # the examples themselves are fingerprinted on resume
    model: str = opt("", help="Hugging Face model directory (with --plan: also a known shape name)",
                     changes_results=False, metavar="PATH", group="data and model", shown="required")
    out: str = opt("", help="run directory: final/, checkpoints/, metrics.jsonl", changes_results=False,
                   metavar="DIR", group="data and model", shown="required")
    formats: list[str] | None = opt(None, help="comma list of record formats (persd, persd-refine, persd-combined "
                                               "= both, inpd, stand, any present)", changes_results=True,
                                    metavar="LIST", group="data and model", shown="all present")
    init: str = opt("pretrained", help="random: the model's architecture with fresh weights (benchmarks)",
                    changes_results=True, choices=("pretrained", "random"), group="data and model")
    # sharding and precision
    deepspeed: str = opt("zero2", help=f"DeepSpeed config: {', '.join(SHIPPED_DS_CONFIGS)} or a JSON file",
                         changes_results=False, metavar="NAME|FILE", group="configuration")
    precision: str = opt("auto", help="auto: bf16 on GPUs that have it, fp32 on CPU", changes_results=False,
                         choices=PRECISIONS, group="configuration")  # the resolved precision is in the identity
    gradient_checkpointing: bool = opt(False, help="recompute activations in the backward pass",
                                       changes_results=False, group="configuration")
    attn_implementation: str = opt("auto", help="auto (the model's default, sdpa where supported), sdpa, "
                                                "flash_attention_2, eager", changes_results=False, metavar="NAME",
                                   group="configuration")
    optimizer: str = opt("auto", help="auto: DeepSpeedCPUAdam when the optimizer is offloaded, torch AdamW "
                                      "otherwise", changes_results=False, choices=("auto", "adamw", "cpu-adam"),
                         group="configuration")
    # batches
    seq_len: int = opt(2048, help="tokens per sequence", changes_results=True, group="batches")
    batching: str = opt("pack", help="pack, group (length-grouped, padded per micro-batch) or pad (every "
                                     "example to --seq-len)", changes_results=True, choices=BATCHING, group="batches")
    micro_batch: int = opt(1, help="sequences per GPU per forward", changes_results=True, group="batches")
    grad_accum: int = opt(8, help="micro-batches accumulated per optimizer step", changes_results=True,
                          group="batches")
    global_batch: int | None = opt(None, help="sequences per optimizer step (sets --grad-accum)",
                                   changes_results=True, group="batches")
    reference_batch: tuple[int, ...] | None = opt(
        None, help="(examples per GPU, accumulation, GPUs) of a padded Hugging Face Trainer run whose optimizer "
        "steps and share of the data to take with packed batches (the paper: 12,20,8; transformers 4.29.2's "
        "arithmetic, trainers/reference.py); sets the accumulation and the step count from the data",
        changes_results=True, type=comma_list(int, "comma list of 3 ints: PER_GPU,ACCUM,GPUS"), group="batches",
        metavar="PER_GPU,ACCUM,GPUS")
    prompt_cleanup: str = opt("off", help="decode-style clean-up of prompts (the PERsD reference round-tripped its "
                                          "training prompts through transformers 4.29.2's decode: `' '.join` -> "
                                          "`''.join`); auto: on unless the tokenizer's config turns it off",
                              changes_results=True, choices=("off", "on", "auto"), group="batches")
    # optimisation
    epochs: int = opt(3, help="passes over the data", changes_results=True, group="optimisation")
    max_steps: int | None = opt(None, help="stop after this many optimizer steps", changes_results=True,
                                group="optimisation", shown="the epochs' steps")
    lr: float = opt(1e-5, help="peak learning rate", changes_results=True, group="optimisation")
    schedule: str = opt("cosine", help="learning-rate schedule after warmup (warmuplr: DeepSpeed 0.9.2's WarmupLR as "
                                       "the PERsD reference ran it, its second step at lr 0)", changes_results=True,
                        choices=SCHEDULES, group="optimisation")
    warmup_ratio: float = opt(0.03, help="fraction of the steps spent warming up", changes_results=True,
                              group="optimisation")
    warmup_steps: int | None = opt(None, help="warmup steps (overrides --warmup-ratio)", changes_results=True,
                                   group="optimisation")
    min_lr_ratio: float = opt(0.1, help="the schedule's floor, as a fraction of --lr", changes_results=True,
                              group="optimisation")
    weight_decay: float = opt(0.0, help="AdamW weight decay", changes_results=True, group="optimisation")
    betas: tuple[float, float] = opt((0.9, 0.95), help="AdamW betas", changes_results=True,
                                     type=comma_list(float, "comma list of 2 numbers"), group="optimisation")
    eps: float = opt(1e-8, help="AdamW epsilon", changes_results=True, group="optimisation")
    clip: float = opt(1.0, help="gradient clipping (global norm)", changes_results=True, group="optimisation")
    seed: int = opt(0, help="data order and initialisation seed", changes_results=True, group="optimisation")
    # held-out split (by task id)
    eval_fraction: float = opt(0.0, help="fraction of task ids held out (all their records)", changes_results=True,
                               group="optimisation")
    eval_every: int = opt(0, help="held-out loss every K steps (0: at the end only)", changes_results=False,
                          group="optimisation")
    # checkpoints and logging
    save_every: int = opt(0, help="engine checkpoint every K steps (0: none during training)",
                          changes_results=False, group="checkpoints and logging")
    keep_checkpoints: int = opt(2, help="engine checkpoints kept", changes_results=False,
                                group="checkpoints and logging")
    log_every: int = opt(1, help="steps between log lines", changes_results=False, group="checkpoints and logging")
    tensorboard: bool = opt(False, help="TensorBoard event files in OUT/tensorboard", changes_results=False,
                            group="checkpoints and logging")
    peak_tflops: float | None = opt(None, help="per-GPU peak for the MFU estimate", changes_results=False,
                                    group="checkpoints and logging", shown="guessed from the GPU name")
    plan_check: bool = opt(True, help="check the memory plan before loading the model", changes_results=False,
                           group="checkpoints and logging")

    def validate(self) -> None:
        bad = ConfigError
        if self.batching not in BATCHING:
            raise bad("batching", f"expected one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.init not in ("pretrained", "random"):
            raise bad("init", f"expected pretrained or random, got {self.init!r}")
        if self.prompt_cleanup not in ("off", "on", "auto"):
            raise bad("prompt_cleanup", f"expected off, on or auto, got {self.prompt_cleanup!r}")
        if self.optimizer not in ("auto", "adamw", "cpu-adam"):
            raise bad("optimizer", f"expected auto, adamw or cpu-adam, got {self.optimizer!r}")
        for name in ("seq_len", "micro_batch", "grad_accum", "epochs", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        if self.seq_len < 16:
            raise bad("seq_len", "must be at least 16 tokens")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "must be at least 1")
        if self.global_batch is not None and self.global_batch < 1:
            raise bad("global_batch", "must be at least 1")
        if self.reference_batch is not None and (len(self.reference_batch) != 3 or min(self.reference_batch) < 1):
            raise bad("reference_batch", "expected three positive ints: examples per GPU, accumulation, GPUs")
        if not (0.0 <= self.eval_fraction < 1.0):
            raise bad("eval_fraction", "must be in [0, 1)")
        if not (0.0 <= self.warmup_ratio < 1.0):
            raise bad("warmup_ratio", "must be in [0, 1)")
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if self.lr <= 0:
            raise bad("lr", "must be positive")
        if self.reference_batch is not None and (len(self.reference_batch) != 3 or min(self.reference_batch) < 1):
            raise bad("reference_batch", "expected three positive ints: examples per GPU, accumulation, GPUs")
        if len(self.betas) != 2:
            raise bad("betas", f"expected two numbers, got {list(self.betas)}")
        if self.save_every < 0 or self.eval_every < 0:
            raise bad("save_every" if self.save_every < 0 else "eval_every", "must be 0 (off) or positive")

    def resolve_grad_accum(self, world_size: int) -> int:
        """Accumulation steps: fixed, or derived from --global-batch (sequences per optimizer step)."""
        if self.global_batch is None:
            return self.grad_accum
        per_pass = self.micro_batch * world_size
        return max(1, math.ceil(self.global_batch / per_pass))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        d["betas"] = list(self.betas)
        d["data"] = list(self.data)
        if self.reference_batch is not None:
            d["reference_batch"] = list(self.reference_batch)
        return d


TrainConfig.RESUME_KEYS = result_fields(TrainConfig)


def reference_steps(examples: int, epochs: int, per_gpu: int, accum: int, gpus: int) -> int:
    """Optimizer steps of the reference's padded run (transformers 4.29.2's Trainer with DeepSpeed 0.9.2, as
    finetune.py used it: trainers/reference.py). 3,248 examples at 12 x 20 x 8 for 20 epochs: 20 steps."""
    from persd.trainers.reference import trainer_run

    return trainer_run(examples, epochs, per_gpu, accum, gpus).steps


def _read_named_json(name_or_path: str, package: str, shipped: tuple[str, ...], flag: str) -> str:
    if name_or_path in shipped:
        return resources.files(package).joinpath(f"{name_or_path}.json").read_text()
    path = Path(name_or_path)
    if not path.is_file():
        raise UsageError(f"{flag} {name_or_path}: no such file (shipped: {', '.join(shipped)})")
    return path.read_text()


def load_ds_config(name_or_path: str) -> dict[str, Any]:
    text = _read_named_json(name_or_path, "persd.trainers.configs", SHIPPED_DS_CONFIGS, "--deepspeed")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--deepspeed {name_or_path}: not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise UsageError(f"--deepspeed {name_or_path}: expected a JSON object")
    return cfg


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offload(ds: dict[str, Any]) -> tuple[bool, bool]:
    """(optimizer offloaded to CPU/NVMe, parameters offloaded)."""
    z = ds.get("zero_optimization", {})
    opt = z.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    par = z.get("offload_param", {}).get("device", "none") not in ("none", None)
    return opt, par


def resolve_ds_config(cfg: TrainConfig, ds: dict[str, Any], *, world_size: int, precision: str) -> dict[str, Any]:
    """Fill the DeepSpeed config's "auto" values from the training config; refuse contradictions."""
    ds = copy.deepcopy(ds)
    grad_accum = cfg.resolve_grad_accum(world_size)
    wanted = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.clip,
    }
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise UsageError(f"--deepspeed: {key}={ds[key]} contradicts the training config ({value}); "
                             f"write \"auto\" in the file or pass the matching flag")
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above and the world size
    for key, on in (("bf16", precision == "bf16"), ("fp16", precision == "fp16")):
        section = ds.setdefault(key, {})
        if section.get("enabled", "auto") == "auto":
            section["enabled"] = on
        elif bool(section["enabled"]) != on:
            raise UsageError(f"--deepspeed: {key}.enabled={section['enabled']} contradicts --precision {precision}")
    if "optimizer" in ds or "scheduler" in ds:
        raise UsageError("--deepspeed: leave out \"optimizer\" and \"scheduler\": persd builds them from "
                         "--lr/--schedule/--optimizer so a resumed run and the logs agree")
    opt_off, _ = offload(ds)
    if opt_off and cfg.optimizer == "adamw":
        ds["zero_force_ds_cpu_optimizer"] = False
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    return ds
