"""The one async interface every student backend implements, and the plain data it speaks.

A request is a prompt (text for base models) or chat messages (for instruct models) plus
sampling parameters; the answer is `n` texts with their finish reasons and token counts.
Batching is the backend's job: callers keep many `generate` calls in flight at once.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson
from persd.runtime.errors import ConfigError, PersdError, RequestFailed, UsageError
from persd.runtime.options import BadValue, nonneg_float, opt, positive_float, positive_int

BACKENDS = ("vllm", "openai", "hf")


def _json_table(v: Any) -> dict[str, Any]:
    """A TOML table, or a JSON object given as a flag."""
    if isinstance(v, dict):
        return v
    try:
        data = orjson.loads(str(v))
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise BadValue(f"expected a JSON object such as '{{\"swap_space\": 4}}', got {v!r}")
    return data


class StudentError(PersdError):
    """One request failed (rejected, too long, server gave up); the student itself may be fine."""


class StudentStartError(PersdError):
    """The student could not start, for a cause rerunning the same command will not cure (the message
    says what to change; exit 1). Settings the user can fix raise UsageError instead (exit 2)."""


class RequestRejected(StudentError, RequestFailed):
    """This request can never succeed as it is (prompt too long, invalid parameters, an answer that
    cannot be read): the task it belongs to fails with `cause`, and the rest of the job goes on."""

    def __init__(self, message: str, cause: str = "rejected", status: int | None = None):
        self.cause, self.message, self.status = cause, message, status
        PersdError.__init__(self, message)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling for one request. `stop` strings end a text and are not part of it.

    Frozen and hashable (stop is kept as a tuple) so a backend can group equal ones.
    `temperature == 0` means greedy decoding.
    """

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None  # keep only the k most likely tokens (None: off); servers that ignore it: docs

    def __post_init__(self) -> None:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", tuple(s for s in stop if s))
        if self.n < 1:
            raise ConfigError("n", f"must be at least 1, got {self.n}", "sampling")
        if self.max_tokens < 1:
            raise ConfigError("max_tokens", f"must be at least 1, got {self.max_tokens}", "sampling")
        if self.temperature < 0:
            raise ConfigError("temperature", f"must be >= 0, got {self.temperature}", "sampling")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}", "sampling")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError("top_k", f"must be at least 1, got {self.top_k}", "sampling")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class StudentRequest:
    """Either `prompt` (a text the model continues) or `messages` (chat turns), never both."""

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str | None = None  # for logs only; backends make their own unique ids

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise UsageError("a student request needs exactly one of 'prompt' or 'messages'")
        if self.messages is not None and not self.messages:
            raise UsageError("a student chat request needs at least one message")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass
class StudentOutput:
    """`n` completions in request order. finish_reasons: "stop" (stop string or end of text),
    "length" (max_tokens reached), or what the server said. Token counts are totals over all n."""

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repaired: list[str] = field(default_factory=list)  # kinds of bad text replaced by U+FFFD (openai backend)

    @property
    def text(self) -> str:
        return self.texts[0]


