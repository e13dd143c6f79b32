"""`persd eval --tasks SRC --out DIR [student options] [--n K] [--temperature T] [--refine-steps S]`.

Writes DIR/results.jsonl (one line per sample and step) and DIR/summary.json; rerun to resume.
"""
from __future__ import annotations

from engine.aio import run_async
from engine.evaluation.config import parse_args
from engine.evaluation.report import print_summary
from engine.evaluation.runner import evaluate


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    summary = run_async(evaluate(cfg))
    print_summary(summary, cfg.out)
    return 0
