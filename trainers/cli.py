"""`persd train`: DeepSpeed ZeRO fine-tuning of a causal LM on collected shards or record files.

    persd train --data DIR [DIR|FILE ...] --model PATH --out DIR [--formats persd,persd-refine]
                [--deepspeed zero2|zero3|zero3-offload|FILE.json] [--preset paper|FILE.json] [--resume] ...
    persd train --plan --model PATH|NAME [--deepspeed ...] [--gpus-per-node 8] [--nodes 2] [--gpu-memory 80]

One process runs as is (DS_ACCELERATOR=cpu for CPU); many run under a launcher:
    torchrun --nproc_per_node 8 -m persd train ...
    deepspeed --no_local_rank --hostfile hosts --module persd train ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from persd.runtime.errors import UsageError
from persd.trainers.config import (BATCHING, PRECISIONS, SCHEDULES, SHIPPED_DS_CONFIGS, SHIPPED_PRESETS, TrainConfig,
                             load_preset)

S = argparse.SUPPRESS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a bad flag is a UsageError: one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="persd train", description=__doc__.split("\n\n")[0], argument_default=S,
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    g = p.add_argument_group("data and model")
    g.add_argument("--data", nargs="+", metavar="DIR|FILE", help="collect output dirs (sealed shards) or record JSONL files")
    g.add_argument("--model", metavar="PATH", help="Hugging Face model directory (with --plan: also a known shape name)")
    g.add_argument("--out", metavar="DIR", help="run directory: final/, checkpoints/, metrics.jsonl")
    g.add_argument("--formats", metavar="LIST", help="comma list of record formats (persd, persd-refine, "
                   "persd-combined = both, inpd, stand, any present); default: all")
    g.add_argument("--init", choices=("pretrained", "random"), help="random: the architecture with fresh weights")
    g = p.add_argument_group("configuration")
    g.add_argument("--preset", metavar="NAME|FILE", help=f"training preset ({', '.join(SHIPPED_PRESETS)}) or JSON file")
    g.add_argument("--deepspeed", metavar="NAME|FILE", help=f"DeepSpeed config: {', '.join(SHIPPED_DS_CONFIGS)} "
                   "or a JSON file (default zero2)")
    g.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 on GPUs that have it, fp32 on CPU")
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction)
    g.add_argument("--attn-implementation", metavar="NAME", help="auto (default: the model's default, sdpa where supported), sdpa, flash_attention_2, eager")
    g.add_argument("--optimizer", choices=("auto", "adamw", "cpu-adam"),
                   help="auto: DeepSpeedCPUAdam when the optimizer is offloaded, torch AdamW otherwise")
    g = p.add_argument_group("batches")
    g.add_argument("--seq-len", type=int)
    g.add_argument("--batching", choices=BATCHING, help="pack (default), group (by length), pad (to --seq-len)")
    g.add_argument("--micro-batch", type=int, help="sequences per GPU per forward")
    g.add_argument("--grad-accum", type=int, help="micro-batches accumulated per optimizer step")
    g.add_argument("--global-batch", type=int, help="sequences per optimizer step (sets --grad-accum)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--warmup-ratio", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--min-lr-ratio", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--eval-fraction", type=float, help="fraction of task ids held out (all their records)")
    g.add_argument("--eval-every", type=int)
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--save-every", type=int, help="engine checkpoint every K steps (0: none)")
    g.add_argument("--keep-checkpoints", type=int)
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT/checkpoints "
                   "(a rerun over an interrupted run resumes by itself)")
    g.add_argument("--force", action="store_true", help="start over in an OUT that holds an earlier run "
                   "(its checkpoints, metrics and final model are deleted)")
    g.add_argument("--log-every", type=int)
    g.add_argument("--tensorboard", action="store_true", help="TensorBoard event files in OUT/tensorboard")
    g.add_argument("--peak-tflops", type=float, help="per-GPU peak for the MFU estimate")
    g.add_argument("--no-plan-check", dest="plan_check", action="store_false")
    g = p.add_argument_group("memory plan (--plan)")
    g.add_argument("--plan", action="store_true", help="print the memory plan and exit (1 if it cannot fit)")
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--nodes", type=int)
    g.add_argument("--gpu-memory", type=float, metavar="GIB")
    g.add_argument("--cpu-memory", type=float, metavar="GIB", help="per node")
    g.add_argument("--local_rank", "--local-rank", type=int, help=S)  # set by some launchers; the env is used
    return p


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    values = dict(load_preset(ns.preset)) if "preset" in ns else {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in vars(ns).items():
        if key in fields:
            values[key] = value
    if isinstance(values.get("formats"), str):
        values["formats"] = [f.strip() for f in values["formats"].split(",") if f.strip()]
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def _plan(ns: argparse.Namespace, cfg: TrainConfig) -> int:
    import psutil

    from persd.trainers import plan as mplan
    from persd.trainers.config import load_ds_config, offload, zero_stage

    if not cfg.model:
        raise UsageError("--plan needs --model (a model directory or one of: " + ", ".join(mplan.KNOWN) + ")")
    ds = load_ds_config(cfg.deepspeed)
    opt_off, par_off = offload(ds)
    gpu_mem = getattr(ns, "gpu_memory", None)
    if gpu_mem is None:
        import torch

        gpu_mem = (torch.cuda.get_device_properties(0).total_memory / mplan.GiB) if torch.cuda.is_available() else 80.0
    cpu_mem = getattr(ns, "cpu_memory", None) or psutil.virtual_memory().total / mplan.GiB
    plan = mplan.make_plan(mplan.shape_of(cfg.model), stage=zero_stage(ds), offload_optimizer=opt_off,
                           offload_params=par_off, gpus_per_node=getattr(ns, "gpus_per_node", 8),
                           nodes=getattr(ns, "nodes", 1), seq_len=cfg.seq_len, micro_batch=cfg.micro_batch,
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
    parser = build_parser()
    ns = parser.parse_args(argv)
    cfg = config_from_args(ns)
    if getattr(ns, "plan", False):
        return _plan(ns, cfg)
    for flag in ("data", "model", "out"):
        if not getattr(cfg, flag):
            raise UsageError(f"--{flag} is required (persd train --help)")
    from persd.runtime.student.model_dir import model_dir_problem

    problem = model_dir_problem(cfg.model, weights=cfg.init != "random")
    if problem:
        raise UsageError(f"--model {problem}")
    from persd.engine.ownership import refuse_foreign
    from persd.engine.runlock import main_rank, run_lock

    refuse_foreign(cfg.out, "train")
    if not main_rank():  # the other ranks of a launch share rank 0's lock and decision
        force = getattr(ns, "force", False)
        return run(cfg, resume=getattr(ns, "resume", False) or (not force and _has_checkpoint(Path(cfg.out))))
    with run_lock(cfg.out, "train"):
        resume = rerun_decision(Path(cfg.out), resume=getattr(ns, "resume", False), force=getattr(ns, "force", False))
        return run(cfg, resume=resume)


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
        result = train(cfg, resume=resume)
    except TrainingInterrupted as stop:
        where = f"checkpoint of step {stop.step} in {stop.ckpt_dir}" if stop.ckpt_dir else "no new checkpoint"
        print(f"persd train: interrupted ({where}); rerun the same command to continue from it (--resume is implied)",
              file=sys.stderr)
        close_world()
        return 130
    world, log = result["world"], result["log"]
    final = Path(cfg.out) / "final"
    log.info(f"exporting the consolidated model to {final}")
    export_hf(result["engine"], result["model"], result["tokenizer"], final, rank=world.rank, dtype=result["dtype"])
    if world.rank == 0:
        checked = verify_export(final)
        log.info(f"export verified: {checked['tensors']} tensors, {checked['parameters']:,} parameters, none empty")
        history = result["history"]
        summary = {k: v for k, v in result.items() if k not in ("engine", "model", "tokenizer", "world", "log",
                                                                 "dtype", "history")}
        summary.update(config=cfg.to_dict(), export=checked, final_loss=history[-1]["loss"] if history else None)
        (Path(cfg.out) / "train.json").write_text(json.dumps(summary, indent=2, default=str))
    log.close()
    close_world()
    return 0


if __name__ == "__main__":
    from persd.engine.cli.main import run_guarded

    sys.exit(run_guarded(main, sys.argv[1:]))