@dataclass
class StudentConfig:
    """How to reach the student. The first block is shared; the rest is per backend.

    vllm: tensor_parallel_size, gpu_memory_utilization (None: vLLM's default on a GPU; on CPU persd
    sizes the KV cache from the model and the free memory, see vllm_memory.py), max_model_len, dtype,
    enable_prefix_caching, enforce_eager (None: True on CPU, vLLM's default on GPU), kv_cache_gib (the KV cache
    size; wins over the rest),
    log_path (vLLM's own output goes to this file; None: the terminal), engine_args (anything else).
    openai: url (base URL ending in /v1), api_key_env, request_timeout_s, max_attempts.
    hf: device, dtype, batch_window_ms, max_batch_size, cpu_threads.
    """

    backend: str = opt("auto", help="auto: openai with a url, vllm on a GPU machine, else hf",
                       changes_results=False, choices=("auto",) + BACKENDS)
    model: str | None = opt(None, help="checkpoint path (hf, vllm) or the served model's name (openai)",
                            changes_results=True, shown="collect: a tiny local model (demo); eval: required")
    url: str | None = opt(None, help="base URL of an OpenAI-compatible server (openai backend), "
                                     "e.g. http://127.0.0.1:8000/v1", changes_results=False)
    chat: bool = opt(False, help="an instruct model: chat template / chat messages", changes_results=True)
    max_concurrency: int = opt(256, help="requests in flight", changes_results=False, type=positive_int)
    dtype: str = opt("auto", help="model dtype: auto, bfloat16, float16, float32", changes_results=False)
    tensor_parallel_size: int = opt(1, help="vllm: GPUs per model", changes_results=False, type=positive_int)
    gpu_memory_utilization: float | None = opt(
        None, help="vllm: fraction of accelerator memory (on CPU: of the NUMA node's RAM) to take",
        changes_results=False, type=positive_float,
        shown="vLLM's 0.9 on a GPU; on CPU persd sizes the KV cache from free memory")
    max_model_len: int | None = opt(None, help="context length the backend allows", changes_results=False,
                                    type=positive_int)
    enable_prefix_caching: bool = opt(True, help="vllm: reuse the KV cache of shared prompt prefixes",
                                      changes_results=False)
    device: str | None = opt(None, help="hf: torch device (cpu, cuda, cuda:1)", changes_results=False,
                             shown="cuda if available, else cpu")
    seed: int = opt(0, help="base sampling seed (set from the command's own seed)", changes_results=False, cli=False)
    enforce_eager: bool | None = opt(None, help="vllm: run the model without torch.compile (compiling adds "
                                     "minutes to every start with a new model path on CPU)", changes_results=False,
                                     shown="yes on CPU, no on GPU")
    kv_cache_gib: float | None = opt(None, help="vllm: KV cache size in GiB (wins over the memory fraction)",
                                     changes_results=False, type=positive_float)
    log_path: str | None = opt(None, help="vllm's own output (set by the command: OUT/work/vllm.log)",
                               changes_results=False, cli=False)
    engine_args: dict[str, Any] = opt(help="vllm: any other engine argument, as JSON ('{\"swap_space\": 4}') or "
                                      "a TOML table", changes_results=False, default_factory=dict,
                                      type=_json_table, shown="none")
    api_key_env: str = opt("PERSD_STUDENT_API_KEY", help="openai: environment variable holding the server's key",
                           changes_results=False)
    request_timeout_s: float = opt(600.0, help="openai: seconds one request may take", changes_results=False,
                                   type=positive_float)
    max_attempts: int = opt(8, help="openai: sends per request", changes_results=False, type=positive_int)
    batch_window_ms: float = opt(5.0, help="hf: milliseconds a batch waits to fill", changes_results=False,
                                 type=nonneg_float)
    max_batch_size: int = opt(64, help="hf: sequences per batch", changes_results=False, type=positive_int)
    cpu_threads: int | None = opt(None, help="hf: torch threads on CPU", changes_results=False, type=positive_int,
                                  shown="1 for models under 100M parameters")

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ConfigError("max_concurrency", f"must be at least 1, got {self.max_concurrency}", "student")
        backend = self.resolved_backend()
        if backend == "openai" and not self.url:
            raise ConfigError("url", "the openai backend needs it (e.g. http://127.0.0.1:8000/v1)", "student")
        if backend in ("hf", "vllm") and self.url:
            raise ConfigError("url", f"is for {{backend}} openai; the {backend} backend loads {{model}} itself "
                              f"(drop one of the two)", "student")

    def resolved_backend(self) -> str:
        return resolve_backend(self.backend, self.url)


def resolve_backend(backend: str, url: str | None = None) -> str:
    """The backend `auto` stands for: openai with a URL, vllm on a GPU machine with vLLM installed,
    else hf. Any other name is returned as given."""
    if backend != "auto":
        return backend
    if url:
        return "openai"
    if shutil.which("nvidia-smi") and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "hf"


@runtime_checkable
class StudentBackend(Protocol):
    """What the engine drives. Use as `async with student: await student.generate(req)`."""

    config: StudentConfig

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, request: StudentRequest) -> StudentOutput: ...

    async def __aenter__(self) -> "StudentBackend": ...

    async def __aexit__(self, *exc: object) -> None: ...


class BaseStudent:
    """Shared lifecycle: `async with` calls start() and close(); close() is idempotent."""

    name = "base"

    def __init__(self, config: StudentConfig):
        self.config = config
        self._started = False

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def generate(self, request: StudentRequest) -> StudentOutput:
        raise NotImplementedError

    async def __aenter__(self) -> "BaseStudent":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require_started(self) -> None:
        if not self._started:
            raise PersdError(f"the {self.name} student is not started (use 'async with student:')")
