"""`persd collect` configuration: one dataclass, its flags, `--config FILE.toml`, and what a rerun may change.

Precedence: command-line flag > key in the TOML file (any flag, with `-` or `_`) > default.
`fingerprint()` is the part of the configuration that alters results; a rerun in the
same output directory must keep it (or pass `--force`).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from persd.engine.flags import (PROGRESS_MODES, STUDENT_BACKENDS, add_student_flags, nonneg_int, parser_for,
                          positive_float, positive_int, toml_defaults)
from persd.runtime.errors import UsageError

FORMATS = ("persd", "persd-refine", "inpd", "stand")
PROMPT_VERSION = 1  # bump when the engine's teacher prompts change (it alters results)


def resolve_student_backend(backend: str, url: str | None = None) -> str:
    """The backend `auto` stands for: openai with a student URL, vllm on a GPU machine with vLLM
    installed, else hf. Any other name is returned as given. (collect, eval and loop share this rule.)"""
    if backend != "auto":
        return backend
    if url:
        return "openai"
    if shutil.which("nvidia-smi") and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "hf"


@dataclass
class StudentFields:
    """The student options collect and eval share (flags: persd.engine.flags.add_student_flags; the runtime
    StudentConfig they become: persd.engine.collect.backends.student_config). Not in either fingerprint."""

    student_backend: str = "auto"  # auto: openai with --student-url, vllm on a GPU machine, else hf
    student_model: str | None = None
    student_url: str | None = None
    student_chat: bool = False
    student_concurrency: int = 64
    tensor_parallel_size: int = 1  # vllm engine options, passed through to StudentConfig
    gpu_memory_utilization: float | None = None  # None: vLLM's default on a GPU, persd's sizing on CPU
    kv_cache_gib: float | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    enforce_eager: bool | None = None  # None: eager on CPU, vLLM's default (compiled) on GPU

    def resolved_student_backend(self) -> str:
        return resolve_student_backend(self.student_backend, self.student_url)


@dataclass
class CollectConfig(StudentFields):
    tasks: str = ""
    out: str = ""
    limit: int | None = None  # only the first N tasks of the source
    # student: StudentFields (student_model None: the tiny local model, offline demo), and its sampling
    samples: int = 1
    temperature: float = 0.3
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0
    # teacher
    teacher_url: str | None = None  # None: the offline stand-in teacher (answers from references)
    teacher_model: str = "gpt-3.5-turbo"
    teacher_api_key_env: str = "OPENAI_API_KEY"
    teacher_temperature: float = 0.0
    teacher_max_tokens: int = 1024
    teacher_max_in_flight: int = 64
    rpm: int = 3500
    tpm: int = 1_000_000
    max_cost: float | None = None
    teacher_retries: int = 8  # sends per request before the run stops (resumably)
    teacher_retry_delay: float = 0.5  # first backoff, doubling up to 30 s
    # what to collect
    formats: tuple[str, ...] = ("persd", "persd-refine")
    refine_turns: int = 1
    testgen_inputs: int = 5
    round: int = 1  # written to meta.round (multi-round distillation)
    # flow and layout
    max_in_flight: int = 256
    shard_size: int = 500
    num_shards: int = 1
    shard_index: int = 0
    sandbox_workers: int = 0
    exec_timeout: float = 10.0
    # run control
    force: bool = False
    grace: float = 10.0  # seconds in-flight tasks get to finish after SIGINT/SIGTERM
    progress: str = "auto"  # auto | live | plain | none
    log_every: float = 10.0  # seconds between plain progress lines
    config: str | None = None

    # ---- derived

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def standin_teacher(self) -> bool:
        return not self.teacher_url

    @property
    def partition(self) -> str:
        return "" if self.num_shards == 1 else f"part-{self.shard_index:04d}-of-{self.num_shards:04d}"

    def public(self) -> dict[str, Any]:
        """The configuration as written to the manifest: no secrets (the key's variable name only)."""
        data = asdict(self)
        data["formats"] = list(self.formats)
        data["student_backend"] = self.resolved_student_backend()
        return data

    def fingerprint(self) -> dict[str, Any]:
        """What alters the records: a rerun that changes any of it is refused without --force."""
        return {
            "tasks": self.tasks,
            "limit": self.limit,
            "student_model": self.student_model,
            "student_chat": self.student_chat,
            "samples": self.samples,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "teacher_model": self.teacher_model if not self.standin_teacher else "offline-stand-in",
            "teacher_temperature": self.teacher_temperature,
            "teacher_max_tokens": self.teacher_max_tokens,
            "formats": sorted(self.formats),
            "refine_turns": self.refine_turns,
            "testgen_inputs": self.testgen_inputs,
            "round": self.round,
            "shard_size": self.shard_size,
            "exec_timeout": self.exec_timeout,
            "prompt_version": PROMPT_VERSION,
        }


# ------------------------------------------------------------------ flags


def _formats(v: str | list) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [s.strip() for s in str(v).split(",")]
    items = [s for s in items if s]
    bad = [s for s in items if s not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(items))


def build_parser() -> argparse.ArgumentParser:
    p = parser_for(
        "collect",
        description="Personalised-distillation collection: student attempt -> sandbox -> teacher refinement -> "
        "verified training records, written as sealed shards. Rerun the same command to resume.",
    )
    g = p.add_argument_group("input and output")
    g.add_argument("--tasks", help="JSONL task file or a built-in set (humaneval, mbpp)")
    g.add_argument("--out", help="output directory (rerun with the same one to resume)")
    g.add_argument("--limit", type=positive_int, help="only the first N tasks")
    g.add_argument("--config", help="TOML file; any flag as a key (flags on the command line win)")
    g.add_argument("--formats", type=_formats, help=f"comma list of {', '.join(FORMATS)} (default persd,persd-refine)")
    g.add_argument("--shard-size", type=positive_int, help="tasks per shard (default 500)")
    g.add_argument("--num-shards", type=positive_int, help="number of partitions (machines); default from SLURM_ARRAY_TASK_COUNT, else 1")
    g.add_argument("--shard-index", type=nonneg_int, help="this machine's partition; default from SLURM_ARRAY_TASK_ID, else 0")
    g = add_student_flags(p, model_help="model path or name (default: a tiny local model, for the offline demo)",
                          concurrency_default=64, vllm=True)
    g.add_argument("--samples", type=positive_int, help="student attempts per task (default 1)")
    g.add_argument("--temperature", type=float, help="student sampling temperature (default 0.3)")
    g.add_argument("--top-p", type=float, help="student top_p (default 0.95)")
    g.add_argument("--max-tokens", type=positive_int, help="student max new tokens (default 512)")
    g.add_argument("--seed", type=int, help="base sampling seed (default 0)")
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher-url", help="OpenAI-compatible base URL; without it an offline stand-in answers from references")
    g.add_argument("--teacher-model")
    g.add_argument("--teacher-api-key-env", help="environment variable holding the key (default OPENAI_API_KEY)")
    g.add_argument("--teacher-temperature", type=float)
    g.add_argument("--teacher-max-tokens", type=positive_int)
    g.add_argument("--teacher-max-in-flight", type=positive_int)
    g.add_argument("--rpm", type=positive_int, help="teacher requests per minute, this process (default 3500)")
    g.add_argument("--tpm", type=positive_int, help="teacher tokens per minute, this process (default 1000000)")
    g.add_argument("--max-cost", type=positive_float, help="stop (resumably) once teacher spending reaches this many dollars")
    g.add_argument("--teacher-retries", type=positive_int, help="sends per teacher request before giving up (default 8)")
    g.add_argument("--teacher-retry-delay", type=positive_float, help="first retry backoff in seconds, doubling (default 0.5)")
    g.add_argument("--refine-turns", type=positive_int, help="teacher turns per failed task (default 1)")
    g.add_argument("--round", type=positive_int, help="distillation round written to each record's meta.round (default 1)")
    g.add_argument("--testgen-inputs", type=positive_int, help="test inputs asked of the teacher for tasks without tests (default 5)")
    g = p.add_argument_group("flow")
    g.add_argument("--max-in-flight", type=positive_int, help="tasks alive at once (default 256)")
    g.add_argument("--sandbox-workers", type=nonneg_int, help="sandbox processes (default: one per core)")
    g.add_argument("--exec-timeout", type=positive_float, help="seconds per sandbox execution (default 10)")
    g.add_argument("--force", action="store_true", default=None, help="accept a rerun whose settings alter results")
    g.add_argument("--grace", type=float, help="seconds in-flight tasks get to finish on SIGINT/SIGTERM (default 10)")
    g.add_argument("--progress", choices=PROGRESS_MODES)
    g.add_argument("--log-every", type=positive_float, help="seconds between plain progress lines (default 10)")
    return p


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> CollectConfig:
    env = os.environ if environ is None else environ
    parser = build_parser()
    ns = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if ns.config:
        values.update(toml_defaults(ns.config, parser))
    values.update({k: v for k, v in vars(ns).items() if v is not None})
    known = {f.name for f in fields(CollectConfig)}
    cfg = CollectConfig(**{k: v for k, v in values.items() if k in known})
    # many machines: SLURM array defaults
    if "num_shards" not in values and env.get("SLURM_ARRAY_TASK_COUNT"):
        cfg.num_shards = _env_int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    if "shard_index" not in values and env.get("SLURM_ARRAY_TASK_ID"):
        idx = _env_int(env, "SLURM_ARRAY_TASK_ID", 0)
        lo = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0) if env.get("SLURM_ARRAY_TASK_MIN") else 0
        cfg.shard_index = idx - lo
    validate(cfg)
    return cfg


