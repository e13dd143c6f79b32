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
import json
import shlex
import sys
from pathlib import Path

from persd import config
from persd.config import Command, load
from persd.engine.rundirs.files import atomic_write
from persd.engine.rundirs.train import TrainLayout, TrainManifest
from persd.runtime.errors import UsageError
from persd.trainers.command import TrainCommand
from persd.trainers.config import TrainConfig


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
        atomic_write(TrainLayout(cfg.out).plan, json.dumps(plan.to_dict(), indent=2))
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

    return latest_tag(TrainLayout(out).checkpoints) is not None


def rerun_decision(out: Path, *, resume: bool, force: bool) -> bool:
    """Never start over silently in a directory that holds an earlier run: resume an interrupted run
    (its checkpoint refuses other settings), refuse a finished one or one with nothing to resume
    from, unless --force (then the earlier run's files are deleted: a checkpoint continues only the
    settings it was made with, so for train "run with these settings" is starting over). Returns
    whether to resume."""
    import shutil

    lay = TrainLayout(out)
    if force:
        if resume:
            raise UsageError("--resume and --force contradict each other (continue the run, or start over)")
        for path in lay.earlier_run():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return False
    if lay.is_done():
        raise UsageError(f"{out} holds a finished training run (its model is {lay.final}): use another --out, "
                         f"or pass --force to train again from scratch")
    if _has_checkpoint(out):
        if not resume:
            print(f"persd train: {out} holds an interrupted run: resuming it from its latest checkpoint "
                  f"(--force starts over)", file=sys.stderr)
        return True
    if resume:
        return True  # train() says there is no checkpoint to resume from
    if lay.metrics.is_file() and lay.metrics.stat().st_size:
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
    lay = TrainLayout(cfg.out)
    final = lay.final
    log.info(f"exporting the consolidated model to {final}")
    export_hf(st.engine, st.model, st.tokenizer, final, rank=world.rank, dtype=st.dtype)
    if world.rank == 0:
        checked = verify_export(final)
        log.info(f"export verified: {checked['tensors']} tensors, {checked['parameters']:,} parameters, none empty")
        history = result.history
        manifest = TrainManifest(cfg.to_dict(), dict(result.to_json(), final_loss=history[-1]["loss"] if history
                                                     else None), checked)
        atomic_write(lay.manifest, json.dumps(manifest.to_json(), indent=2, default=str))
        log.info(f"report: persd report {shlex.quote(str(cfg.out))}")
    log.close()
    close_world()
    return 0
