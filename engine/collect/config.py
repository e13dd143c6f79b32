"""`persd collect` configuration: one dataclass whose fields carry their help and whether they change results.

The command line, `--config FILE.toml` and the fingerprint are generated from it (persd.config):
precedence is flag > key in the TOML file (any field, with `-` or `_`) > default. `fingerprint()`
is the part of the configuration that alters results; a rerun in the same output directory must
keep it (or pass `--force`).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

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
    section,
    value_at,
)
from persd.engine.collect.cluster import RayFields
from persd.engine.collect.layout import partition_name
from persd.engine.rundirs.settings import describe_difference  # its older home
from persd.engine.tasks import TaskSourceFields
from persd.engine.timelimits import TimeLimitFields
from persd.runtime.errors import ConfigError, UsageError
from persd.runtime.sandbox.config import SandboxConfig
from persd.runtime.student.base import BACKENDS as STUDENT_BACKENDS
from persd.runtime.student.base import StudentConfig, resolve_backend
from persd.runtime.teacher.config import TeacherConfig

PROGRESS_MODES = ("auto", "live", "plain", "none")
FORMATS = ("persd", "persd-refine", "inpd", "stand", "refine-gold")  # refine-gold: the paper protocol only
PROTOCOLS = ("persd", "paper")  # paper: the reference implementation's protocol (engine/paper/, docs/fidelity.md)
TEACHER_CONTEXTS = ("gold", "none")


def _or_unset(cast: Any, word: str) -> Any:
    """A value, or `word` ('default', 'none') for "send nothing": None."""
    def convert(v: Any) -> Any:
        return None if v is None or str(v).strip().lower() == word else cast(v)

    convert.__name__ = f"{getattr(cast, '__name__', 'value')} or '{word}'"
    convert.__name__ = f"{getattr(cast, '__name__', 'value')} or '{word}'"
    return convert


PROMPT_VERSION = 1  # bump when the engine's teacher prompts change (it alters results)
resolve_student_backend = resolve_backend  # the rule collect, eval and loop share (runtime.student.base)


def _formats(v: str | list) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [s.strip() for s in str(v).split(",")]
    items = [s for s in items if s]
    bad = [s for s in items if s not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(
            f"unknown format(s) {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(items))


# ------------------------------------------------------------------ the sections collect and eval share

# The flat options of earlier releases, now options of a section: still accepted (flags and TOML keys,
# with a deprecation line) for one release; fingerprints keep these names as keys, manifests as keys too.
STUDENT_RENAMED = {"student_backend": "student.backend", "student_model": "student.model",
                   "student_url": "student.url", "student_chat": "student.chat",
                   "student_concurrency": "student.max_concurrency", "dtype": "student.dtype",
                   "tensor_parallel_size": "student.tensor_parallel_size",
                   "gpu_memory_utilization": "student.gpu_memory_utilization",
                   "kv_cache_gib": "student.kv_cache_gib", "max_model_len": "student.max_model_len",
                   "enforce_eager": "student.enforce_eager"}
SANDBOX_RENAMED = {"sandbox_workers": "sandbox.workers", "exec_timeout": "sandbox.timeout_s"}
TEACHER_RENAMED = {"teacher_url": "teacher.base_url", "teacher_model": "teacher.model",
                   "teacher_api_key_env": "teacher.api_key_env", "teacher_temperature": "teacher.temperature",
                   "teacher_max_tokens": "teacher.max_tokens", "teacher_context": "teacher.context",
                   "price_in": "teacher.price_in", "price_out": "teacher.price_out", "teacher_top_p": "teacher.top_p",
                   "teacher_max_in_flight": "teacher.max_in_flight", "rpm": "teacher.rpm", "tpm": "teacher.tpm",
                   "max_cost": "teacher.max_cost_usd", "teacher_retries": "teacher.retry.max_attempts",
                   "teacher_retry_delay": "teacher.retry.base_delay_s",
                   "teacher_max_retry_delay": "teacher.retry.max_delay_s",
                   "teacher_deadline": "teacher.retry.deadline_s",
                   "teacher_timeout": "teacher.retry.request_timeout_s", "prices": "teacher.prices",
                   "teacher_headroom": "teacher.headroom", "teacher_limit_window": "teacher.limit_window_s",
                   "teacher_jitter": "teacher.jitter_s", "teacher_reconcile_tokens": "teacher.reconcile_tokens"}


def old_names_as_attributes(cls: type) -> type:
    """`cfg.student_model` reads (and sets) `cfg.student.model`: the renamed options' old attribute names,
    for code not yet written against the sections (one release, as the old flags)."""
    for old, path in cls.RENAMED.items():
        owner, _, leaf = path.rpartition(".")

        def get(self, p=path):
            return value_at(self, p)

        def put(self, value, o=owner, f=leaf):
            setattr(value_at(self, o), f, value)

        setattr(cls, old, property(get, put))
    return cls


def public_view(cfg: Any) -> dict[str, Any]:
    """The configuration as written to a run's files: sections as tables, the student's backend resolved,
    header values left out (they may hold secrets); plus the old flat keys of renamed options (one release)."""
    data = asdict(cfg)
    data["student"]["backend"] = cfg.student.resolved_backend()
    teacher = data.get("teacher")
    if teacher and teacher.get("extra_headers"):
        teacher["extra_headers"] = {k: "(not written)" for k in teacher["extra_headers"]}
    return {**{old: value_at(data, path) for old, path in cfg.RENAMED.items()}, **data}


@dataclass
class CollectTeacher(TeacherConfig):
    """The teacher as persd collect asks it: the runtime's TeacherConfig (where, which model, how fast,
    how much money), how collect's requests sample, and prices for the teacher model. No base URL: an
    offline stand-in answers from the tasks' references."""

    base_url: str | None = opt(None, help="OpenAI-compatible base URL; without it an offline stand-in answers "
                                          "from the tasks' references", changes_results=False,
                               shown="the offline stand-in")
    temperature: float | None = opt(0.0, help="sampling temperature, or 'default' to send none (the API's "
                                    "default; the paper preset)", changes_results=True,
                                    type=_or_unset(float, "default"))
    max_tokens: int | None = opt(1024, help="max new tokens, or 'none' to send none (the paper preset)",
                                 changes_results=True, type=_or_unset(positive_int, "none"))
    top_p: float | None = opt(None, help="nucleus sampling top_p", changes_results=True, type=positive_float,
                              shown="the provider's")
    context: str | None = opt(None, help="paper protocol: gold shows the teacher the dataset's solution as its own "
                              "first answer, as the reference did; none leaves it out", changes_results=True,
                              choices=TEACHER_CONTEXTS, shown="gold with --protocol paper")
    price_in: float | None = opt(None, help="USD per 1M input tokens of the teacher model (with price_out; "
                                 "overrides the price table)", changes_results=False, type=nonneg_float,
                                 shown="the price table")
    price_out: float | None = opt(None, help="USD per 1M output tokens of the teacher model (with price_in)",
                                  changes_results=False, type=nonneg_float, shown="the price table")
    context_tokens: int | None = opt(None, help="the teacher model's context in tokens: a refinement prompt over "
                                     "it has the student's attempt and the error text cut (head and tail kept) to "
                                     "fit; one that cannot fit fails its task before sending",
                                     changes_results=False, type=positive_int,
                                     shown="the price table's entry for the model, else no fitting")
    mode: str = opt("sync", help="sync: requests sent one by one, paced; batch: through the provider's Batch API "
                    "(half the price, answers within 24 h, resumable)", changes_results=False,
                    choices=("sync", "batch"))
    batch_max_requests: int = opt(50_000, help="batch mode: requests per batch file (the Batch API takes at most "
                                  "50,000)", changes_results=False, type=positive_int)
    batch_flush_s: float = opt(5.0, help="batch mode: seconds a batch file stays open for more requests",
                               changes_results=False, type=positive_float)
    batch_price_factor: float = opt(0.5, help="batch mode: batch prices as a fraction of the price table's (the "
                                    "Batch API's discount)", changes_results=False, type=positive_float)

    def check_url(self) -> None:
        if self.base_url is not None:
            super().check_url()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"{self.top_p}: expected a value in (0, 1]", "teacher")
        if (self.price_in is None) != (self.price_out is None):
            raise ConfigError("price_in", "{price_in} and {price_out} go together (USD per 1M input and output "
                              "tokens)", "teacher")
        if self.batch_price_factor > 1:
            raise ConfigError("batch_price_factor", f"{self.batch_price_factor:g}: a fraction of the sync prices "
                              "(0.5 is half), at most 1", "teacher")
        if self.batch_max_requests > 50_000:
            raise ConfigError("batch_max_requests", f"{self.batch_max_requests}: the Batch API takes at most "
                              "50,000 requests a file", "teacher")

    @property
    def standin(self) -> bool:
        return not self.base_url

    def all_prices(self) -> dict[str, tuple[float, float]] | None:
        """Price overrides: `prices` (a table), then price_in/price_out for `model`."""
        prices = {m: (float(a), float(b)) for m, (a, b) in (self.prices or {}).items()}
        if self.price_in is not None and self.price_out is not None:
            prices[self.model] = (self.price_in, self.price_out)
        return prices or None


