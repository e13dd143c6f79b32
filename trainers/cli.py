"""`persd train`: DeepSpeed ZeRO fine-tuning of a causal LM on collected shards or record files.

    persd train --data DIR [DIR|FILE ...] --model PATH --out DIR [--formats persd,persd-refine]
                [--deepspeed zero2|zero3|zero3-offload|FILE.json] [--preset paper|FILE.toml] [--resume] ...
    persd train --config run.toml [any option as a flag, which wins]
    persd train --plan --model PATH|NAME [--deepspeed ...] [--gpus-per-node 8] [--nodes 2] [--gpu-memory 80]

One process runs as is (DS_ACCELERATOR=cpu for CPU); many run under a launcher:
    torchrun --nproc_per_node 8 -m persd train ...
    deepspeed --no_local_rank --hostfile hosts --module persd train ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from persd import config
from persd.config import Command, load, opt
from persd.runtime.errors import UsageError
from persd.trainers.config import TrainConfig

@dataclass
class TrainCommand(TrainConfig):
    """`persd train`'s options: the training configuration plus what only this invocation decides."""

    preset: str | None = opt(None, help="training preset: paper, or a TOML file of these options",
                             changes_results=False, metavar="NAME|FILE.toml", group="configuration")
    resume: bool = opt(False, help="continue from the latest checkpoint in OUT/checkpoints", changes_results=False,
                       group="checkpoints and logging")
    plan: bool = opt(False, help="print the memory plan and exit (1 if it cannot fit)", changes_results=False,
                     group="memory plan (--plan)")
    gpus_per_node: int = opt(8, help="GPUs per node", changes_results=False, group="memory plan (--plan)")
    nodes: int = opt(1, help="nodes", changes_results=False, group="memory plan (--plan)")
    gpu_memory: float | None = opt(None, help="GiB per GPU", changes_results=False, metavar="GIB",
                                   group="memory plan (--plan)", shown="this machine's GPU, else 80")
    cpu_memory: float | None = opt(None, help="GiB per node", changes_results=False, metavar="GIB",
                                   group="memory plan (--plan)", shown="this machine's")

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


def _launcher_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local_rank", "--local-rank", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # set by some launchers; the environment is what is used


TRAIN = Command(TrainCommand, "train", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                preset_field="preset", preset_package="persd.trainers.presets", extra=_launcher_flags,
                groups=("data and model", "configuration", "batches", "optimisation", "checkpoints and logging",
                        "memory plan (--plan)"))


def _int_triple(v: str) -> tuple[int, int, int]:
    parts = tuple(int(x) for x in v.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise ValueError
    return parts  # type: ignore[return-value]


_int_triple.__name__ = "PER_GPU,ACCUM,GPUS"


def build_parser() -> argparse.ArgumentParser:
    return config.build_parser(TRAIN)


def parse_args(argv: list[str]) -> TrainCommand:
    return load(TRAIN, argv)


def _plan(cfg: TrainCommand) -> int:
    import psutil

    from persd.trainers import plan as mplan
    from persd.trainers.config import load_ds_config, offload, zero_stage

    if not cfg.model:
        raise UsageError("--plan needs --model (a model directory or one of: " + ", ".join(mplan.KNOWN) + ")")
    ds = load_ds_config(cfg.deepspeed)
    opt_off, par_off = offload(ds)
    gpu_mem = cfg.gpu_memory
    if gpu_mem is None:
        import torch

        gpu_mem = (torch.cuda.get_device_properties(0).total_memory / mplan.GiB) if torch.cuda.is_available() else 80.0
    cpu_mem = cfg.cpu_memory or psutil.virtual_memory().total / mplan.GiB
    plan = mplan.make_plan(mplan.shape_of(cfg.model), stage=zero_stage(ds), offload_optimizer=opt_off,
                           offload_params=par_off, gpus_per_node=cfg.gpus_per_node,
                           nodes=cfg.nodes, seq_len=cfg.seq_len, micro_batch=cfg.micro_batch,
                           gradient_checkpointing=cfg.gradient_checkpointing, gpu_memory=gpu_mem * mplan.GiB,
                           cpu_memory=cpu_mem * mplan.GiB)
    mplan.render(plan)
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2))
    mplan.refuse_if_unfit(plan)  # PersdError: exit 1
    print("plan fits")
    return 0


def main(argv: list[str]) -> int:
    cmd = parse_args(argv)
    if cmd.plan:
        return _plan(cmd)
    for flag in ("data", "model", "out"):
        if not getattr(cmd, flag):
            raise UsageError(f"--{flag} is required (persd train --help)")
    return run(cmd.train_config(), resume=cmd.resume)


def run(cfg: TrainConfig, *, resume: bool = False) -> int:
    from persd.trainers.export import export_hf, verify_export
    from persd.trainers.launch import close_world
    from persd.trainers.loop import TrainingInterrupted, train

    try:
        result, st = train(cfg, resume=resume)
    except TrainingInterrupted as stop:
        where = f"checkpoint of step {stop.step} in {stop.ckpt_dir}" if stop.ckpt_dir else "no new checkpoint"
        print(f"persd train: interrupted ({where}); rerun the same command with --resume to continue",
              file=sys.stderr)
        close_world()
        return 130
    world, log = st.world, st.log
    final = Path(cfg.out) / "final"
    log.info(f"exporting the consolidated model to {final}")
    export_hf(st.engine, st.model, st.tokenizer, final, rank=world.rank, dtype=st.dtype)
    if world.rank == 0:
        checked = verify_export(final)
        log.info(f"export verified: {checked['tensors']} tensors, {checked['parameters']:,} parameters, none empty")
        history = result.history
        summary = result.to_json()
        summary.update(config=cfg.to_dict(), export=checked, final_loss=history[-1]["loss"] if history else None)
        (Path(cfg.out) / "train.json").write_text(json.dumps(summary, indent=2, default=str))
        log.info(f"report: persd report {shlex.quote(str(cfg.out))}")
    log.close()
    close_world()
    return 0
