"""Opening the real resources of a run (collect's three, eval's student and sandbox), in order: the
sandbox (its small worker processes start before any model is loaded), the teacher (a real provider,
or the offline stand-in server collect starts itself), then the student."""
from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol

from persd.engine.collect import standin
from persd.engine.collect.cluster import open_cluster, sandbox_for, student_for
from persd.engine.collect.config import CollectConfig
from persd.engine.collect.layout import CollectLayout
from persd.engine.collect.steps import Backends
from persd.engine.tasks import task_reading
from persd.engine.timelimits import workers_per_core

if TYPE_CHECKING:
    from persd.runtime.interfaces import Sandbox, Student
    from persd.runtime.student import StudentConfig


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


def student_config(cfg: Any, seed: int, model: str | None = None):
    """The runtime StudentConfig of a command's student section (collect's and eval's), with the command's
    base sampling seed, its backend resolved and vLLM's log file. `model` stands in for a missing
    student model (collect's offline demo model)."""
    return replace(cfg.student, backend=cfg.student.resolved_backend(), model=cfg.student.model or model, seed=seed,
                   log_path=vllm_log_path(cfg))


def vllm_log_path(cfg: Any) -> str | None:
    """vLLM's own output (its engine and worker processes) goes to OUT/work/vllm.log, not the terminal."""
    from persd.engine.collect.layout import CollectLayout

    out = getattr(cfg, "out", None)
    return str(CollectLayout(Path(out)).vllm_log_path) if out else None


@contextlib.asynccontextmanager
async def open_backends(cfg: Any, labels: RunLabels | None, *, teacher: bool = True,
                        student: Student | None = None, sandbox: Sandbox | None = None,
                        student_cfg: StudentConfig | None = None) -> AsyncIterator[Backends]:
    """The sandbox, the teacher (collect; eval passes teacher=False), the student, each unless given
    already open (eval's benchmarks pass theirs; `Collector(cfg, open_backends=...)` takes fakes in
    place of this function). `cfg` is a command's config with `student` and `sandbox` sections (collect's
    or eval's). With --ray the student is a set of replicas and the sandbox one actor per node
    (engine/collect/cluster.py). The student is opened from `student_cfg` where given (eval's), else from
    cfg's student section; without a student model, collect's is the offline demo's tiny model."""
    async with contextlib.AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(open_cluster(cfg))  # None without --ray
        if sandbox is None:
            sandbox = await stack.enter_async_context(
                sandbox_for(cluster, replace(cfg.sandbox, per_core=workers_per_core(cfg.time_limits))))
        chat = await stack.enter_async_context(open_teacher(cfg, labels)) if teacher else None
        if student is None:
            scfg = student_cfg
            if scfg is None:
                model_path = cfg.student.model
                if not model_path:  # the offline demo
                    model_path = str(default_student_model(cfg))
                    labels.notes.append(f"student: the tiny random-weight local model at {model_path} "
                                        f"({cfg.student.resolved_backend()} backend)")
                scfg = student_config(cfg, cfg.seed, model_path)
            student = await stack.enter_async_context(student_for(cluster, scfg, cfg.student.max_concurrency))
        yield Backends(student=student, sandbox=sandbox, teacher=chat)



@contextlib.asynccontextmanager
async def open_teacher(cfg: CollectConfig, collector: RunLabels):
    """The teacher client (sync, or through the Batch API): a real provider, or the offline stand-in
    server started here."""
    from persd.runtime.teacher import TeacherClient

    async with contextlib.AsyncExitStack() as stack:
        tcfg = replace(cfg.teacher, journal_path=teacher_journal_path(cfg), prices=cfg.teacher.all_prices())
        batch = cfg.teacher.mode == "batch"
        if cfg.teacher.standin:
            from persd.runtime.local_server import LocalOpenAIServer
            from persd.runtime.teacher.local_batch import BatchPlan

            server = LocalOpenAIServer(standin.StandinResponder(cfg.tasks, cfg.limit, task_reading(cfg)),
                                       batch=BatchPlan() if batch else None)
            await stack.enter_async_context(server)
            tcfg = replace(tcfg, base_url=server.base_url, model=standin.MODEL, api_key_env=STANDIN_KEY_ENV,
                           prices={standin.MODEL: (0.0, 0.0)}, price_in=None, price_out=None)
            collector.notes.append(standin.LABEL)
        else:
            key = os.environ.get(tcfg.api_key_env, "").strip()
            if key:
                collector.secrets.append(key)
        if batch:
            from persd.runtime.teacher.batch import BatchTeacher

            state = CollectLayout(cfg.out).teacher_batches_path(cfg.partition)
            yield await stack.enter_async_context(BatchTeacher(
                tcfg, state, max_requests=cfg.teacher.batch_max_requests, flush_s=cfg.teacher.batch_flush_s,
                price_factor=cfg.teacher.batch_price_factor))
        else:
            yield await stack.enter_async_context(TeacherClient(tcfg))
