"""`persd bench train`: packed batches against padding every example to the maximum length, in one run.

On the paper authors' released CodeGen-6B fine-tuning data (persd, inpd and refine-gold:
9,740 records) and the tiny model, the same trainer runs a few optimizer steps twice:
once with packed rows (persd's default) and once with every example padded to
--seq-len (the reference's setting). It reports real (non-padding) tokens per second,
the padding share of the computed tokens, and the time one epoch of the data takes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from persd.config import parser_for

REPO = Path(__file__).resolve().parents[1]
PAPER_FILES = ("persd.jsonl", "inpd.jsonl", "refine-gold.jsonl")


def default_data() -> list[str]:
    base = Path(os.environ.get("PERSD_DATA_DIR", REPO.parent / "shared" / "data")) / "persdistill-codegen6b"
    return [str(base / f) for f in PAPER_FILES]


def parse(argv: list[str]) -> argparse.Namespace:
    p = parser_for("bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=None, help="record files or collect dirs (default: the paper's data)")
    p.add_argument("--model", default=None, help="model directory (default: a fresh tiny model)")
    p.add_argument("--random-model", default=None, metavar="1b|HIDDENxLAYERS",
                   help="train a randomly initialised Llama of this size (the tiny model's tokenizer), e.g. on a GPU")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--deepspeed", default="zero2")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per mode (the first is not timed)")
    p.add_argument("--modes", default="pack,pad", help="comma list of pack, group, pad")
    p.add_argument("--precision", default="auto")
    p.add_argument("--out", default="runs/bench/train.json")
    return p.parse_args(argv)


def run_mode(mode: str, args: argparse.Namespace, model: str, data: list[str], work: Path) -> dict:
    from persd.trainers.config import TrainConfig
    from persd.trainers.loop import train

    cfg = TrainConfig(data=data, model=model, out=str(work / mode), batching=mode, seq_len=args.seq_len,
                      micro_batch=args.micro_batch, grad_accum=1, epochs=1, max_steps=args.steps, lr=1e-4,
                      warmup_steps=0, deepspeed=args.deepspeed, precision=args.precision, log_every=10**9,
                      init="random" if args.random_model else "pretrained",
                      gradient_checkpointing=args.gradient_checkpointing)
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result, state = train(cfg, quiet=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    timed = result.history[1:] or result.history
    seconds = sum(r["step_s"] for r in timed)
    tokens = sum(r["tokens"] for r in timed)
    slots = sum(r["tokens"] / (1 - r["padding"]) if r["padding"] < 1 else 0 for r in timed)
    steps_per_epoch = result.steps_per_epoch
    row = {"mode": mode, "steps_timed": len(timed), "tokens_per_s": tokens / seconds,
           "slots_per_s": slots / seconds, "step_s": seconds / len(timed),
           "padding_measured": 1 - tokens / slots if slots else 0.0, "padding_epoch": result.padding,
           "steps_per_epoch": steps_per_epoch, "epoch_s": steps_per_epoch * seconds / len(timed),
           "examples": result.examples, "precision": result.precision, "zero_stage": result.zero_stage,
           "final_loss": result.history[-1]["loss"], "params": result.params,
           "world_size": result.world_size, "peak_gpu_gib": peak,
           "mfu": (sum(r["mfu"] for r in timed) / len(timed)) if timed[0].get("mfu") is not None else None}
    del result, state  # free the engine and the model before the next mode
    gc.collect()
    return row


def main(argv: list[str]) -> int:
    args = parse(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else os.environ.get("DS_ACCELERATOR", ""))
    if not os.environ["DS_ACCELERATOR"]:
        del os.environ["DS_ACCELERATOR"]
    from persd.runtime.errors import UsageError
    from persd.trainers.launch import close_world
    from rich.console import Console
    from rich.table import Table

    data = args.data or default_data()
    missing = [d for d in data if not Path(d).exists()]
    if missing:
        raise UsageError(f"--data: not found: {', '.join(missing)} (set PERSD_DATA_DIR or pass --data)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    console = Console()
    with tempfile.TemporaryDirectory(prefix="persd-bench-train-") as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from persd.runtime.student.tiny_model import write_tiny_model

            model = str(write_tiny_model(work / "tiny-model", seed=0))
        if args.random_model:
            model = str(write_random_model(Path(model), work / "random-model", args.random_model, args.seq_len))
        rows = []
        t0 = time.perf_counter()
        for mode in modes:
            console.print(f"[bold]{mode}[/]: {args.steps} steps of {args.micro_batch} x {args.seq_len} tokens ...")
            rows.append(run_mode(mode, args, model, data, work))
        wall = time.perf_counter() - t0
        close_world()
    base = next((r for r in rows if r["mode"] == "pad"), rows[-1])
    table = Table(title=f"persd bench train: {rows[0]['examples']:,} records, seq {args.seq_len}, "
                        f"micro-batch {args.micro_batch}, ZeRO-{rows[0]['zero_stage']}, {rows[0]['precision']}")
    for col in ("batching", "real tokens/s", "computed tokens/s", "padding (epoch)", "steps/epoch",
                "epoch time", "speed-up", "MFU"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["mode"], f"{r['tokens_per_s']:,.0f}", f"{r['slots_per_s']:,.0f}", f"{r['padding_epoch']:.1%}",
                      f"{r['steps_per_epoch']:,}", f"{r['epoch_s'] / 60:,.1f} min",
                      f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x",
                      f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (CPU)")
    console.print(table)
    report = {"bench": "train", "command": "persd bench train " + " ".join(argv), "data": data,
              "model": args.model or "tiny (persd.runtime.student.tiny_model, seed 0)", "seq_len": args.seq_len,
              "micro_batch": args.micro_batch, "steps": args.steps, "deepspeed": args.deepspeed, "results": rows,
              "wall_s": wall, "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                                          "cpus": os.cpu_count(), "torch": _torch_version()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {out}")
    return 0


def write_random_model(tokenizer_dir: Path, out: Path, size: str, seq_len: int) -> Path:
    """A Llama config of the given size (no weights: the trainer initialises them) plus a tokenizer."""
    from persd.runtime.errors import UsageError
    from transformers import AutoTokenizer, LlamaConfig

    shapes = {"1b": (2048, 20, 16)}  # hidden, layers, heads: about 1.0B parameters with the intermediate below
    if size in shapes:
        hidden, layers, heads = shapes[size]
    else:
        try:
            hidden, layers = (int(x) for x in size.lower().split("x"))
        except ValueError:
            raise UsageError(f"--random-model: expected 1b or HIDDENxLAYERS, got {size!r}") from None
        heads = max(1, hidden // 128)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 64 * 64,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max(seq_len, 2048), bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _torch_version() -> str:
    import torch

    return torch.__version__
