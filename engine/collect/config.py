"""`persd collect` configuration: one dataclass whose fields carry their help and whether they change results.

The command line, `--config FILE.toml` and the fingerprint are generated from it (persd.config):
precedence is flag > key in the TOML file (any field, with `-` or `_`) > default. `fingerprint()`
is the part of the configuration that alters results; a rerun in the same output directory must
keep it (or pass `--force`).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from persd import config
from persd.config import (
    Command,
    build,
    fingerprint,
    gather,
    nonneg_float,
    nonneg_int,
    opt,
    positive_float,
    positive_int,
)
from persd.engine.collect.cluster import RayFields
from persd.engine.collect.layout import partition_name
from persd.engine.timelimits import TimeLimitFields
from persd.runtime.errors import ConfigError, UsageError
from persd.runtime.http import RetryPolicy
from persd.runtime.teacher.config import TeacherConfig

STUDENT_BACKENDS = ("vllm", "openai", "hf")
PROGRESS_MODES = ("auto", "live", "plain", "none")
FORMATS = ("persd", "persd-refine", "inpd", "stand")
PROTOCOLS = ("persd", "paper")  # paper: the reference implementation's protocol (engine/paper/, docs/fidelity.md)
TEACHER_CONTEXTS = ("gold", "none")


def _prices(v: str | dict) -> dict[str, list[float]]:
    """'m1=0.15:0.6,m2=1:2' (a flag) or {m1 = [0.15, 0.6]} (a TOML table) -> {model: [in, out]}."""
    if isinstance(v, dict):
        items = list(v.items())
    else:
        items = []
        for part in (x.strip() for x in str(v).split(",") if x.strip()):
            model, _, pair = part.partition("=")
            items.append((model.strip(), pair.split(":")))
    out: dict[str, list[float]] = {}
    for model, pair in items:
        try:
            if isinstance(pair, dict):
                pair = [pair["input"], pair["output"]]
            a, b = (float(x) for x in pair)
            if not model or a < 0 or b < 0:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise argparse.ArgumentTypeError(
                f"expected MODEL=IN:OUT (USD per 1M input and output tokens), got {model}={pair!r}") from None
        out[model] = [a, b]
    return out


def _or_unset(cast: Any, word: str) -> Any:
    """A value, or `word` ('default', 'none') for "send nothing": None."""
    def convert(v: Any) -> Any:
        return None if v is None or str(v).strip().lower() == word else cast(v)

    convert.__name__ = f"{getattr(cast, '__name__', 'value')} or '{word}'"
    return convert
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


def _formats(v: str | list) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [s.strip() for s in str(v).split(",")]
    items = [s for s in items if s]
    bad = [s for s in items if s not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(items))


# ------------------------------------------------------------------ the student options collect and eval share


@dataclass
class StudentFields:
    """The student options collect and eval share (the runtime StudentConfig they become:
    persd.engine.collect.backends.student_config). Only the model and the chat mode change results."""

    student_backend: str = opt("auto", help="auto: openai with --student-url, vllm on a GPU machine, else hf",
                               changes_results=False, choices=("auto",) + STUDENT_BACKENDS, group="student")
    student_model: str | None = opt(None, help="checkpoint path (hf, vllm) or the served model's name (openai)",
                                    changes_results=True, group="student", shown="a tiny local model (demo)")
    student_url: str | None = opt(None, help="base URL of an OpenAI-compatible server (openai backend), "
                                             "e.g. http://127.0.0.1:8000/v1", changes_results=False, group="student")
    student_chat: bool = opt(False, help="an instruct model: chat template / chat messages", changes_results=True,
                             group="student")
    student_concurrency: int = opt(64, help="student requests in flight", changes_results=False, type=positive_int,
                                   group="student")
    tensor_parallel_size: int = opt(1, help="vllm: GPUs per model", changes_results=False, type=positive_int,
                                    group="student")
    gpu_memory_utilization: float | None = opt(None, help="vllm: fraction of accelerator memory (on CPU: of the "
                                               "NUMA node's RAM) to take", changes_results=False, type=positive_float,
                                               group="student", shown="vLLM's 0.9 on a GPU; on CPU persd sizes the "
                                               "KV cache from free memory")
    kv_cache_gib: float | None = opt(None, help="vllm: KV cache size in GiB (wins over the memory fraction)",
                                     changes_results=False, type=positive_float, group="student")
    dtype: str = opt("auto", help="model dtype: auto, bfloat16, float16, float32", changes_results=False,
                     group="student")
    max_model_len: int | None = opt(None, help="context length the backend allows", changes_results=False,
                                    type=positive_int, group="student")
    enforce_eager: bool | None = opt(None, help="vllm: run the model without torch.compile (compiling adds "
                                     "minutes to every start with a new model path on CPU)", changes_results=False,
                                     group="student", shown="yes on CPU, no on GPU")

    def resolved_student_backend(self) -> str:
        return resolve_student_backend(self.student_backend, self.student_url)


# ------------------------------------------------------------------ persd collect


@dataclass
class CollectConfig(StudentFields, TimeLimitFields, RayFields):
    # input and output
    tasks: str = opt("", help="JSONL task file or a built-in set (humaneval, mbpp)", changes_results=True,
                     group="input and output", shown="required")
    out: str = opt("", help="output directory (rerun with the same one to resume)", changes_results=False,
                   group="input and output", shown="required")
    limit: int | None = opt(None, help="only the first N tasks", changes_results=True, type=positive_int,
                            group="input and output", shown="all")
    formats: tuple[str, ...] = opt(("persd", "persd-refine"), help=f"records to write: comma list of "
                                   f"{', '.join(FORMATS)}", changes_results=True, type=_formats,
                                   group="input and output")
    shard_size: int = opt(500, help="tasks per shard", changes_results=True, type=positive_int,
                          group="input and output")
    preset: str | None = opt(None, help="settings under --config: paper (the reference implementation's "
                             "protocol, docs/paper.md) or a TOML file of these options", changes_results=False,
                             group="input and output", metavar="NAME|FILE.toml")
    protocol: str = opt("persd", help="persd, or paper: the reference implementation's prompts, checker and "
                        "formats (set by --preset paper)", changes_results=True, choices=PROTOCOLS,
                        group="input and output")
    num_shards: int = opt(1, help="number of partitions (machines)", changes_results=False, type=positive_int,
                          group="input and output", shown="SLURM_ARRAY_TASK_COUNT, else 1")
    shard_index: int = opt(0, help="this machine's partition", changes_results=False, type=nonneg_int,
                           group="input and output", shown="from SLURM_ARRAY_TASK_ID, else 0")
    # the student's sampling (its model and backend: StudentFields)
    samples: int = opt(1, help="student attempts per task", changes_results=True, type=positive_int,
                       group="student")
    temperature: float = opt(0.3, help="student sampling temperature", changes_results=True, group="student")
    top_p: float = opt(0.95, help="student top_p", changes_results=True, group="student")
    max_tokens: int = opt(512, help="student max new tokens", changes_results=True, type=positive_int,
                          group="student")
    seed: int = opt(0, help="base sampling seed", changes_results=True, group="student")
    # teacher (its defaults are the runtime TeacherConfig's: one source)
    teacher_url: str | None = opt(None, help="OpenAI-compatible base URL; without it an offline stand-in "
                                             "answers from the tasks' references", changes_results=False,
                                  group="teacher", shown="the offline stand-in")
    teacher_model: str = opt(TeacherConfig.model, help="the teacher model's name", changes_results=True,
                             group="teacher")
    teacher_api_key_env: str = opt(TeacherConfig.api_key_env, help="environment variable holding the key",
                                   changes_results=False, group="teacher")
    teacher_temperature: float | None = opt(0.0, help="teacher sampling temperature, or 'default' to send none "
                                            "(the API's default; the paper preset)", changes_results=True,
                                            type=_or_unset(float, "default"), group="teacher")
    teacher_max_tokens: int | None = opt(1024, help="teacher max new tokens, or 'none' to send none (the paper "
                                         "preset)", changes_results=True, type=_or_unset(positive_int, "none"),
                                         group="teacher")
    teacher_context: str | None = opt(None, help="paper protocol: gold shows the teacher the dataset's solution as "
                                      "its own first answer, as the reference did; none leaves it out",
                                      changes_results=True, choices=TEACHER_CONTEXTS, group="teacher",
                                      shown="gold with --protocol paper")
    price_in: float | None = opt(None, help="USD per 1M teacher input tokens (with --price-out; overrides the "
                                 "price table)", changes_results=False, type=nonneg_float, group="teacher",
                                 shown="the price table")
    price_out: float | None = opt(None, help="USD per 1M teacher output tokens (with --price-in)",
                                  changes_results=False, type=nonneg_float, group="teacher",
                                  shown="the price table")
    teacher_top_p: float | None = opt(None, help="teacher nucleus sampling top_p", changes_results=True,
                                      type=positive_float, group="teacher", shown="the provider's")
    teacher_max_in_flight: int = opt(TeacherConfig.max_in_flight, help="teacher requests in flight",
                                     changes_results=False, type=positive_int, group="teacher")
    rpm: int = opt(TeacherConfig.rpm, help="teacher requests per minute, this process", changes_results=False,
                   type=positive_int, group="teacher")
    tpm: int = opt(TeacherConfig.tpm, help="teacher tokens per minute, this process", changes_results=False,
                   type=positive_int, group="teacher")
    max_cost: float | None = opt(None, help="stop (resumably) once teacher spending reaches this many dollars",
                                 changes_results=False, type=positive_float, group="teacher", shown="no limit")
    teacher_retries: int = opt(RetryPolicy.max_attempts, help="sends per teacher request before the run stops "
                               "(resumably)", changes_results=False, type=positive_int, group="teacher")
    teacher_retry_delay: float = opt(RetryPolicy.base_delay_s, help="first retry backoff in seconds, doubling up "
                                     "to --teacher-max-retry-delay", changes_results=False, type=positive_float,
                                     group="teacher")
    teacher_max_retry_delay: float = opt(RetryPolicy.max_delay_s, help="cap on one retry backoff, in seconds",
                                         changes_results=False, type=positive_float, group="teacher")
    teacher_deadline: float = opt(RetryPolicy.deadline_s, help="seconds one request may spend on retries "
                                  "(rate-limit waits excluded)", changes_results=False, type=positive_float,
                                  group="teacher")
    teacher_timeout: float = opt(RetryPolicy.request_timeout_s, help="seconds one send waits for the teacher's "
                                 "answer before it is retried (a provider that accepts and never answers)",
                                 changes_results=False, type=positive_float, group="teacher")
    prices: dict[str, Any] | None = opt(None, help="prices of several models: 'MODEL=IN:OUT,...' USD per 1M "
                                        "tokens (config file: a table, prices = {model = [in, out]})",
                                        changes_results=False, type=_prices, group="teacher",
                                        shown="the price table")
    teacher_headroom: float = opt(TeacherConfig.headroom, help="pace at this fraction of --rpm and --tpm",
                                  changes_results=False, type=positive_float, group="teacher")
    teacher_limit_window: float = opt(TeacherConfig.limit_window_s, help="shortest window (s) over which the "
                                      "provider may enforce --rpm/--tpm", changes_results=False,
                                      type=positive_float, group="teacher")
    teacher_jitter: float = opt(TeacherConfig.jitter_s, help="seconds the network may bunch requests up",
                                changes_results=False, type=nonneg_float, group="teacher")
    teacher_reconcile_tokens: bool = opt(TeacherConfig.reconcile_tokens, help="give back over-estimated tokens "
                                         "from each answer's usage", changes_results=False, group="teacher")
    refine_turns: int = opt(1, help="teacher turns per failed task", changes_results=True, type=positive_int,
                            group="teacher")
    testgen_inputs: int = opt(5, help="test inputs asked of the teacher for tasks without tests",
                              changes_results=True, type=positive_int, group="teacher")
    round: int = opt(1, help="distillation round written to each record's meta.round", changes_results=True,
                     type=positive_int, group="teacher")
    # flow and run control
    max_in_flight: int = opt(256, help="tasks alive at once", changes_results=False, type=positive_int,
                             group="flow")
    sandbox_workers: int = opt(0, help="sandbox processes", changes_results=False, type=nonneg_int, group="flow",
                               shown="two per core with calibrated time limits, one with fixed")
    exec_timeout: float = opt(10.0, help="seconds per sandbox execution: the wall-clock limit of a task without "
                              "a reference, the most CPU time a calibrated one gets", changes_results=True,
                              type=positive_float, group="flow")
    force: bool = opt(False, help="accept a rerun whose settings alter results", changes_results=False,
                      group="flow")
    grace: float = opt(10.0, help="seconds in-flight tasks get to finish on SIGINT/SIGTERM",
                       changes_results=False, type=nonneg_float, group="flow")
    progress: str = opt("auto", help="progress display", changes_results=False, choices=PROGRESS_MODES,
                        group="flow")
    log_every: float = opt(10.0, help="seconds between plain progress lines", changes_results=False,
                           type=positive_float, group="flow")

    # ---- derived

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def standin_teacher(self) -> bool:
        return not self.teacher_url

    @property
    def partition(self) -> str:
        return partition_name(self.num_shards, self.shard_index)

    def teacher_prices(self) -> dict[str, tuple[float, float]] | None:
        """Price overrides: --prices (or the config's table), then --price-in/--price-out for --teacher-model."""
        prices = {m: (float(a), float(b)) for m, (a, b) in (self.prices or {}).items()}
        if self.price_in is not None and self.price_out is not None:
            prices[self.teacher_model] = (self.price_in, self.price_out)
        return prices or None

    def public(self) -> dict[str, Any]:
        """The configuration as written to the manifest: no secrets (the key's variable name only)."""
        data = asdict(self)
        data["formats"] = list(self.formats)
        data["student_backend"] = self.resolved_student_backend()
        return data

    def fingerprint(self) -> dict[str, Any]:
        """What alters the records (every field marked changes_results): a rerun that changes any of it is
        refused without --force."""
        fp = fingerprint(self)
        fp["formats"] = sorted(self.formats)
        if self.standin_teacher:
            fp["teacher_model"] = "offline-stand-in"
        fp["prompt_version"] = PROMPT_VERSION
        return fp

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", "required (a JSONL file or humaneval/mbpp)")
        if not self.out:
            raise ConfigError("out", "required (the output directory; rerun with it to resume)")
        if not 0 <= self.shard_index < self.num_shards:
            raise ConfigError("shard_index", f"{self.shard_index} is out of range for {self.num_shards} shard(s)")
        backend = check_student_url(self)
        if backend == "openai" and not self.student_model:
            raise ConfigError("student_model", "the openai backend needs the model name the server serves")
        check_sampling(self.temperature, self.top_p)
        if self.teacher_top_p is not None and not 0 < self.teacher_top_p <= 1:
            raise ConfigError("teacher_top_p", f"{self.teacher_top_p}: expected a value in (0, 1]")
        if self.teacher_url and not self.teacher_url.startswith(("http://", "https://")):
            raise ConfigError("teacher_url", f"{self.teacher_url!r}: expected an http(s) URL")
        if self.teacher_context is not None and self.protocol != "paper":
            raise ConfigError("teacher_context", "applies to the paper protocol (--preset paper)")
        if (self.price_in is None) != (self.price_out is None):
            raise ConfigError("price_in", "--price-in and --price-out go together (USD per 1M input and output "
                              "tokens)")
        if self.max_cost is not None and self.teacher_url:
            from persd.runtime.teacher.pricing import PriceTable

            if PriceTable(self.teacher_prices()).lookup(self.teacher_model) is None:
                raise ConfigError("max_cost", f"needs the price of --teacher-model {self.teacher_model!r}, which is "
                                  f"not in the built-in table: give --price-in and --price-out (USD per 1M tokens)")
        if not 0 < self.teacher_headroom <= 1:
            raise ConfigError("teacher_headroom", f"{self.teacher_headroom}: expected a fraction in (0, 1]")
        self.check_ray()
        if self.ray_address() and self.num_shards > 1:
            raise ConfigError("ray", "one driver runs the whole task set on the cluster: drop --num-shards "
                              "(static partitions are for clusters without Ray, docs/cluster.md)")



COLLECT = Command(
    CollectConfig, "collect",
    description="Personalised-distillation collection: student attempt -> sandbox -> teacher refinement -> "
                "verified training records, written as sealed shards. Rerun the same command to resume.",
    preset_field="preset", preset_package="persd.engine.collect.presets",
    groups=("input and output", "student", "teacher", "flow", "ray cluster"))




# keys the README documents for the teacher (TeacherConfig's names), accepted in a --config file
CONFIG_ALIASES = {"headroom": "teacher_headroom", "limit_window_s": "teacher_limit_window",
                  "jitter_s": "teacher_jitter", "reconcile_tokens": "teacher_reconcile_tokens",
                  "request_timeout_s": "teacher_timeout"}
RETRY_KEYS = {"max_attempts": "teacher_retries", "base_delay_s": "teacher_retry_delay",
              "max_delay_s": "teacher_max_retry_delay", "deadline_s": "teacher_deadline",
              "request_timeout_s": "teacher_timeout"}


def build_parser() -> argparse.ArgumentParser:
    return config.build_parser(COLLECT)


def parse_args(argv: list[str], environ: dict[str, str] | None = None) -> CollectConfig:
    env = os.environ if environ is None else environ
    values, _, src = gather(COLLECT, argv)
    # many machines: SLURM array defaults
    if "num_shards" not in values and env.get("SLURM_ARRAY_TASK_COUNT"):
        values["num_shards"] = _env_int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    if "shard_index" not in values and env.get("SLURM_ARRAY_TASK_ID"):
        idx = _env_int(env, "SLURM_ARRAY_TASK_ID", 0)
        lo = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0) if env.get("SLURM_ARRAY_TASK_MIN") else 0
        values["shard_index"] = idx - lo
    return build(CollectConfig, values, src)


