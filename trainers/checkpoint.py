"""Engine checkpoints for --resume: DeepSpeed's own (sharded model, optimizer, scheduler) plus persd's position.

Every rank calls `save`/`resume` (they are collectives: a save on rank 0 alone hangs).
The client state stores the next optimizer step and the run's identity (the fields of
the config that change what a step computes), so a resumed run recomputes the same
epoch plans and continues with exactly the micro-batches, learning rates and RNG states
the uninterrupted run would have had.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from persd.runtime.errors import UsageError

TAG = re.compile(r"^step-(\d+)$")


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def list_tags(ckpt_dir: Path) -> list[str]:
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if p.is_dir() and TAG.match(p.name)]
    return sorted(tags, key=lambda t: int(TAG.match(t).group(1)))


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag named by DeepSpeed's `latest` file (written after a save completes), else the newest directory."""
    latest = ckpt_dir / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        if (ckpt_dir / tag).is_dir():
            return tag
    tags = list_tags(ckpt_dir)
    return tags[-1] if tags else None


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, ckpt_dir: Path, *, step: int, identity: dict[str, Any], keep: int, rank: int) -> str:
    """Save on every rank; rank 0 then drops the oldest checkpoints beyond `keep`."""
    import torch.distributed as dist

    tag = tag_for(step)
    client = {"persd": {"next_step": step, "identity": identity, "rng": _rng_state()}}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client, save_latest=True)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        for old in list_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    return tag


def resume(engine, ckpt_dir: Path, *, identity: dict[str, Any]) -> int:
    """Load the latest checkpoint; return the next optimizer step. Refuses a checkpoint of a different run."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        raise UsageError(f"--resume: no checkpoint in {ckpt_dir}")
    path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                          load_lr_scheduler_states=True)
    if path is None or not client or "persd" not in client:
        raise UsageError(f"--resume: {ckpt_dir / tag} is not a complete persd checkpoint")
    state = client["persd"]
    saved = state["identity"]
    from persd.trainers.config import TrainConfig

    for k in identity:  # an option added since the checkpoint was made counts as its default then
        if k not in saved and hasattr(TrainConfig, k):
            saved = {**saved, k: getattr(TrainConfig(), k)}
    diffs = [f"{k}: {saved.get(k)!r} -> {identity.get(k)!r}" for k in identity if saved.get(k) != identity.get(k)]
    if diffs:
        raise UsageError(f"{ckpt_dir}: the checkpoint was made with different settings (" + "; ".join(diffs)
                         + "): rerun with the original settings to resume, or pass --force to start over")
    _set_rng_state(state["rng"])
    return int(state["next_step"])
