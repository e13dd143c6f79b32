"""`persd collect --tasks SRC --out DIR [options]`: the main job. Rerun the same command to resume."""
from __future__ import annotations

import contextlib

import persd.engine.paper.flow  # noqa: F401  (registers --protocol paper's flow variant)
from persd.config import runtime_errors_named
from persd.engine.aio import run_async
from persd.engine.collect.config import check_student_model, parse_args
from persd.engine.collect.flow import variant_for
from persd.engine.collect.layout import CollectLayout
from persd.engine.collect.runner import Collector
from persd.engine.ownership import refuse_foreign
from persd.engine.runlock import run_lock


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    check_student_model(cfg)
    variant_for(cfg.protocol).check_config(cfg)
    refuse_foreign(cfg.out, "collect")
    # partitions (--num-shards) share DIR/.lock and hold one lock each: machines sharing DIR work side by
    # side, a second copy of a partition is refused, and so is a single-machine run while any partition runs
    with contextlib.ExitStack() as locks:
        locks.enter_context(run_lock(cfg.out, "collect", shared=bool(cfg.partition)))
        if cfg.partition:
            locks.enter_context(run_lock(cfg.out, "collect", CollectLayout(cfg.out).lock_name(cfg.partition)))
        with runtime_errors_named(cfg):
            return run_async(Collector(cfg).run())
