"""The student model, its optimizer and learning-rate schedule.

Under ZeRO-3 the model is built inside `deepspeed.zero.Init`, so every parameter is
partitioned across ranks as soon as its module is constructed and a 16B model is never
whole on one rank; the pretrained weights are then streamed in one module at a time
(rank 0 reads the safetensors files, `GatheredParameters(modifier_rank=0)` scatters them).
Under ZeRO-0/1/2 each rank holds the whole model and `from_pretrained` loads it directly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
from persd.runtime.errors import PersdError, UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_model_dir(path: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UsageError(f"--model {path}: expected a Hugging Face model directory (config.json not found)")
    return p


def _weight_files(path: Path) -> dict[str, Path]:
    """Parameter name -> safetensors file holding it."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: path / v for k, v in weight_map.items()}
    single = path / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, "pt") as fh:
            return {k: single for k in fh.keys()}
    raise UsageError(f"--model {path}: no safetensors weights (model.safetensors or its index) found")


def load_model(path: str, *, ds_config: dict[str, Any], dtype: torch.dtype, init: str, attn: str,
               gradient_checkpointing: bool) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = check_model_dir(path)
    config = AutoConfig.from_pretrained(model_dir)
    stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
    kwargs = {} if attn == "auto" else {"attn_implementation": attn}
    if stage == 3:
        import deepspeed
        from transformers import initialization
        from transformers.integrations.deepspeed import initialize_weights_zero3

        # no_init_weights: HF's initialisers would index the empty local partitions; the
        # weights are filled below (pretrained), or initialised module by module, gathered.
        with initialization.no_init_weights(), deepspeed.zero.Init(config_dict_or_path=ds_config, dtype=dtype):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
        model.tie_weights()  # skipped with the initialisers: tied parameters become one (partitioned) parameter
        if init == "pretrained":
            _load_partitioned(model, model_dir)
        else:
            initialize_weights_zero3(model)
    elif init == "pretrained":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **kwargs)
    else:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    model.config.use_cache = False
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _load_partitioned(model: torch.nn.Module, model_dir: Path) -> None:
    """Stream pretrained weights into a ZeRO-3 partitioned model, one module's parameters at a time."""
    import deepspeed
    import torch.distributed as dist
    from safetensors import safe_open

    rank = dist.get_rank() if dist.is_initialized() else 0
    files = _weight_files(model_dir) if rank == 0 else {}
    handles: dict[Path, Any] = {}
    loaded: set[int] = set()
    missing: list[str] = []

    def tensor(name: str) -> torch.Tensor | None:
        f = files.get(name)
        if f is None:
            return None
        if f not in handles:
            handles[f] = safe_open(f, "pt")
        return handles[f].get_tensor(name)

    for prefix, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        if not params:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0):
            if rank == 0:
                for name, param in params:
                    key = f"{prefix}.{name}" if prefix else name
                    if id(param) in loaded:
                        continue  # tied: already filled through its first name
                    value = tensor(key)
                    if value is None:
                        missing.append(key)
                        continue
                    if tuple(value.shape) != tuple(param.shape):
                        raise PersdError(f"--model {model_dir}: {key} has shape {tuple(value.shape)} in the "
                                         f"checkpoint, {tuple(param.shape)} in the model")
                    param.data.copy_(value.to(param.dtype))
                    loaded.add(id(param))
    handles.clear()
    flag = torch.tensor([len(missing)], dtype=torch.long)
    if dist.is_initialized():
        dist.broadcast(flag, 0)
    if flag.item():
        shown = ", ".join(missing[:5]) if missing else "see rank 0"
        raise PersdError(f"--model {model_dir}: {flag.item()} parameter(s) missing from the weights ({shown})")


def build_optimizer(model: torch.nn.Module, *, kind: str, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float, optimizer_offloaded: bool) -> torch.optim.Optimizer:
    """AdamW with no decay on biases and norms. auto: DeepSpeedCPUAdam with CPU offload, torch AdamW otherwise."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "cpu-adam" or (kind == "auto" and optimizer_offloaded):
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # compiled on first use

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    fused = torch.cuda.is_available() and not optimizer_offloaded
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_lambda(*, schedule: str, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak lr after `step` optimizer steps: linear warmup, then cosine/linear/constant;
    `warmuplr`: the PERsD reference's DeepSpeed 0.9.2 WarmupLR (trainers/reference.py: step 2 at lr 0)."""
    if schedule == "warmuplr":
        from persd.trainers.reference import warmuplr_multiplier

        return lambda step: warmuplr_multiplier(step, warmup_steps)

    def fn(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if schedule == "linear":
            return 1.0 - (1.0 - min_lr_ratio) * progress
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn
