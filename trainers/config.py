"""The training configuration: one dataclass, presets, and the DeepSpeed config it resolves to.

Precedence: dataclass defaults < preset (`--preset NAME|FILE.json`) < command-line flags.
The DeepSpeed JSON (`--deepspeed zero2|zero3|zero3-offload|FILE.json`) says how to shard
and where to keep state; its "auto" values are filled from this config so that batch
size, precision and clipping are set in one place.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from persd.runtime.errors import UsageError

SHIPPED_DS_CONFIGS = ("zero2", "zero3", "zero3-offload")
SHIPPED_PRESETS = ("paper",)
BATCHING = ("pack", "group", "pad")
SCHEDULES = ("cosine", "constant", "linear")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    # what to train on, and where
    data: list[str] = field(default_factory=list)
    model: str = ""
    out: str = ""
    formats: list[str] | None = None  # None: every format present
    init: str = "pretrained"  # "random": the model's architecture with fresh weights (benchmarks)
    # sharding and precision
    deepspeed: str = "zero2"
    precision: str = "auto"  # auto: bf16 on GPUs that support it, fp32 on CPU
    gradient_checkpointing: bool = False
    attn_implementation: str = "auto"  # auto: transformers' default for the model (sdpa where supported)
    optimizer: str = "auto"  # auto | adamw (torch) | cpu-adam (DeepSpeedCPUAdam; compiled on first use)
    # batches
    seq_len: int = 2048
    batching: str = "pack"  # pack | group (length-grouped, padded per micro-batch) | pad (every example to seq_len)
    micro_batch: int = 1  # sequences per GPU per forward
    grad_accum: int = 8
    global_batch: int | None = None  # sequences per optimizer step; when set, grad_accum is derived
    # (examples per GPU, accumulation, GPUs) of a padded run whose optimizer-step count to reproduce with
    # packed batches (the paper: 12, 20, 8); sets grad_accum and max_steps from the data (reference_steps)
    reference_batch: tuple[int, int, int] | None = None
    # optimisation
    epochs: int = 3
    max_steps: int | None = None
    lr: float = 1e-5
    schedule: str = "cosine"
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip: float = 1.0
    seed: int = 0
    # held-out split (by task id)
    eval_fraction: float = 0.0
    eval_every: int = 0
    # checkpoints and logging
    save_every: int = 0  # 0: no engine checkpoints during training
    keep_checkpoints: int = 2
    log_every: int = 1
    tensorboard: bool = False
    peak_tflops: float | None = None  # per GPU, for MFU; guessed from the GPU name when unset
    plan_check: bool = True

    def validate(self) -> None:
        def bad(flag: str, why: str) -> UsageError:
            return UsageError(f"--{flag.replace('_', '-')}: {why}")

        if self.batching not in BATCHING:
            raise bad("batching", f"expected one of {', '.join(BATCHING)}, got {self.batching!r}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.init not in ("pretrained", "random"):
            raise bad("init", f"expected pretrained or random, got {self.init!r}")
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
        if self.save_every < 0 or self.eval_every < 0:
            raise bad("save_every" if self.save_every < 0 else "eval_every", "must be 0 (off) or positive")

    def resolve_grad_accum(self, world_size: int) -> int:
        """Accumulation steps: fixed, or derived from --global-batch (sequences per optimizer step)."""
        if self.global_batch is None:
            return self.grad_accum
        per_pass = self.micro_batch * world_size
        return max(1, math.ceil(self.global_batch / per_pass))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        if self.reference_batch is not None:
            d["reference_batch"] = list(self.reference_batch)
        return d

    # fields that change what a step computes: a resumed run must match them
    RESUME_KEYS = ("seq_len", "batching", "micro_batch", "grad_accum", "global_batch", "epochs", "max_steps",
                   "lr", "schedule", "warmup_ratio", "warmup_steps", "min_lr_ratio", "seed", "formats",
                   "eval_fraction", "init")


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's fields (keys starting with '_' are comments)."""
    text = _read_named_json(name_or_path, "persd.trainers.presets", SHIPPED_PRESETS, "--preset")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--preset {name_or_path}: not valid JSON: {exc}") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    fields = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UsageError(f"--preset {name_or_path}: unknown field(s) {', '.join(unknown)}")
    if "betas" in fields:
        fields["betas"] = tuple(fields["betas"])
    if fields.get("reference_batch") is not None:
        fields["reference_batch"] = tuple(fields["reference_batch"])
    return fields


def reference_steps(examples: int, epochs: int, per_gpu: int, accum: int, gpus: int) -> int:
    """Optimizer steps of the reference's padded run (Hugging Face Trainer as finetune.py used it):
    each epoch has ceil(examples / (per_gpu x gpus)) micro-batches per rank, a step every `accum` of
    them, and an epoch's remainder carried into the next epoch's first step (the Trainer neither
    steps nor zeroes it). 3,248 examples at 12 x 20 x 8 for 20 epochs: 34 steps."""
    micro = math.ceil(examples / (per_gpu * gpus))
    if micro <= accum:  # the Trainer steps at the end of an epoch shorter than one accumulation
        return epochs
    return max(1, (epochs * micro) // accum)


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
