"""Logging of a run: metrics.jsonl, a rich progress line, optional TensorBoard event files (rank 0 only)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from persd.engine.rundirs.train import TrainLayout
from persd.runtime.errors import UsageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# dense bf16 peak TFLOP/s per GPU, by a substring of the device name
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0,
               "A800": 312.0, "L40S": 362.0, "L40": 181.0, "A10": 125.0, "V100": 125.0, "4090": 165.0}


def guess_peak_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def flops_per_token(n_params: int, n_layers: int, hidden: int, mean_context: float) -> float:
    """Training FLOPs per token: 6N for the matmuls plus causal attention over the example's context."""
    return 6.0 * n_params + 6.0 * n_layers * hidden * mean_context


def require_tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
    except ImportError:
        raise UsageError("--tensorboard: the tensorboard package is not installed "
                         "(pip install tensorboard), or leave out --tensorboard") from None
    return SummaryWriter


class RunLog:
    def __init__(self, out: Path, *, enabled: bool, total_steps: int, tensorboard: bool, append: bool):
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.writer = None
        self.file = None
        self.progress: Progress | None = None
        if not enabled:
            return
        lay = TrainLayout(out)
        self.file = lay.metrics.open("ab" if append else "wb")
        if tensorboard:
            self.writer = require_tensorboard()(log_dir=str(lay.tensorboard))
        if self.console.is_terminal:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
            self.task = self.progress.add_task("train", total=total_steps, info="")
            self.progress.start()

    def info(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False)

    def step(self, row: dict[str, Any], *, completed: int) -> None:
        if not self.enabled:
            return
        self.file.write(orjson.dumps(row) + b"\n")
        self.file.flush()
        text = f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s"
        if row.get("mfu") is not None:
            text += f"  MFU {row['mfu']:.1%}"
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, info=text)
        else:
            print(f"step {row['step']}/{row['total_steps']}  {text}", file=sys.stderr, flush=True)
        if self.writer is not None:
            for key in ("loss", "lr", "tokens_per_s", "grad_norm", "mfu"):
                if row.get(key) is not None:
                    self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def eval(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        self.file.write(orjson.dumps({"step": step, "eval_loss": loss}) + b"\n")
        self.file.flush()
        self.info(f"step {step}: held-out loss {loss:.4f}")
        if self.writer is not None:
            self.writer.add_scalar("eval/loss", loss, step)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()
