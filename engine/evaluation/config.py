"""`persd eval` configuration: one dataclass, its flags, protocol presets, and the fingerprint a rerun must keep.

Precedence: a flag on the command line > the `--protocol` preset > the defaults below.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from persd.engine.collect.config import StudentFields, check_sampling, check_student_url
from persd.engine.evaluation.protocols import PROTOCOLS, protocol_defaults
from persd.engine.flags import PROGRESS_MODES, add_student_flags, nonneg_int, parser_for, positive_float, positive_int
from persd.runtime.errors import UsageError

PROMPT_VERSION = 1  # bump when eval's prompts (direct or refine) change: it alters results


@dataclass
class EvalConfig(StudentFields):
    student_concurrency: int = 256  # the student's other options: StudentFields
    tasks: str = ""
    out: str = ""
    protocol: str | None = None
    task_ids: str | None = None  # a file (JSON list or one id a line) or "@mbpp-307"
    limit: int | None = None
    # sampling
    n: int = 1
    temperature: float = 0.0
    top_p: float = 0.95
    max_tokens: int = 512
    k: tuple[int, ...] = (1,)
    seed: int = 0
    refine_steps: int = 0
    # flow
    max_in_flight: int = 64  # tasks alive at once
    sandbox_workers: int = 0
    exec_timeout: float = 10.0
    force: bool = False
    progress: str = "auto"  # auto | live | plain | none
    log_every: float = 10.0
    explicit: tuple[str, ...] = field(default=(), repr=False)  # flags given on the command line

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("explicit")
        data["k"] = list(self.k)
        data["student_backend"] = self.resolved_student_backend()
        return data

    def fingerprint(self) -> dict[str, Any]:
        """What alters results: a rerun in the same directory must keep it (or pass --force)."""
        return {
            "tasks": self.tasks, "task_ids": self.task_ids, "limit": self.limit,
            "student_model": self.student_model, "student_chat": self.student_chat,
            "n": self.n, "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
            "seed": self.seed, "refine_steps": self.refine_steps, "exec_timeout": self.exec_timeout,
            "prompt_version": PROMPT_VERSION,
        }


def _ks(v: str | list | tuple) -> tuple[int, ...]:
    items = v if isinstance(v, (list, tuple)) else [s.strip() for s in str(v).split(",") if s.strip()]
    try:
        ks = tuple(sorted({int(x) for x in items}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {v!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {v!r}")
    return ks


PAPER_REFINE_STEPS = 2  # the paper refines a failing sample up to twice at inference


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling and scoring")
    g.add_argument("--n", type=positive_int, help="samples per task (default 1)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default 0: greedy)")
    g.add_argument("--top-p", type=float, help="top_p (default 0.95)")
    g.add_argument("--max-tokens", type=positive_int, help="max new tokens per sample (default 512)")
    g.add_argument("--k", type=_ks, help="comma list of k for pass@k (default 1; k above n is left out)")
    g.add_argument("--seed", type=int, help="base sampling seed (default 0)")
    g.add_argument("--refine-steps", type=nonneg_int,
                   help="refine-inference: up to S rounds of visible-test feedback in the persd-refine prompt "
                        "layout (default 0; the paper uses 2)")
    g.add_argument("--refine", dest="refine_paper", action="store_true", default=None,
                   help=f"refine-inference as in the paper: --refine-steps {PAPER_REFINE_STEPS}")


def build_parser() -> argparse.ArgumentParser:
    p = parser_for("eval",
                   description="pass@k of a student on HumanEval, MBPP or any task file, with optional "
                               "refine-inference. Writes DIR/results.jsonl and DIR/summary.json; rerun to resume.")
    g = p.add_argument_group("tasks and output")
    g.add_argument("--tasks", help="JSONL task file or a built-in set (humaneval, mbpp)")
    g.add_argument("--out", help="output directory (rerun with the same one to resume)")
    g.add_argument("--protocol", choices=tuple(PROTOCOLS),
                   help="fill in the paper's settings (tasks, n, temperature, k, MBPP ids); flags still win")
    g.add_argument("--task-ids", help="evaluate only these task ids: a JSON list or one id a line "
                                      "(integers match MBPP/N)")
    g.add_argument("--limit", type=positive_int, help="only the first N selected tasks")
    add_student_flags(p, concurrency_default=256, vllm=True)
    add_sampling_flags(p)
    g = p.add_argument_group("flow")
    g.add_argument("--max-in-flight", type=positive_int, help="tasks alive at once (default 64)")
    g.add_argument("--sandbox-workers", type=nonneg_int, help="sandbox processes (default: one per core)")
    g.add_argument("--exec-timeout", type=positive_float, help="seconds per execution (default 10)")
    g.add_argument("--force", action="store_true", default=None,
                   help="discard earlier results in --out whose settings differ, and start over")
    g.add_argument("--progress", choices=PROGRESS_MODES)
    g.add_argument("--log-every", type=positive_float, help="seconds between plain progress lines (default 10)")
    return p


def parse_args(argv: list[str]) -> EvalConfig:
    ns = build_parser().parse_args(argv)
    if ns.refine_paper:
        if ns.refine_steps is not None and ns.refine_steps != PAPER_REFINE_STEPS:
            raise UsageError(f"--refine means --refine-steps {PAPER_REFINE_STEPS}; it conflicts with "
                             f"--refine-steps {ns.refine_steps} (give one of the two)")
        ns.refine_steps = PAPER_REFINE_STEPS
    given = {k: v for k, v in vars(ns).items() if v is not None and k != "refine_paper"}
    values = protocol_defaults(given.get("protocol"))
    values.update(given)
    known = {f.name for f in fields(EvalConfig)}
    cfg = EvalConfig(**{k: v for k, v in values.items() if k in known}, explicit=tuple(sorted(given)))
    validate(cfg)
    return cfg


def validate(cfg: EvalConfig) -> None:
    if not cfg.tasks:
        raise UsageError("--tasks is required (a JSONL file or humaneval/mbpp), or pass --protocol")
    if not cfg.out:
        raise UsageError("--out is required (the output directory; rerun with it to resume)")
    backend = check_student_url(cfg)
    if backend in ("hf", "vllm") and not cfg.student_model:
        raise UsageError(f"--student-model is required with the {backend} backend (a checkpoint directory)")
    check_sampling(cfg.temperature, cfg.top_p)
    if cfg.n > 1 and cfg.temperature == 0:
        import sys

        print(f"persd eval: warning: --n {cfg.n} at temperature 0 (greedy) gives {cfg.n} identical samples per "
              f"task; set --temperature (the paper's pass@k protocols sample at 0.2-0.8)", file=sys.stderr)


__all__ = ["EvalConfig", "PROMPT_VERSION", "build_parser", "parse_args", "add_sampling_flags"]
