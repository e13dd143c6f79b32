"""`persd loop --rounds R --tasks SRC --eval-tasks SRC --out DIR [student, teacher, train, eval options]`.

Round r: collect with the current student (round 1: every task; later rounds: only the tasks no
student has solved yet) -> train on the records (by default every round's so far, from the base
model) -> evaluate -> the new checkpoint is round r+1's student. Rerun the same command to resume;
rerun with a larger --rounds to add rounds.
"""
from __future__ import annotations

import argparse
from dataclasses import fields

from persd.engine.evaluation.protocols import PROTOCOLS
from persd.engine.flags import PROGRESS_MODES, add_student_flags, nonneg_int, parser_for, positive_int
from persd.engine.rounds import Loop, LoopConfig, print_table
from persd.runtime.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    p = parser_for("loop", description=__doc__.split("\n\n")[0].split(": ", 1)[-1],
                   epilog="Options not listed here reach a stage through --collect-args, --train-args or --eval-args "
                          "(one quoted string each).")
    g = p.add_argument_group("rounds, tasks and output")
    g.add_argument("--rounds", type=positive_int, required=True, help="collect -> train -> eval rounds")
    g.add_argument("--tasks", required=True, help="tasks to distil on: JSONL file or built-in set")
    g.add_argument("--eval-tasks", help="tasks to evaluate on: JSONL file or humaneval/mbpp (or set by --protocol)")
    g.add_argument("--out", required=True, help="run directory (rerun with it to resume)")
    g.add_argument("--limit", type=positive_int, help="only the first N of --tasks")
    g.add_argument("--force", action="store_true", default=None, help="continue a run whose settings changed")
    g.add_argument("--progress", choices=PROGRESS_MODES, help="the stages' progress display")
    add_student_flags(p, backends=("vllm", "hf"), backend_help="auto: vllm on a GPU machine, else hf", url=False,
                      model_help="the starting checkpoint (default: a tiny random-weight model, for a demo)")
    g = p.add_argument_group("teacher and collection (persd collect)")
    g.add_argument("--teacher-url", help="OpenAI-compatible base URL; without it collect's offline stand-in answers")
    g.add_argument("--teacher-model")
    g.add_argument("--teacher-api-key-env")
    g.add_argument("--rpm", type=positive_int)
    g.add_argument("--tpm", type=positive_int)
    g.add_argument("--max-cost", type=float, help="per round")
    g.add_argument("--formats", help="records to collect (default persd,persd-refine: PERsD-combined)")
    g.add_argument("--refine-turns", type=positive_int)
    g.add_argument("--samples", type=positive_int, help="student attempts per task")
    g.add_argument("--collect-temperature", type=float)
    g.add_argument("--collect-max-tokens", type=positive_int)
    g.add_argument("--max-in-flight", type=positive_int)
    g.add_argument("--collect-args", help="more collect flags, one quoted string")
    g = p.add_argument_group("training (persd train)")
    g.add_argument("--train-formats",
                   help="formats to train on (persd, persd-refine, persd-combined, ...; default all)")
    g.add_argument("--train-on", choices=("all", "round"), help="all: every round's records so far (default)")
    g.add_argument("--train-from", choices=("base", "previous"),
                   help="base: fine-tune the starting model each round (default); previous: the last checkpoint")
    g.add_argument("--preset", help="training preset (paper) or JSON file")
    g.add_argument("--deepspeed", help="zero2, zero3, zero3-offload or a JSON file")
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--max-steps", type=positive_int)
    g.add_argument("--lr", type=float)
    g.add_argument("--seq-len", type=positive_int)
    g.add_argument("--train-launcher", help='run training under a launcher, e.g. "torchrun --nproc_per_node 8"')
    g.add_argument("--train-args", help="more train flags, one quoted string")
    g = p.add_argument_group("evaluation (persd eval)")
    g.add_argument("--protocol", choices=tuple(PROTOCOLS))
    g.add_argument("--eval-task-ids", help="evaluate only these ids (file)")
    g.add_argument("--eval-limit", type=positive_int)
    g.add_argument("--n", type=positive_int, help="samples per task")
    g.add_argument("--eval-temperature", type=float)
    g.add_argument("--eval-max-tokens", type=positive_int)
    g.add_argument("--k", help="comma list for pass@k")
    g.add_argument("--refine-steps", type=nonneg_int, help="refine-inference steps")
    g.add_argument("--eval-base", action=argparse.BooleanOptionalAction,
                   help="evaluate the starting student as round 0 (default on)")
    g.add_argument("--eval-args", help="more eval flags, one quoted string")
    g = p.add_argument_group("sandbox")
    g.add_argument("--sandbox-workers", type=nonneg_int)
    g.add_argument("--exec-timeout", type=float)
    return p


def parse_args(argv: list[str]) -> LoopConfig:
    ns = build_parser().parse_args(argv)
    if not ns.eval_tasks and not ns.protocol:
        raise UsageError("--eval-tasks is required unless --protocol names the evaluation (persd loop --help)")
    known = {f.name for f in fields(LoopConfig)}
    return LoopConfig(**{k: v for k, v in vars(ns).items() if v is not None and k in known})


def main(argv: list[str]) -> int:
    import sys

    from persd.engine.ownership import refuse_foreign
    from persd.engine.runlock import run_lock

    cfg = parse_args(argv)
    refuse_foreign(cfg.out, "loop")
    with run_lock(cfg.out, "loop"):
        try:
            infos = Loop(cfg).run()
        except KeyboardInterrupt as exc:  # a stage stopped at its safe point (it said so above)
            why = str(exc) or "interrupted between stages"
            print(f"persd loop: {why}\npersd loop: rerun the same command to resume", file=sys.stderr)
            return 130
    print_table(infos, cfg.out)
    return 0
