"""`persd collect --tasks SRC --out DIR [options]`: the main job. Rerun the same command to resume."""
from __future__ import annotations

from persd.engine.aio import run_async
from persd.engine.collect.config import parse_args
from persd.engine.collect.runner import Collector


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    return run_async(Collector(cfg).run())