# ------------------------------------------------------------------ persd collect


@old_names_as_attributes
@dataclass
class CollectConfig(TimeLimitFields, TaskSourceFields, RayFields):
    RENAMED: ClassVar[dict[str, str]] = {**STUDENT_RENAMED, **TEACHER_RENAMED, **SANDBOX_RENAMED}

    # input and output
    tasks: str = opt("", help="tasks: a JSONL file, a parquet file or folder, a saved dataset folder[@SPLIT], "
                     "hf:NAME[:CONFIG][@SPLIT] or a built-in set (humaneval, mbpp)", changes_results=True,
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
    # the student's sampling (the student itself: the student section)
    samples: int = opt(1, help="student attempts per task", changes_results=True, type=positive_int,
                       group="student")
    temperature: float = opt(0.3, help="student sampling temperature", changes_results=True, group="student")
    top_p: float = opt(0.95, help="student top_p", changes_results=True, group="student")
    top_k: int | None = opt(None, help="student top_k (paper preset: 50, Hugging Face generate's default; sent "
                                       "where the backend supports it)", changes_results=True, type=positive_int,
                            group="student", shown="off")
    tests_from: str | None = opt(None, help="paper protocol: unit tests by task id from FILE (the PersDistill "
                                            "release's code-alpaca_unittests_mbpp.json layout, docs/paper.md) "
                                            "instead of a teacher's", changes_results=True, metavar="FILE",
                                 group="input and output")
    clean_up_spaces: str = opt("off", help="paper protocol: decode attempts the way transformers 4.29.2 did, with "
                                           "clean_up_tokenization_spaces; auto: on unless the student's "
                                           "tokenizer_config.json turns it off", changes_results=True,
                               choices=("off", "on", "auto"), group="student")
    max_tokens: int = opt(512, help="student max new tokens", changes_results=True, type=positive_int,
                          group="student")
    seed: int = opt(0, help="base sampling seed", changes_results=True, group="student")
    # what collect asks of the teacher (the teacher itself: the teacher section)
    refine_turns: int = opt(1, help="teacher turns per failed task", changes_results=True, type=positive_int,
                            group="teacher")
    testgen_inputs: int = opt(5, help="test inputs asked of the teacher for tasks without tests",
                              changes_results=True, type=positive_int, group="teacher")
    round: int = opt(1, help="distillation round written to each record's meta.round", changes_results=True,
                     type=positive_int, group="teacher")
    # flow and run control
    max_in_flight: int = opt(256, help="tasks alive at once", changes_results=False, type=positive_int,
                             group="flow")
    force: bool = opt(False, help="accept a rerun whose settings alter results", changes_results=False,
                      group="flow")
    failure_breaker: int = opt(20, help="stop the run (resumably) once the last N student or teacher requests "
                               "all failed for their own content: then it is the server or a setting, not one "
                               "bad request (0: never)", changes_results=False, type=nonneg_int, group="flow")
    grace: float = opt(10.0, help="seconds in-flight tasks get to finish on SIGINT/SIGTERM",
                       changes_results=False, type=nonneg_float, group="flow")
    progress: str = opt("auto", help="progress display", changes_results=False, choices=PROGRESS_MODES,
                        group="flow")
    log_every: float = opt(10.0, help="seconds between plain progress lines", changes_results=False,
                           type=positive_float, group="flow")
    # the components, each with its own options
    student: StudentConfig = section(StudentConfig, help="the student model (persd.runtime.student)",
                                     max_concurrency=64)
    teacher: CollectTeacher = section(CollectTeacher, help="the teacher API (persd.runtime.teacher)")
    sandbox: SandboxConfig = section(SandboxConfig, help="the sandbox that runs programs (persd.runtime.sandbox)")

    # ---- derived

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def standin_teacher(self) -> bool:
        return self.teacher.standin

    @property
    def partition(self) -> str:
        return partition_name(self.num_shards, self.shard_index)

    def resolved_student_backend(self) -> str:
        return self.student.resolved_backend()

    def teacher_prices(self) -> dict[str, tuple[float, float]] | None:
        return self.teacher.all_prices()

    def public(self) -> dict[str, Any]:
        """The configuration as written to the manifest: no secrets (the key's variable name only)."""
        data = public_view(self)
        data["formats"] = list(self.formats)
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
        if self.student.resolved_backend() == "openai" and not self.student.model:
            raise ConfigError("student.model", "the openai backend needs the model name the server serves")
        check_sampling(self.temperature, self.top_p)
        if self.tests_from is not None and self.protocol != "paper":
            raise ConfigError("tests_from", "applies to the paper protocol (--preset paper)")
        if "refine-gold" in self.formats and self.protocol != "paper":
            raise ConfigError("formats", "refine-gold (the release's refine prompt -> gold) needs --protocol paper")
        if self.teacher.context is not None and self.protocol != "paper":
            raise ConfigError("teacher.context", "applies to the paper protocol (--preset paper)")
        if self.teacher.max_cost_usd is not None and not self.teacher.standin:
            from persd.runtime.teacher.pricing import PriceTable

            if PriceTable(self.teacher.all_prices()).lookup(self.teacher.model) is None:
                raise ConfigError("teacher.max_cost_usd", f"needs the price of {{teacher.model}} "
                                  f"{self.teacher.model!r}, which is not in the built-in table: give "
                                  f"{{teacher.price_in}} and {{teacher.price_out}} (USD per 1M tokens)")
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


def check_student_model(cfg: Any) -> None:
    """A local backend's student model must be a loadable model directory (checked before loading)."""
    from persd.runtime.student.model_dir import model_dir_problem

    if cfg.student.resolved_backend() in ("hf", "vllm") and cfg.student.model:
        problem = model_dir_problem(cfg.student.model)
        if problem:
            raise UsageError(f"{config.sources_of(cfg).name('student.model')} {problem}")


def check_sampling(temperature: float, top_p: float) -> None:
    if not 0 <= temperature <= 5:
        raise ConfigError("temperature", f"{temperature}: expected a value in [0, 5]")
    if not 0 < top_p <= 1:
        raise ConfigError("top_p", f"{top_p}: expected a value in (0, 1]")


__all__ = ["CollectConfig", "CollectTeacher", "FORMATS", "STUDENT_BACKENDS", "PROGRESS_MODES", "COLLECT",
           "parse_args", "build_parser", "describe_difference", "resolve_student_backend", "check_student_model",
           "check_sampling", "STUDENT_RENAMED", "SANDBOX_RENAMED", "TEACHER_RENAMED", "public_view"]
