"""`persd train`'s options: the training configuration plus what only one invocation decides.

Its own module (not the CLI's) so that `persd loop`, which nests these options as its [train] section,
imports no command-line module.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from persd.config import opt
from persd.trainers.config import TrainConfig


@dataclass
class TrainCommand(TrainConfig):
    """`persd train`'s options: the training configuration plus what only this invocation decides."""

    preset: str | None = opt(None, help="training preset: paper, or a TOML file of these options",
                             changes_results=False, metavar="NAME|FILE.toml", group="configuration")
    resume: bool = opt(False, help="continue from the latest checkpoint in OUT/checkpoints (a rerun over an "
                       "interrupted run resumes by itself)", changes_results=False, group="checkpoints and logging")
    force: bool = opt(False, help="start over in an OUT that holds an earlier run (its checkpoints, metrics and "
                      "final model are deleted)", changes_results=False, group="checkpoints and logging")
    plan: bool = opt(False, help="print the memory plan and exit (1 if it cannot fit)", changes_results=False,
                     group="memory plan (--plan)")
    gpus_per_node: int = opt(8, help="GPUs per node", changes_results=False, group="memory plan (--plan)")
    nodes: int = opt(1, help="nodes", changes_results=False, group="memory plan (--plan)")
    gpu_memory: float | None = opt(None, help="GiB per GPU", changes_results=False, metavar="GIB",
                                   group="memory plan (--plan)", shown="this machine's GPU, else 80")
    cpu_memory: float | None = opt(None, help="GiB per node", changes_results=False, metavar="GIB",
                                   group="memory plan (--plan)", shown="this machine's")

    def train_config(self) -> TrainConfig:
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


__all__ = ["TrainCommand"]
