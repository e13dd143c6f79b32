"""The final export: a consolidated Hugging Face checkpoint (config, tokenizer, safetensors), verified.

Parameters are gathered one module at a time (`GatheredParameters`, a no-op when they are
not partitioned) and written by rank 0 to safetensors files of at most `max_shard_bytes`,
so neither the model nor its 16-bit copy is ever whole in one process's memory beyond a
shard. Tied parameters are written once, under their first name, as `save_pretrained` does.

`verify_export` then checks the files against the model's own parameter list built from
the exported config: every weight present, with its full shape and no empty tensor (the
classic ZeRO-3 failure is an export of the local, empty partitions).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from persd.runtime.errors import PersdError

DEFAULT_SHARD_BYTES = 5 * 2**30


def export_hf(engine, model: torch.nn.Module, tokenizer, out: Path, *, rank: int, dtype: torch.dtype | None = None,
              max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Collective: every rank must call it."""
    import deepspeed
    import torch.distributed as dist
    from safetensors.torch import save_file

    module = engine.module if engine is not None else model
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("model*.safetensors*"):
            old.unlink()
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0
    names_per_file: list[list[str]] = []  # only the names are kept once a shard is written
    total_bytes = 0
    seen: dict[int, str] = {}

    def flush() -> None:
        nonlocal shard, shard_bytes
        if not shard:
            return
        idx = len(names_per_file)
        save_file(shard, str(out / f"model-{idx:05d}.tmp.safetensors"), metadata={"format": "pt"})
        names_per_file.append(list(shard))
        shard, shard_bytes = {}, 0

    for prefix, sub in module.named_modules():
        params = list(sub.named_parameters(recurse=False))
        if not params:
            continue
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if rank == 0:
                for name, p in params:
                    key = f"{prefix}.{name}" if prefix else name
                    ident = id(p)
                    if ident in seen:
                        continue  # tied weight: stored once
                    seen[ident] = key
                    t = p.detach().to("cpu", dtype=dtype or p.dtype).contiguous().clone()
                    nbytes = t.numel() * t.element_size()
                    if shard and shard_bytes + nbytes > max_shard_bytes:
                        flush()
                    shard[key] = t
                    shard_bytes += nbytes
                    total_bytes += nbytes
    if rank == 0:
        flush()
        n = len(names_per_file)
        if n == 1:
            (out / "model-00000.tmp.safetensors").rename(out / "model.safetensors")
        else:
            weight_map = {}
            for i, names in enumerate(names_per_file):
                final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                (out / f"model-{i:05d}.tmp.safetensors").rename(out / final)
                weight_map.update({k: final for k in names})
            index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
            (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        cfg = module.config
        cfg.use_cache = True
        if dtype is not None:
            cfg.dtype = dtype
        cfg.save_pretrained(out)
        if getattr(module, "generation_config", None) is not None:
            try:
                module.generation_config.save_pretrained(out)
            except Exception:  # generation config is optional
                pass
        tokenizer.save_pretrained(out)
    if dist.is_initialized():
        dist.barrier()


def verify_export(out: Path) -> dict[str, int]:
    """Every parameter of the architecture present with its full shape, non-empty and finite. Returns counts."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(out)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    expected: dict[str, tuple[int, ...]] = {}
    seen: set[int] = set()
    for name, p in skeleton.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue  # tied
        seen.add(id(p))
        expected[name] = tuple(p.shape)
    index = out / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    found: dict[str, tuple[int, ...]] = {}
    problems: list[str] = []
    n_params = 0
    for fname in files:
        path = out / fname
        if not path.is_file():
            raise PersdError(f"export {out}: {fname} is missing")
        with safe_open(str(path), "pt") as fh:
            for key in fh.keys():
                t = fh.get_tensor(key)
                found[key] = tuple(t.shape)
                n_params += t.numel()
                if t.numel() == 0:
                    problems.append(f"{key} is empty")
                elif t.is_floating_point() and not torch.isfinite(t).all():
                    problems.append(f"{key} has non-finite values")
    for key, shape in expected.items():
        if key not in found:
            problems.append(f"{key} is missing")
        elif found[key] != shape:
            problems.append(f"{key} has shape {found[key]}, expected {shape}")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise PersdError(f"export {out} is incomplete: " + "; ".join(problems[:8]) + more)
    return {"tensors": len(found), "parameters": n_params}
