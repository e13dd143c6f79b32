"""One evaluation end to end: select tasks, check the directory, open the backends, run, write the outputs.

    summary = await evaluate(cfg)                               # the real student and sandbox
    summary = await evaluate(cfg, student=s, sandbox=sb)        # backends already open (benchmarks)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from persd.engine.collect.backends import open_backends
from persd.engine.collect.steps import Steps
from persd.engine.evaluation.config import EvalConfig
from persd.engine.evaluation.journal import EvalJournal
from persd.engine.evaluation.pipeline import EvalFailure, Evaluator
from persd.engine.evaluation.progress import EvalProgress
from persd.engine.evaluation.report import summarize
from persd.engine.evaluation.selection import select_tasks, tasks_digest
from persd.engine.failures import TooManyFailures
from persd.engine.rundirs.eval import EvalLayout
from persd.engine.tasks import task_reading
from persd.engine.timelimits import TimeLimits, config_from


def student_config(cfg: EvalConfig):
    """The runtime StudentConfig of eval's student section (shared with collect: persd.engine.collect.backends)."""
    import dataclasses

    from persd.engine.collect.backends import student_config as from_flags

    return dataclasses.replace(from_flags(cfg, cfg.seed), log_path=str(EvalLayout(cfg.out).vllm_log))


async def evaluate(cfg: EvalConfig, student=None, sandbox=None, mode: str = "pipelined") -> dict[str, Any]:
    tasks = select_tasks(cfg.tasks, cfg.task_ids, cfg.limit, task_reading(cfg))
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
    evaluator = Evaluator(cfg, tasks, journal, gens, results)
    if evaluator.stats.resumed:
        print(f"persd eval: resuming: {evaluator.stats.resumed} of {evaluator.stats.samples_total} samples "
              f"already scored in {cfg.out}", file=sys.stderr)
    if evaluator.stats.samples_done < evaluator.stats.samples_total:
        journal.open()
        try:
            async with open_backends(cfg, None, teacher=False, student=student, sandbox=sandbox,
                                     student_cfg=student_config(cfg)) as backends:
                # the settings are written once the run really starts: a start-up failure (a wrong
                # model path, a bad flag) must not tie the directory to the settings it failed with
                journal.save_settings(fingerprint)
                time_limits = TimeLimits(backends.sandbox, config_from(cfg), cache=journal.layout.time_limits)
                evaluator.calls = Steps(backends, time_limits=time_limits, exec_timeout=cfg.sandbox.timeout_s,
                                        failures=evaluator.failures)
                evaluator.stats.restart()  # the rate counts the work, not loading the model
                try:
                    async with EvalProgress(cfg.progress, evaluator.stats.snapshot, cfg.log_every):
                        await (evaluator.run_phased() if mode == "phased" else evaluator.run())
                finally:
                    await evaluator.calls.close()
                evaluator.failures.flush()  # samples failed by their own request, held while a streak was open
        except (EvalFailure, TooManyFailures) as exc:
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
    summary = summarize(cfg, tasks, lines, stats, {"mode": mode, "failure_breaker": evaluator.failures.report()})
    journal.write_summary(summary)
    return summary
