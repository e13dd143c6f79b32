"""The evaluation itself: every task a coroutine, every sample a chain of steps.

Step 0 is the direct sample: generated, run against the full (hidden) tests for the score,
and against the visible tests (docstring examples, MBPP's first test) for feedback. Step t
refines a sample only when its visible tests failed at step t-1; otherwise the sample carries
its code unchanged. Every step of every sample is one result line, so pass@1 after step t is
read straight off the lines of step t.

Generation and execution are collect's steps (engine/collect/steps.py: `attempt`, `execute`, under
the one guard): a request that fails for its own content (persd.engine.failures) is a sample with
status `error` and its `failure` cause, journaled once the student's failure streak is settled (the
breaker stops the run when every recent request failed); a backend that fails stops the run
(`BackendFailure`, resumable). Generation and execution overlap: while one
task's samples run in the sandbox, others are being generated. `run_phased()` is the same work done
the other way round (all generation, then all checking), kept for the benchmark that measures the
difference.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from persd.engine.collect.guard import BackendFailure, TaskFailed
from persd.engine.collect.steps import Attempt, Steps
from persd.engine.evaluation import sampling
from persd.engine.evaluation.journal import EvalJournal, Key
from persd.engine.extract import extract_program
from persd.engine.failures import FailurePolicy
from persd.engine.tasks import Task

EvalFailure = BackendFailure  # the name eval's callers know: a backend failed for good; rerun to resume


@dataclass
class EvalStats:
    samples_total: int = 0
    samples_done: int = 0
    resumed: int = 0
    generated: int = 0  # completions generated in this invocation
    requests: int = 0
    executions: int = 0
    passed_step0: int = 0
    refined: int = 0
    started: float = field(default_factory=time.monotonic)
    startup_s: float = 0.0

    def restart(self) -> None:
        now = time.monotonic()
        self.startup_s, self.started = now - self.started, now

    def snapshot(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        return {"samples_total": self.samples_total, "samples_done": self.samples_done, "resumed": self.resumed,
                "generated": self.generated, "requests": self.requests, "executions": self.executions,
                "passed_step0": self.passed_step0, "refined": self.refined, "wall_s": wall,
                "startup_s": self.startup_s,
                "samples_per_s": (self.samples_done - self.resumed) / wall if wall > 0 else 0.0}


class Evaluator:
    def __init__(self, cfg, tasks: list[Task], journal: EvalJournal,
                 gens: dict[Key, dict] | None = None, results: dict[Key, dict] | None = None):
        self.cfg = cfg
        self.tasks = tasks
        self.journal = journal
        self.gens: dict[Key, dict] = gens if gens is not None else {}
        self.results: dict[Key, dict] = results if results is not None else {}
        self.steps = cfg.refine_steps
        self.calls: Steps | None = None  # the student's and the sandbox's steps, once open (runner.evaluate)
        self.failures = FailurePolicy(cfg.failure_breaker)  # per-request failures: counted, held, the breaker
        self.stats = EvalStats(samples_total=len(tasks) * cfg.n)
        self.stats.resumed = self.stats.samples_done = sum(
            1 for t in tasks for s in range(cfg.n) if (t.task_id, s, self.steps) in self.results)

    # ------------------------------------------------------------------ runs

    async def run(self) -> None:
        """Pipelined: at most --max-in-flight tasks alive; each generates, then scores its samples."""
        slots = asyncio.Semaphore(self.cfg.max_in_flight)

        async def one(task: Task) -> None:
            async with slots:
                await self._task(task)

        await self._gather(one(t) for t in self.tasks)

    async def run_phased(self) -> None:
        """All generation of a step first, then all checking of it (the benchmark's baseline)."""
        prev: dict[tuple[str, int], dict | None] = {(t.task_id, s): None for t in self.tasks for s in range(self.cfg.n)}
        by_id = {t.task_id: t for t in self.tasks}
        await self._gather(self._generate_direct(t, self._missing_direct(t)) for t in self.tasks)
        for step in range(self.steps + 1):
            if step > 0:
                await self._gather(self._generate_refine(by_id[tid], s, step, p)
                                   for (tid, s), p in prev.items()
                                   if p is not None and sampling.needs_refine(p)
                                   and (tid, s, step) not in self.gens and (tid, s, step) not in self.results)
            keys = list(prev)
            lines = await self._gather(self._step(by_id[tid], s, step, prev[(tid, s)]) for tid, s in keys)
            prev = dict(zip(keys, lines))
        self.stats.samples_done = self.stats.samples_total

    async def _gather(self, coros) -> list:
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # ------------------------------------------------------------------ one task

    def _missing_direct(self, task: Task) -> list[int]:
        return [s for s in range(self.cfg.n)
                if (task.task_id, s, 0) not in self.results and (task.task_id, s, 0) not in self.gens]

    async def _task(self, task: Task) -> None:
        missing = self._missing_direct(task)
        if missing:
            assert self.calls is not None
            self.calls.measure_soon(task)  # its time limit, while the student writes the samples
            await self._generate_direct(task, missing)
        await asyncio.gather(*(self._chain(task, s) for s in range(self.cfg.n)))

    async def _chain(self, task: Task, sample: int) -> None:
        if (task.task_id, sample, self.steps) in self.results:
            return
        prev = None
        for step in range(self.steps + 1):
            prev = await self._step(task, sample, step, prev)
        self.stats.samples_done += 1

    async def _step(self, task: Task, sample: int, step: int, prev: dict | None) -> dict:
        """The result line of (task, sample) at `step`, generating first where needed; journaled."""
        key = (task.task_id, sample, step)
        if key in self.results:
            return self.results[key]
        if step > 0 and not sampling.needs_refine(prev):
            line = dict(prev, step=step, origin="carried")
        else:
            if key not in self.gens:
                if step == 0:
                    await self._generate_direct(task, [sample])
                else:
                    await self._generate_refine(task, sample, step, prev)
            line = await self._score(task, sample, step, self.gens[key], prev)
        self._journal("result", line, bool(line.get("failure") or line.get("refine_failure")))
        self.results[key] = line
        if step == 0 and line["status"] == "passed":
            self.stats.passed_step0 += 1
        if line["origin"] == "refined":
            self.stats.refined += 1
        return line

    # ------------------------------------------------------------------ generation

    async def _generate(self, request) -> Attempt | dict:
        """The student's answer, or why this one request failed: {"error", "cause"} (recorded, not fatal)."""
        assert self.calls is not None
        self.stats.requests += 1
        try:
            attempt = await self.calls.attempt(request)
        except TaskFailed as exc:
            return {"error": f"student: {exc.message}", "cause": exc.cause}
        self.stats.generated += len(attempt.texts)
        return attempt

    def _keep_gen(self, task: Task, sample: int, step: int, entry: dict) -> None:
        entry = {"task_id": task.task_id, "sample": sample, "step": step, **entry}
        self._journal("gen", entry, bool(entry.get("cause")))
        self.gens[(task.task_id, sample, step)] = entry

    def _journal(self, kind: str, obj: dict, failed: bool) -> None:
        """Append to the journal; a failed request's lines wait until the student's failure streak is settled
        (persd.engine.failures: written once it answers again or the run ends, dropped where the breaker trips)."""
        if failed and self.failures.hold("student", lambda: self.journal.append(kind, obj)):
            return
        self.journal.append(kind, obj)

    async def _generate_direct(self, task: Task, samples: list[int]) -> None:
        if not samples:
            return
        got = await self._generate(sampling.direct_request(task, self.cfg, samples))
        for i, s in enumerate(samples):
            if isinstance(got, dict):
                self._keep_gen(task, s, 0, dict(got))
            else:
                self._keep_gen(task, s, 0, {"completion": _nth(got.texts, i, ""),
                                            "finish_reason": _nth(got.finish_reasons, i, "stop"), **_repairs(got)})

    async def _generate_refine(self, task: Task, sample: int, step: int, prev: dict) -> None:
        code = prev.get("visible_code", prev["code"])  # paper style: the cleaned sample the reference shows
        req = sampling.refine_request(task, self.cfg, sample, step, code, prev["visible_feedback"] or "")
        got = await self._generate(req)
        if isinstance(got, dict):
            self._keep_gen(task, sample, step, dict(got))
        else:
            self._keep_gen(task, sample, step, {"completion": _nth(got.texts, 0, ""),
                                                "finish_reason": _nth(got.finish_reasons, 0, "stop"), **_repairs(got)})

    # ------------------------------------------------------------------ execution

    async def _run(self, task: Task, program: str):
        assert self.calls is not None
        result = await self.calls.execute(task, program)
        self.stats.executions += 1
        return result

    async def _score(self, task: Task, sample: int, step: int, gen: dict, prev: dict | None) -> dict:
        base = {"task_id": task.task_id, "sample": sample, "step": step}
        if "error" in gen:  # the student refused this request
            failure = {"cause": gen["cause"], "by": "student", "message": gen["error"]} if gen.get("cause") else None
            if prev is None:
                line = {**base, "origin": "direct", "status": "error", "feedback": gen["error"], "code": "",
                        "visible_status": None, "visible_feedback": None, "finish_reason": None}
                return dict(line, failure=failure) if failure else line
            return dict(prev, **base, origin="carried", student_error=gen["error"],
                        **({"refine_failure": failure} if failure else {}))
        repaired = {"repaired": gen["repaired"]} if gen.get("repaired") else {}
        if self.cfg.style == "paper":
            return dict(await self._score_paper(task, step, gen, prev, base), **repaired)
        code = extract_program(task, gen["completion"], self.cfg.student.chat)
        check_visible = step < self.steps and bool(task.visible_tests.strip())
        runs = [self._run(task, task.program(code))]
        if check_visible:
            runs.append(self._run(task, task.program(code, tests=task.visible_tests)))
        done = await asyncio.gather(*runs)
        hidden = done[0]
        visible = done[1] if check_visible else None
        return {**base, "origin": "direct" if step == 0 else "refined", "status": hidden.status,
                "feedback": hidden.feedback, "code": code,
                "visible_status": visible.status if visible else None,
                "visible_feedback": visible.feedback if visible else None,
                "finish_reason": gen.get("finish_reason"), "limit": getattr(hidden, "limit", None),
                "limit_s": getattr(hidden, "limit_s", None), **repaired}

    async def _score_paper(self, task: Task, step: int, gen: dict, prev: dict | None, base: dict) -> dict:
        """The reference's sample, score and visible-test feedback (engine/paper/evaluation.py)."""
        from persd.engine.paper import checker
        from persd.engine.paper import evaluation as paper

        origin = "direct" if step == 0 else "refined"
        if step == 0:
            completion = paper.direct_completion(task, gen["completion"], self.cfg.paper_cleanup)
        else:
            completion = paper.refined_completion(task, gen["completion"], prev["code"], self.cfg.paper_cleanup,
                                                  prev.get("visible_code", prev["code"]),
                                                  prev.get("visible_feedback") or "")
            if completion is None:  # a "none" or too short answer: the sample stays as it was
                completion, origin = prev["code"], "kept"
        marks = [checker.new_marker(), checker.new_marker()]
        runs = [self._run(task, paper.score_program(task, completion, marks[0]))]
        check_visible = step < self.steps
        visible_code = paper.cleaned(task, completion) if check_visible else None
        if check_visible:
            runs.append(self._run(task, paper.feedback_program(task, visible_code, marks[1])))
        done = await asyncio.gather(*runs)
        hidden, visible = done[0], (done[1] if check_visible else None)
        return {**base, "origin": origin, "status": hidden.status,
                "feedback": "" if hidden.status == "passed" else paper.error_text(hidden, marks[0]),
                "code": completion, "visible_code": visible_code,
                "visible_status": visible.status if visible else None,
                "visible_feedback": (None if visible is None else
                                     "" if visible.status == "passed" else paper.error_text(visible, marks[1])),
                "finish_reason": gen.get("finish_reason")}

    # ------------------------------------------------------------------ output

    def ordered_results(self) -> list[dict]:
        return [self.results[(t.task_id, s, step)] for t in self.tasks for s in range(self.cfg.n)
                for step in range(self.steps + 1)]


def _repairs(attempt: Attempt) -> dict:
    """A generation's note of bad text the server sent, replaced (U+FFFD)."""
    return {"repaired": list(attempt.repaired)} if attempt.repaired else {}


def _nth(items: list[str], i: int, default: str) -> str:
    """Item i, or `default` where the backend gave fewer (a finish reason it did not report)."""
    return items[i] if i < len(items) else default
