"""`persd eval --tasks SRC --out DIR [student options] [--n K] [--temperature T] [--refine-steps S]`.

Writes DIR/results.jsonl (one line per sample and step) and DIR/summary.json; rerun to resume.
"""
from __future__ import annotations

from persd.config import runtime_fields_as_flags
from persd.engine.aio import run_async
from persd.engine.collect.backends import RUNTIME_FIELDS
from persd.engine.evaluation.config import parse_args
from persd.engine.evaluation.report import print_summary
from persd.engine.evaluation.runner import evaluate


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    with runtime_fields_as_flags(RUNTIME_FIELDS):
        summary = run_async(evaluate(cfg))
    print_summary(summary, cfg.out)
    return 0
