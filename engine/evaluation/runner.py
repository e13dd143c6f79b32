"""One evaluation end to end: select tasks, check the directory, open the backends, run, write the outputs.

    summary = await evaluate(cfg)                               # the real student and sandbox
    summary = await evaluate(cfg, student=s, sandbox=sb)        # backends already open (benchmarks)
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from persd.engine.evaluation.config import EvalConfig
from persd.engine.evaluation.journal import EvalJournal
from persd.engine.evaluation.pipeline import EvalFailure, Evaluator
from persd.engine.evaluation.progress import EvalProgress
from persd.engine.evaluation.report import summarize
from persd.engine.evaluation.selection import select_tasks, tasks_digest
from persd.engine.timelimits import TimeLimits, config_from, workers_per_core


def student_config(cfg: EvalConfig):
    """The runtime StudentConfig for eval's student options (shared with collect: persd.engine.collect.backends)."""
    from persd.engine.collect.backends import student_config as from_flags

    return from_flags(cfg, cfg.seed)


@contextlib.asynccontextmanager
async def open_backends(cfg: EvalConfig, student=None, sandbox=None):
    """The sandbox first (its small workers fork before a model is loaded), then the student."""
    from persd.engine.collect.cluster import open_cluster, sandbox_for, student_for
    from persd.runtime.sandbox import SandboxConfig

    async with contextlib.AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(open_cluster(cfg)) if student is None else None
        if sandbox is None:
            sandbox = await stack.enter_async_context(sandbox_for(cluster, SandboxConfig(
                workers=cfg.sandbox_workers, timeout_s=cfg.exec_timeout, per_core=workers_per_core(cfg.time_limits))))
        if student is None:
            student = await stack.enter_async_context(
                student_for(cluster, student_config(cfg), cfg.student_concurrency))
        yield student, sandbox


async def evaluate(cfg: EvalConfig, student=None, sandbox=None, mode: str = "pipelined") -> dict[str, Any]:
    tasks = select_tasks(cfg.tasks, cfg.task_ids, cfg.limit)
    if cfg.style == "paper":
        from persd.engine.paper import evaluation as paper
        from persd.runtime.errors import UsageError

        other = next((t.task_id for t in tasks if not paper.supported(t)), None)
        if other is not None:
            raise UsageError(f"--style paper (the paper-* protocols) evaluates HumanEval and MBPP tasks with the "
                             f"reference's tests; task {other!r} is neither (use a persd-* protocol)")
    journal = EvalJournal(Path(cfg.out))
    fingerprint = dict(cfg.fingerprint(), tasks_count=len(tasks), tasks_sha256=tasks_digest(tasks))
    resuming = journal.check_settings(fingerprint, cfg.force)
    gens, results = journal.load() if resuming else ({}, {})
    evaluator = Evaluator(cfg, tasks, student, sandbox, journal, gens, results)
    if evaluator.stats.resumed:
        print(f"persd eval: resuming: {evaluator.stats.resumed} of {evaluator.stats.samples_total} samples "
              f"already scored in {cfg.out}", file=sys.stderr)
    if evaluator.stats.samples_done < evaluator.stats.samples_total:
        journal.open()
        try:
            async with open_backends(cfg, student, sandbox) as (evaluator.student, evaluator.sandbox):
                # the settings are written once the run really starts: a start-up failure (a wrong
                # model path, a bad flag) must not tie the directory to the settings it failed with
                journal.save_settings(fingerprint)
                evaluator.time_limits = TimeLimits(evaluator.sandbox, config_from(cfg),
                                                   cache=journal.work / "time-limits.jsonl")
                evaluator.stats.restart()  # the rate counts the work, not loading the model
                async with EvalProgress(cfg.progress, evaluator.stats.snapshot, cfg.log_every):
                    await (evaluator.run_phased() if mode == "phased" else evaluator.run())
        except EvalFailure as exc:
            done = evaluator.stats.samples_done
            raise EvalFailure(f"{exc}\n{done} of {evaluator.stats.samples_total} samples are saved in {cfg.out}: "
                              f"rerun the same command to resume") from exc
        finally:
            journal.close()
    if not journal.settings_path.exists():
        journal.save_settings(fingerprint)
    lines = evaluator.ordered_results()
    journal.write_results(lines)
    snap = evaluator.stats.snapshot()
    stats = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in snap.items()}
    summary = summarize(cfg, tasks, lines, stats, {"mode": mode})
    journal.write_summary(summary)
    return summary
