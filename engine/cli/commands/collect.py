"""`persd collect --tasks SRC --out DIR [options]`: the main job. Rerun the same command to resume."""
from __future__ import annotations

from persd.config import runtime_fields_as_flags
from persd.engine.aio import run_async
from persd.engine.collect.backends import RUNTIME_FIELDS
from persd.engine.collect.config import parse_args
from persd.engine.collect.runner import Collector


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    with runtime_fields_as_flags(RUNTIME_FIELDS):
        return run_async(Collector(cfg).run())
