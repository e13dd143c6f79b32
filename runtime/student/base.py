"""The one async interface every student backend implements, and the plain data it speaks.

A request is a prompt (text for base models) or chat messages (for instruct models) plus
sampling parameters; the answer is `n` texts with their finish reasons and token counts.
Batching is the backend's job: callers keep many `generate` calls in flight at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from persd.runtime.errors import ConfigError, PersdError, UsageError

BACKENDS = ("vllm", "openai", "hf")


class StudentError(PersdError):
    """One request failed (rejected, too long, server gave up); the student itself may be fine."""


class StudentStartError(PersdError):
    """The student could not start, for a cause rerunning the same command will not cure (the message
    says what to change; exit 1). Settings the user can fix raise UsageError instead (exit 2)."""


class RequestRejected(StudentError):
    """This request can never succeed as it is (prompt too long, invalid parameters): the task
    it belongs to fails, and the rest of the job goes on."""


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

    backend: str = "hf"
    model: str = ""
    url: str | None = None
    chat: bool = False  # instruct model: send chat messages rather than a bare prompt
    max_concurrency: int = 256
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    device: str | None = None
    seed: int = 0
    # vllm
    enforce_eager: bool | None = None  # None: eager on CPU (compiling costs minutes per model), vLLM's default on GPU
    kv_cache_gib: float | None = None
    log_path: str | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)
    # openai
    api_key_env: str = "PERSD_STUDENT_API_KEY"
    request_timeout_s: float = 600.0
    max_attempts: int = 8
    # hf
    batch_window_ms: float = 5.0
    max_batch_size: int = 64
    cpu_threads: int | None = None  # torch threads on CPU; None: 1 for models under 100M parameters

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ConfigError("max_concurrency", f"must be at least 1, got {self.max_concurrency}", "student")


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
