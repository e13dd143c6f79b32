"""`persd eval` configuration: one dataclass, its flags, protocol presets, and the fingerprint a rerun must keep.

Precedence: a flag on the command line > the `--protocol` preset > the defaults below.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.evaluation.protocols import PROTOCOLS, protocol_defaults
from runtime.errors import UsageError

PROMPT_VERSION = 1  # bump when eval's prompts (direct or refine) change: it alters results
STUDENT_BACKENDS = ("auto", "vllm", "openai", "hf")


@dataclass
class EvalConfig:
    tasks: str = ""
    out: str = ""
    protocol: str | None = None
    task_ids: str | None = None  # a file (JSON list or one id a line) or "@mbpp-307"
    limit: int | None = None
    # student
    student_backend: str = "auto"
    student_model: str | None = None
    student_url: str | None = None
    student_chat: bool = False
    student_concurrency: int = 256
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_gib: float | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
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

    def resolved_student_backend(self) -> str:
        """auto: openai with --student-url, vllm on a GPU machine, else hf (collect's rule, reused)."""
        from engine.config import CollectConfig

        return CollectConfig(student_backend=self.student_backend,
                             student_url=self.student_url).resolved_student_backend()

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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a bad flag names the flag: exit 2, no traceback
        raise UsageError(f"{message} (persd eval --help for the options)")


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError
    return n


def _nonneg_int(v: str) -> int:
    n = int(v)
    if n < 0:
        raise ValueError
    return n


def _positive_float(v: str) -> float:
    x = float(v)
    if not x > 0:
        raise ValueError
    return x


def _ks(v: str | list | tuple) -> tuple[int, ...]:
    items = v if isinstance(v, (list, tuple)) else [s.strip() for s in str(v).split(",") if s.strip()]
    try:
        ks = tuple(sorted({int(x) for x in items}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {v!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {v!r}")
    return ks


_positive_int.__name__ = "positive int"
_nonneg_int.__name__ = "non-negative int"
_positive_float.__name__ = "positive number"


def add_student_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("student")
    g.add_argument("--student-backend", choices=STUDENT_BACKENDS,
                   help="auto: openai with --student-url, vllm on a GPU machine, else hf")
    g.add_argument("--student-model", help="checkpoint path (hf, vllm) or the served model's name (openai)")
    g.add_argument("--student-url", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--student-chat", action=argparse.BooleanOptionalAction, help="an instruct model: chat messages")
    g.add_argument("--student-concurrency", type=_positive_int, help="student requests in flight (default 256)")
    g.add_argument("--tensor-parallel-size", type=_positive_int, help="vllm: GPUs per model (default 1)")
    g.add_argument("--gpu-memory-utilization", type=_positive_float,
                   help="vllm: fraction of accelerator memory (on CPU: of RAM) to take (default 0.9)")
    g.add_argument("--kv-cache-gib", type=_positive_float, help="vllm: KV cache size in GiB (CPU machines)")
    g.add_argument("--dtype", help="model dtype: auto, bfloat16, float16, float32 (default auto)")
    g.add_argument("--max-model-len", type=_positive_int, help="context length the backend allows")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling and scoring")
    g.add_argument("--n", type=_positive_int, help="samples per task (default 1)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default 0: greedy)")
    g.add_argument("--top-p", type=float, help="top_p (default 0.95)")
    g.add_argument("--max-tokens", type=_positive_int, help="max new tokens per sample (default 512)")
    g.add_argument("--k", type=_ks, help="comma list of k for pass@k (default 1; k above n is left out)")
    g.add_argument("--seed", type=int, help="base sampling seed (default 0)")
    g.add_argument("--refine-steps", type=_nonneg_int,
                   help="refine-inference: up to S rounds of visible-test feedback in the persd-refine prompt "
                        "layout (default 0; the paper uses 2)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="persd eval",
                description="pass@k of a student on HumanEval, MBPP or any task file, with optional "
                            "refine-inference. Writes DIR/results.jsonl and DIR/summary.json; rerun to resume.")
    g = p.add_argument_group("tasks and output")
    g.add_argument("--tasks", help="JSONL task file or a built-in set (humaneval, mbpp)")
    g.add_argument("--out", help="output directory (rerun with the same one to resume)")
    g.add_argument("--protocol", choices=tuple(PROTOCOLS),
                   help="fill in the paper's settings (tasks, n, temperature, k, MBPP ids); flags still win")
    g.add_argument("--task-ids", help="evaluate only these task ids: a JSON list or one id a line "
                                      "(integers match MBPP/N)")
    g.add_argument("--limit", type=_positive_int, help="only the first N selected tasks")
    add_student_flags(p)
    add_sampling_flags(p)
    g = p.add_argument_group("flow")
    g.add_argument("--max-in-flight", type=_positive_int, help="tasks alive at once (default 64)")
    g.add_argument("--sandbox-workers", type=_nonneg_int, help="sandbox processes (default: one per core)")
    g.add_argument("--exec-timeout", type=_positive_float, help="seconds per execution (default 10)")
    g.add_argument("--force", action="store_true", default=None,
                   help="discard earlier results in --out whose settings differ, and start over")
    g.add_argument("--progress", choices=("auto", "live", "plain", "none"))
    g.add_argument("--log-every", type=_positive_float, help="seconds between plain progress lines (default 10)")
    return p


def parse_args(argv: list[str]) -> EvalConfig:
    ns = build_parser().parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None}
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
    backend = cfg.resolved_student_backend()
    if backend == "openai" and not cfg.student_url:
        raise UsageError("--student-backend openai needs --student-url (e.g. http://127.0.0.1:8000/v1)")
    if backend in ("hf", "vllm") and not cfg.student_model:
        raise UsageError(f"--student-model is required with the {backend} backend (a checkpoint directory)")
    if not 0 <= cfg.temperature <= 5:
        raise UsageError(f"--temperature {cfg.temperature}: expected a value in [0, 5]")
    if not 0 < cfg.top_p <= 1:
        raise UsageError(f"--top-p {cfg.top_p}: expected a value in (0, 1]")


__all__ = ["EvalConfig", "PROMPT_VERSION", "build_parser", "parse_args", "add_student_flags", "add_sampling_flags"]
