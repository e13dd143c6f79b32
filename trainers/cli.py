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
    resume: bool = opt(False, help="continue from the latest checkpoint in OUT/checkpoints (a rerun over an "
                       "interrupted run resumes by itself)", changes_results=False, group="checkpoints and logging")
    force: bool = opt(False, help="start over in an OUT that holds an earlier run (its checkpoints, metrics and "
                      "final model are deleted)", changes_results=False, group="checkpoints and logging")
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
    cfg = cmd.train_config()
    from persd.runtime.student.model_dir import model_dir_problem

    problem = model_dir_problem(cfg.model, weights=cfg.init != "random")
    if problem:
        raise UsageError(f"--model {problem}")
    from persd.engine.ownership import refuse_foreign
    from persd.engine.runlock import main_rank, run_lock

    refuse_foreign(cfg.out, "train")
    if not main_rank():  # the other ranks of a launch share rank 0's lock and decision
        return run(cfg, resume=cmd.resume or (not cmd.force and _has_checkpoint(Path(cfg.out))))
    with run_lock(cfg.out, "train"):
        return run(cfg, resume=rerun_decision(Path(cfg.out), resume=cmd.resume, force=cmd.force))


def _has_checkpoint(out: Path) -> bool:
    from persd.trainers.checkpoint import latest_tag

    return latest_tag(out / "checkpoints") is not None


def rerun_decision(out: Path, *, resume: bool, force: bool) -> bool:
    """Never start over silently in a directory that holds an earlier run: resume an interrupted run
    (its checkpoint refuses other settings), refuse a finished one or one with nothing to resume
    from, unless --force (then the earlier run's files are deleted). Returns whether to resume."""
    import shutil

    if force:
        if resume:
            raise UsageError("--resume and --force contradict each other (continue the run, or start over)")
        for name in ("checkpoints", "final", "tensorboard"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("metrics.jsonl", "train.json", "plan.json"):
            (out / name).unlink(missing_ok=True)
        return False
    if (out / "train.json").is_file() and (out / "final" / "config.json").is_file():
        raise UsageError(f"{out} holds a finished training run (its model is {out / 'final'}): use another --out, "
                         f"or pass --force to train again from scratch")
    if _has_checkpoint(out):
        if not resume:
            print(f"persd train: {out} holds an interrupted run: resuming it from its latest checkpoint "
                  f"(--force starts over)", file=sys.stderr)
        return True
    if resume:
        return True  # train() says there is no checkpoint to resume from
    if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size:
        raise UsageError(f"{out} holds an earlier run that stopped before its first checkpoint (metrics.jsonl, "
                         f"no checkpoint to --resume from): pass --force to start over, or use another --out")
    return False


def run(cfg: TrainConfig, *, resume: bool = False) -> int:
    from persd.trainers.export import export_hf, verify_export
    from persd.trainers.launch import close_world
    from persd.trainers.loop import TrainingInterrupted, train

    try:
        result, st = train(cfg, resume=resume)
    except TrainingInterrupted as stop:
        where = f"checkpoint of step {stop.step} in {stop.ckpt_dir}" if stop.ckpt_dir else "no new checkpoint"
        print(f"persd train: interrupted ({where}); rerun the same command to continue from it (--resume is implied)",
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