def _env_int(env, name: str, minimum: int) -> int:
    try:
        n = int(env[name])
    except ValueError:
        raise UsageError(f"environment variable {name}={env[name]!r} is not an integer") from None
    if n < minimum:
        raise UsageError(f"environment variable {name}={n} is below {minimum}")
    return n


def check_student_url(cfg: StudentFields) -> str:
    """The resolved student backend, once the openai backend is known to have its student URL."""
    backend = cfg.resolved_student_backend()
    if backend == "openai" and not cfg.student_url:
        raise ConfigError("student_url", "the openai backend needs it (e.g. http://127.0.0.1:8000/v1)")
    if backend in ("hf", "vllm") and cfg.student_url:
        raise ConfigError("student_url", f"is for --student-backend openai; the {backend} backend loads "
                          f"--student-model itself (drop one of the two)")
    return backend


def check_student_model(cfg: StudentFields) -> None:
    """A local backend's --student-model must be a loadable model directory (checked before loading)."""
    from persd.runtime.student.model_dir import model_dir_problem

    if cfg.resolved_student_backend() in ("hf", "vllm") and cfg.student_model:
        problem = model_dir_problem(cfg.student_model)
        if problem:
            raise UsageError(f"--student-model {problem}")


def check_sampling(temperature: float, top_p: float) -> None:
    if not 0 <= temperature <= 5:
        raise ConfigError("temperature", f"{temperature}: expected a value in [0, 5]")
    if not 0 < top_p <= 1:
        raise ConfigError("top_p", f"{top_p}: expected a value in (0, 1]")


def describe_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human lines naming each changed setting, as flags (a nested section `train` as --train.KEY)."""
    derived = {"tasks_count": "the number of tasks in --tasks", "tasks_sha256": "the content of --tasks",
               "prompt_version": "persd's prompt texts (a newer persd)"}
    lines = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if isinstance(was, dict) or isinstance(now, dict):
            lines += describe_difference(was or {}, now or {}, f"{prefix}{key}.")
        elif key == "tasks_sha256":
            lines.append(f"{derived[key]} changed")
        else:
            name = derived.get(key) if not prefix else None
            lines.append(f"{name or '--' + prefix + key.replace('_', '-')}: was {was!r}, now {now!r}")
    return lines


__all__ = ["CollectConfig", "StudentFields", "FORMATS", "STUDENT_BACKENDS", "PROGRESS_MODES", "COLLECT",
           "parse_args", "build_parser", "describe_difference", "resolve_student_backend", "check_student_url",
           "check_sampling"]
