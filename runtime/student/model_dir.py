"""Is this path a model persd can load? Checked before any library is asked to load it, so a wrong
path is one sentence, not a tokenizer library's traceback.

    problem = model_dir_problem("runs/r1")   # "... is a `persd train` run directory: its model is runs/r1/final"
"""
from __future__ import annotations

from pathlib import Path

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def looks_like_hub_id(name: str) -> bool:
    """`org/name` with no local meaning: left to the loader (it may fetch it from the Hugging Face Hub)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not Path(parts[0]).exists()


def model_dir_problem(path: str, *, weights: bool = True, tokenizer: bool = True) -> str | None:
    """None when `path` looks loadable; else why not (one clause, naming the path)."""
    p = Path(path).expanduser()
    if not p.exists():
        if looks_like_hub_id(path):
            return None
        return f"{path}: no such directory"
    if not p.is_dir():
        return f"{path}: not a directory (a model is a directory with config.json, weights and a tokenizer)"
    if not (p / "config.json").is_file():
        if (p / "final" / "config.json").is_file() or (p / "train.json").is_file() or (p / "checkpoints").is_dir():
            return f"{path} is a `persd train` run directory, not a model: its model is {p / 'final'}"
        if (p / "loop.json").is_file():
            return f"{path} is a `persd loop` run directory, not a model: each round's model is in round-R/train/final"
        return f"{path}: not a Hugging Face model directory (no config.json)"
    if weights and not (any((p / w).is_file() for w in WEIGHTS) or any(p.glob("*.safetensors"))):
        return f"{path}: no model weights (model.safetensors or pytorch_model.bin)"
    if tokenizer and not any((p / t).is_file() for t in TOKENIZER):
        return f"{path}: no tokenizer (tokenizer.json or tokenizer_config.json)"
    return None


__all__ = ["model_dir_problem", "looks_like_hub_id"]
