"""`persd eval --tasks SRC --out DIR [student options] [--n K] [--temperature T] [--refine-steps S]`.

Writes DIR/results.jsonl (one line per sample and step) and DIR/summary.json; rerun to resume.
"""
from __future__ import annotations

import sys

from persd.config import runtime_errors_named
from persd.engine.aio import run_async
from persd.engine.collect.config import check_student_model
from persd.engine.evaluation.config import parse_args
from persd.engine.evaluation.report import print_summary
from persd.engine.evaluation.runner import evaluate
from persd.engine.ownership import refuse_foreign
from persd.engine.runlock import run_lock


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    check_student_model(cfg)
    refuse_foreign(cfg.out, "eval")
    with run_lock(cfg.out, "eval"):
        try:
            with runtime_errors_named(cfg):
                summary = run_async(evaluate(cfg))
        except KeyboardInterrupt:  # every scored sample is in the journal already
            print(f"persd eval: interrupted; the samples scored so far are saved in {cfg.out}: rerun the same "
                  f"command to resume", file=sys.stderr)
            return 130
    print_summary(summary, cfg.out)
    return 0