def _env_int(env, name: str, minimum: int) -> int:
    try:
        n = int(env[name])
    except ValueError:
        raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from None
    if n < minimum:
        raise UsageError(f"environment variable {name}={n} is below {minimum}")
    return n


def check_student_url(cfg: StudentFields) -> str:
    """The resolved student backend, once the openai backend is known to have its --student-url."""
    backend = cfg.resolved_student_backend()
    if backend == "openai" and not cfg.student_url:
        raise UsageError("--student-backend openai needs --student-url (e.g. http://127.0.0.1:8000/v1)")
    return backend


def check_sampling(temperature: float, top_p: float) -> None:
    if not 0 <= temperature <= 5:
        raise UsageError(f"--temperature {temperature}: expected a value in [0, 5]")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p {top_p}: expected a value in (0, 1]")


def validate(cfg: CollectConfig) -> None:
    if not cfg.tasks:
        raise UsageError("--tasks is required (a JSONL file or humaneval/mbpp)")
    if not cfg.out:
        raise UsageError("--out is required (the output directory; rerun with it to resume)")
    if not 0 <= cfg.shard_index < cfg.num_shards:
        raise UsageError(f"--shard-index {cfg.shard_index} is out of range for --num-shards {cfg.num_shards}")
    backend = check_student_url(cfg)
    if backend == "openai" and not cfg.student_model:
        raise UsageError("--student-backend openai needs --student-model (the model name the server serves)")
    check_sampling(cfg.temperature, cfg.top_p)
    if cfg.progress not in PROGRESS_MODES:
        raise UsageError(f"--progress {cfg.progress!r}: choose auto, live, plain or none")
    if cfg.teacher_url and not cfg.teacher_url.startswith(("http://", "https://")):
        raise UsageError(f"--teacher-url {cfg.teacher_url!r}: expected an http(s) URL")
    if cfg.grace < 0:
        raise UsageError("--grace must be >= 0")


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human lines naming each changed setting, as flags."""
    derived = {"tasks_count": "the number of tasks in --tasks", "tasks_sha256": "the content of --tasks",
               "prompt_version": "persd's prompt texts (a newer persd)"}
    lines = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "tasks_sha256":
                lines.append(f"{derived[key]} changed")
                continue
            name = derived.get(key, "--" + key.replace("_", "-"))
            lines.append(f"{name}: was {old.get(key)!r}, now {new.get(key)!r}")
    return lines


__all__ = ["CollectConfig", "StudentFields", "FORMATS", "STUDENT_BACKENDS", "parse_args", "build_parser",
           "describe_difference", "resolve_student_backend", "check_student_url", "check_sampling"]
