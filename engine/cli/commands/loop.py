"""`persd loop --rounds R --tasks SRC --eval.tasks SRC --out DIR [options]`.

Round r: collect with the current student (round 1: every task; later rounds: only the tasks no
student has solved yet) -> train on the records (by default every round's so far, from the base
model) -> evaluate -> the new checkpoint is round r+1's student. Rerun the same command to resume;
rerun with a larger --rounds to add rounds.

Any option of a stage reaches it as `--collect.KEY`, `--train.KEY` or `--eval.KEY` (e.g.
--collect.temperature 0.8, --train.preset paper, --eval.protocol paper-humaneval), or as a key of the
[collect], [train] or [eval] table of `--config FILE.toml`. The student options, the sandbox workers,
--progress and --force are given once and apply to every stage. Each round writes round-R/collect.toml,
train.toml and eval.toml and runs the stage with `persd STAGE --config` on it.
"""
from __future__ import annotations

from persd.config import Command, load
from persd.engine.rounds import Loop, LoopConfig, print_table

LOOP = Command(LoopConfig, "loop", description=__doc__.split("\n\n")[0].split("`.", 1)[0].lstrip("`") + "\n\n"
               + "\n\n".join(__doc__.split("\n\n")[1:]),
               groups=("rounds, tasks and output", "shared by the stages"))


def parse_args(argv: list[str]) -> LoopConfig:
    return load(LOOP, argv)


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
