"""`persd eval` configuration: one dataclass whose fields carry their help and whether they change results.

Precedence: a flag > a key in `--config FILE.toml` > the `--protocol` preset (a config file of the same
format: persd/engine/evaluation/presets/NAME.toml, or your own FILE.toml) > the defaults below.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from persd import config
from persd.config import Command, build, fingerprint, gather, nonneg_int, opt, positive_float, positive_int, section
from persd.engine.collect.cluster import RayFields
from persd.engine.collect.config import (
    PROGRESS_MODES,
    SANDBOX_RENAMED,
    STUDENT_RENAMED,
    check_sampling,
    old_names_as_attributes,
    public_view,
)
from persd.engine.tasks import TaskSourceFields
from persd.engine.timelimits import TimeLimitFields
from persd.runtime.errors import ConfigError, UsageError
from persd.runtime.sandbox.config import SandboxConfig
from persd.runtime.student.base import StudentConfig

PROMPT_VERSION = 1  # bump when eval's prompts (direct or refine) change: it alters results
PAPER_REFINE_STEPS = 2  # the paper refines a failing sample up to twice at inference


def _ks(v: str | list | tuple) -> tuple[int, ...]:
    items = v if isinstance(v, (list, tuple)) else [s.strip() for s in str(v).split(",") if s.strip()]
    try:
        ks = tuple(sorted({int(x) for x in items}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {v!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {v!r}")
    return ks


@old_names_as_attributes
@dataclass
class EvalConfig(TimeLimitFields, TaskSourceFields, RayFields):
    RENAMED: ClassVar[dict[str, str]] = {**STUDENT_RENAMED, **SANDBOX_RENAMED}

    # tasks and output
    tasks: str = opt("", help="tasks: a JSONL file, a parquet file or folder, a saved dataset folder[@SPLIT], "
                     "hf:NAME[:CONFIG][@SPLIT] or a built-in set (humaneval, mbpp)", changes_results=True,
                     group="tasks and output", shown="required, or from --protocol")
    out: str = opt("", help="output directory (rerun with the same one to resume)", changes_results=False,
                   group="tasks and output", shown="required")
    protocol: str | None = opt(None, help="a preset of the paper's settings: paper-humaneval, "
                                          "paper-humaneval-passk, paper-mbpp, or a TOML file of eval options; "
                                          "flags and --config keys still win", changes_results=False,
                               group="tasks and output", metavar="NAME|FILE.toml")
    task_ids: str | None = opt(None, help="evaluate only these task ids: a JSON list or one id a line "
                                          "(integers match MBPP/N; @mbpp-307: the sanitized MBPP ids)",
                               changes_results=True, group="tasks and output", shown="all")
    limit: int | None = opt(None, help="only the first N selected tasks", changes_results=True,
                            type=positive_int, group="tasks and output", shown="all")
    # sampling and scoring
    n: int = opt(1, help="samples per task", changes_results=True, type=positive_int, group="sampling and scoring")
    temperature: float = opt(0.0, help="sampling temperature (0: greedy)", changes_results=True,
                             group="sampling and scoring")
    top_p: float = opt(0.95, help="top_p", changes_results=True, group="sampling and scoring")
    top_k: int | None = opt(None, help="sample from the K most likely tokens only (paper-*: 50, Hugging Face "
                                       "generate's default; sent where the backend supports it)",
                            changes_results=True, type=positive_int, group="sampling and scoring", shown="off")
    max_tokens: int = opt(512, help="max new tokens per sample", changes_results=True, type=positive_int,
                          group="sampling and scoring")
    k: tuple[int, ...] = opt((1,), help="comma list of k for pass@k (k above n is left out)",
                             changes_results=False, type=_ks, group="sampling and scoring")
    seed: int = opt(0, help="base sampling seed", changes_results=True, group="sampling and scoring")
    refine_steps: int = opt(0, help="refine-inference: up to S rounds of visible-test feedback in the "
                                    f"persd-refine prompt layout (the paper uses {PAPER_REFINE_STEPS}; "
                                    f"--refine for short)", changes_results=True, type=nonneg_int,
                            group="sampling and scoring")
    style: str = opt("persd", help="paper: the reference implementation's prompts, cleaning, scoring and "
                     "refine-inference (engine/paper/; set by the paper-* protocols, persd-* keep persd's own)",
                     changes_results=True, choices=("persd", "paper"), group="sampling and scoring")
    clean_up_spaces: str = opt("off", help="paper style: decode the way transformers 4.29.2 did, with "
                                           "clean_up_tokenization_spaces (`' '.join` -> `''.join`); auto: on "
                                           "unless the student's tokenizer_config.json turns it off",
                               changes_results=True,
                               choices=("off", "on", "auto"), group="sampling and scoring")
    # flow
    max_in_flight: int = opt(64, help="tasks alive at once", changes_results=False, type=positive_int,
                             group="flow")
    failure_breaker: int = opt(20, help="stop the run (resumably) once the last N student requests all failed "
                               "for their own content: then it is the server or a setting, not one bad request "
                               "(0: never)", changes_results=False, type=nonneg_int, group="flow")
    force: bool = opt(False, help="discard earlier results in --out whose settings differ, and start over",
                      changes_results=False, group="flow")
    progress: str = opt("auto", help="progress display", changes_results=False, choices=PROGRESS_MODES,
                        group="flow")
    log_every: float = opt(10.0, help="seconds between plain progress lines", changes_results=False,
                           type=positive_float, group="flow")
    # the components collect and eval share, each with its own options
    student: StudentConfig = section(StudentConfig, help="the student model (persd.runtime.student)")
    sandbox: SandboxConfig = section(SandboxConfig, help="the sandbox that runs programs (persd.runtime.sandbox)")

    def resolved_student_backend(self) -> str:
        return self.student.resolved_backend()

    def public(self) -> dict[str, Any]:
        data = public_view(self)
        data["k"] = list(self.k)
        return data

    @property
    def paper_cleanup(self) -> bool:
        """--clean-up-spaces resolved (auto: the student's tokenizer config, else transformers 4.29.2's True)."""
        from persd.runtime.decoding import resolve_cleanup

        return self.style == "paper" and resolve_cleanup(self.clean_up_spaces, self.student_model)

    def fingerprint(self) -> dict[str, Any]:
        """What alters results (every field marked changes_results): a rerun in the same directory must
        keep it (or pass --force)."""
        return dict(fingerprint(self), prompt_version=PROMPT_VERSION)

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", "required (a JSONL file or humaneval/mbpp), or pass --protocol")
        if not self.out:
            raise ConfigError("out", "required (the output directory; rerun with it to resume)")
        backend = self.student.resolved_backend()
        if backend in ("hf", "vllm") and not self.student.model:
            raise ConfigError("student.model", f"required with the {backend} backend (a checkpoint directory)")
        check_sampling(self.temperature, self.top_p)
        if self.style == "paper" and self.student.chat:
            raise ConfigError("student.chat", "the paper style (the paper-* protocols) drives a base model: "
                              "leave out {student.chat}")
        self.check_ray()


def _refine_alias(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", dest="refine_paper", action="store_true", default=argparse.SUPPRESS,
                   help=f"refine-inference as in the paper: --refine-steps {PAPER_REFINE_STEPS}")


EVAL = Command(EvalConfig, "eval", description="pass@k of a student on HumanEval, MBPP or any task file, with "
               "optional refine-inference. Writes DIR/results.jsonl and DIR/summary.json; rerun to resume.",
               preset_field="protocol", preset_package="persd.engine.evaluation.presets", extra=_refine_alias,
               groups=("tasks and output", "student", "sampling and scoring", "flow", "ray cluster"))


def build_parser() -> argparse.ArgumentParser:
    return config.build_parser(EVAL)


def parse_args(argv: list[str]) -> EvalConfig:
    values, ns, src = gather(EVAL, argv)
    if getattr(ns, "refine_paper", False):
        if "refine_steps" in src.flags and values["refine_steps"] != PAPER_REFINE_STEPS:
            raise UsageError(f"--refine means --refine-steps {PAPER_REFINE_STEPS}; it conflicts with "
                             f"--refine-steps {values['refine_steps']} (give one of the two)")
        values["refine_steps"] = PAPER_REFINE_STEPS
        src.flags.add("refine_steps")
    cfg = build(EvalConfig, values, src)
    if cfg.n > 1 and cfg.temperature == 0:
        print(f"persd eval: warning: --n {cfg.n} at temperature 0 (greedy) gives {cfg.n} identical samples per "
              f"task; set --temperature (the paper's pass@k protocols sample at 0.2-0.8)", file=sys.stderr)
    return cfg


__all__ = ["EvalConfig", "EVAL", "PROMPT_VERSION", "build_parser", "parse_args"]
