"""`persd collect --tasks SRC --out DIR [options]`: the main job. Rerun the same command to resume."""
from __future__ import annotations

from engine.aio import run_async
from engine.config import parse_args
from engine.runner import Collector


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    return run_async(Collector(cfg).run())
