"""Opening the three real resources for a run, in order: the sandbox (its small worker processes
start before any model is loaded), the teacher (a real provider, or the offline stand-in
server this command starts itself), then the student."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import AsyncIterator, Protocol

from persd.engine.collect import standin
from persd.engine.collect.cluster import open_cluster, sandbox_for, student_for
from persd.engine.collect.config import CollectConfig, StudentFields
from persd.engine.collect.flow import Backends
from persd.engine.collect.layout import CollectLayout
from persd.engine.timelimits import workers_per_core


class RunLabels(Protocol):
    """What opening the backends tells the run (the Collector is one): labels for its summary and
    manifest, and secrets to scrub from everything it writes."""

    notes: list[str]
    secrets: list[str]


STANDIN_KEY_ENV = "PERSD_STANDIN_TEACHER_KEY"  # never set: the stand-in is loopback and needs no key


def teacher_journal_path(cfg: CollectConfig) -> Path:
    return CollectLayout(cfg.out).teacher_journal_path(cfg.partition)


def default_student_model(cfg: CollectConfig) -> Path:
    """The offline demo's student: a tiny random-weight model, written once into the output directory."""
    from persd.runtime.student.tiny_model import write_tiny_model

    path = CollectLayout(cfg.out).tiny_student_dir
    if not (path / "config.json").exists():
        write_tiny_model(path, seed=0)
    return path


# The runtime configs' fields (which know nothing of flags), as the command's fields: a runtime
# ConfigError is re-raised naming the flag (persd.config.runtime_fields_as_flags).
RUNTIME_FIELDS: dict[tuple[str, str], str] = {
    **{("student", k): v for k, v in {
        "backend": "student_backend", "model": "student_model", "url": "student_url", "chat": "student_chat",
        "max_concurrency": "student_concurrency", "dtype": "dtype", "tensor_parallel_size": "tensor_parallel_size",
        "gpu_memory_utilization": "gpu_memory_utilization", "kv_cache_gib": "kv_cache_gib",
        "max_model_len": "max_model_len"}.items()},
    **{("teacher", k): v for k, v in {
        "base_url": "teacher_url", "model": "teacher_model", "api_key_env": "teacher_api_key_env", "rpm": "rpm",
        "tpm": "tpm", "max_in_flight": "teacher_max_in_flight", "max_cost_usd": "max_cost",
        "headroom": "teacher_headroom", "limit_window_s": "teacher_limit_window", "jitter_s": "teacher_jitter",
        "prices": "prices"}.items()},
    **{("sampling", k): k for k in ("n", "max_tokens", "temperature", "top_p")},
}


def student_config(cfg: StudentFields, seed: int, model: str | None = None):
    """The runtime StudentConfig for a command's student options (collect's CollectConfig and eval's
    EvalConfig are both StudentFields) and its base sampling seed. `model` stands in for a missing
    --student-model (collect's offline demo model)."""
    from persd.runtime.student import StudentConfig

    return StudentConfig(backend=cfg.resolved_student_backend(), model=cfg.student_model or model or "",
                         url=cfg.student_url, chat=cfg.student_chat, max_concurrency=cfg.student_concurrency,
                         seed=seed, tensor_parallel_size=cfg.tensor_parallel_size, dtype=cfg.dtype,
                         gpu_memory_utilization=cfg.gpu_memory_utilization, kv_cache_gib=cfg.kv_cache_gib,
                         max_model_len=cfg.max_model_len, enforce_eager=cfg.enforce_eager,
                         log_path=vllm_log_path(cfg))


def vllm_log_path(cfg: StudentFields) -> str | None:
    """vLLM's own output (its engine and worker processes) goes to OUT/work/vllm.log, not the terminal."""
    out = getattr(cfg, "out", None)
    return str(Path(out) / "work" / "vllm.log") if out else None


@contextlib.asynccontextmanager
async def open_backends(cfg: CollectConfig, collector: RunLabels) -> AsyncIterator[Backends]:
    from persd.runtime.sandbox import SandboxConfig
    from persd.runtime.teacher import RetryPolicy, TeacherClient, TeacherConfig

    async with contextlib.AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(open_cluster(cfg))  # None without --ray
        sandbox = await stack.enter_async_context(sandbox_for(cluster, SandboxConfig(
            workers=cfg.sandbox_workers, timeout_s=cfg.exec_timeout, per_core=workers_per_core(cfg.time_limits))))

        if cfg.standin_teacher:
            from persd.runtime.teacher.local_server import LocalOpenAIServer

            server = LocalOpenAIServer(standin.StandinResponder(cfg.tasks, cfg.limit))
            await stack.enter_async_context(server)
            base_url, model, key_env = server.base_url, standin.MODEL, STANDIN_KEY_ENV
            prices = {standin.MODEL: (0.0, 0.0)}
            collector.notes.append(standin.LABEL)
        else:
            base_url, model, key_env = cfg.teacher_url, cfg.teacher_model, cfg.teacher_api_key_env
            prices = cfg.teacher_prices()
            key = os.environ.get(key_env, "").strip()
            if key:
                collector.secrets.append(key)
        tcfg = TeacherConfig(
            base_url=base_url,
            model=model,
            api_key_env=key_env,
            rpm=cfg.rpm,
            tpm=cfg.tpm,
            max_in_flight=cfg.teacher_max_in_flight,
            max_cost_usd=cfg.max_cost,
            journal_path=teacher_journal_path(cfg),
            prices=prices,
            retry=RetryPolicy(max_attempts=cfg.teacher_retries, base_delay_s=cfg.teacher_retry_delay,
                              max_delay_s=cfg.teacher_max_retry_delay, deadline_s=cfg.teacher_deadline,
                              request_timeout_s=cfg.teacher_timeout),
            headroom=cfg.teacher_headroom,
            limit_window_s=cfg.teacher_limit_window,
            jitter_s=cfg.teacher_jitter,
            reconcile_tokens=cfg.teacher_reconcile_tokens,
        )
        teacher = await stack.enter_async_context(TeacherClient(tcfg))

        backend = cfg.resolved_student_backend()
        model_path = cfg.student_model
        if not model_path:
            model_path = str(default_student_model(cfg))
            collector.notes.append(f"student: the tiny random-weight local model at {model_path} ({backend} backend)")
        student = await stack.enter_async_context(
            student_for(cluster, student_config(cfg, cfg.seed, model_path), cfg.student_concurrency))
        yield Backends(student=student, sandbox=sandbox, teacher=teacher)
