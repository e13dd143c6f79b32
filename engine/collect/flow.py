"""One task, one coroutine: (tests) -> attempt -> execute -> (failed) refine -> verify -> records.

`TaskFlow` is the order of the steps (engine/collect/steps.py), the same for every protocol. What a
protocol sends and how it checks a program is its `FlowVariant`: the persd protocol's is here, paper
mode's (engine/paper/flow.py) registers itself under "paper" (`register`), so collect never imports it.

A backend's failure is judged by the one guard (engine/collect/guard.py): a request only this task
can never get served (a prompt the student rejects as too long) is outcome `error`, as is a task for
which no tests could be made; a failure of the backend itself (teacher refusing the key, budget
reached, student unreachable after its retries, a broken sandbox) raises `BackendFailure` and the
run stops with resumable state.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Callable

from persd.engine import context_fit, lessons
from persd.engine.collect import testgen
from persd.engine.collect.config import FORMATS, CollectConfig
from persd.engine.collect.guard import BackendFailure
from persd.engine.collect.layout import CollectLayout, Record
from persd.engine.collect.records import (
    Meta,
    Refinement,
    Tally,
    TaskOutcome,
    Verdict,
    direct_records,
    refinement_records,
)
from persd.engine.collect.steps import Attempt, Backends, Limits, Steps, TeacherSampling
from persd.engine.collect.studentio import extract, student_request
from persd.engine.failures import FailurePolicy, TaskFailed
from persd.engine.tasks import Task
from persd.engine.timelimits import TimeLimits, config_from
from persd.runtime.errors import PersdError

__all__ = ["BackendFailure", "Backends", "FlowVariant", "Limits", "TaskFlow", "TaskRun", "register"]

FORMAT_ORDER = {f: i for i, f in enumerate(FORMATS)}


@dataclass
class TaskRun:
    """One task on its way through the flow: what the variant prepared, what it spent."""

    task: Task
    tally: Tally = field(default_factory=Tally)
    prompt: str = ""  # what the student completes (the variant's)
    tests: list[dict] | None = None  # paper mode: the task's input/output tests
    generated_tests: list | None = None  # tests made for a task without any (shown in its result line)


class FlowVariant:
    """A protocol's prompts, checker and records; this base class is the persd protocol's."""

    label: str | None = None  # named in each result line (`protocol`)
    keeps_unresolved = True  # an unresolved task's line keeps its attempt and the teacher's last program

    def __init__(self, cfg: CollectConfig, steps: Steps, meta: Meta):
        self.cfg, self.steps, self.meta = cfg, steps, meta

    @classmethod
    def check_config(cls, cfg: CollectConfig) -> None:
        """Check the variant's own inputs before the run starts (a bad file: its line and field now, not
        mid-run). Raises UsageError or InputError."""

    async def prepare(self, run: TaskRun) -> str | None:
        """Tests (made by the teacher for a task without any) and the prompt; the reason the task
        cannot be attempted, or None."""
        if not run.task.has_tests:
            gen = await self._make_tests(run)
            run.generated_tests = gen.tests
            if gen.error:
                return gen.error
            run.task = run.task.with_tests(gen.tests)
        run.prompt = run.task.prompt
        self.steps.measure_soon(run.task)  # its time limit, while the student writes the attempt
        return None

    def request(self, run: TaskRun):
        return student_request(run.task, self.cfg, self.cfg.seed)

    def program(self, run: TaskRun, text: str | None) -> str:
        """The program one of the student's texts stands for (None: the student gave no text)."""
        return "" if text is None else extract(run.task, text, self.cfg.student.chat)

    async def check(self, run: TaskRun, program: str) -> Verdict:
        return Verdict.of(await self.steps.execute(run.task, run.task.program(program), run.tally))

    def refine_messages(self, run: TaskRun, code: str, verdict: Verdict) -> list[dict]:
        """The teacher's first refinement prompt, the attempt and the error cut to fit its context."""
        return self.steps.fit(lambda c, f: lessons.refine_messages(run.task, c, f), [code, verdict.feedback],
                              run.tally)

    def parse_answer(self, run: TaskRun, text: str, code: str) -> str:
        return extract(run.task, text, True)

    def followup(self, run: TaskRun, answer: str, verdict: Verdict) -> dict:
        return lessons.followup_message(verdict.feedback)

    def direct_lesson(self, run: TaskRun, student_failed: bool) -> "Turns | None":
        """The teacher's own solution (formats stand, and inpd for a failed task), or None."""
        formats = self.cfg.formats
        if "stand" in formats or ("inpd" in formats and student_failed):
            return Turns(self, run, lambda: lessons.direct_messages(run.task))
        return None

    async def records(self, run: TaskRun, code: str, verdict: Verdict, refinement: Refinement | None,
                      direct: Refinement | None) -> list[Record]:
        task, formats, failed = run.task, self.cfg.formats, refinement is not None
        records: list[Record] = []
        if refinement is not None and refinement.solution is not None:
            records += refinement_records(task, formats, refinement.solution, code, verdict.feedback, self.meta,
                                          refinement.turns)
        if direct is not None and direct.solution is not None:
            records += direct_records(task, formats, direct.solution, failed, self.meta, code if failed else "",
                                      verdict.feedback if failed else "")
        records.sort(key=lambda r: FORMAT_ORDER[r.format])
        return await self._verify_recut(run, records)

    # ------------------------------------------------------------------ the persd protocol's own steps

    async def _verify_recut(self, run: TaskRun, records: list[Record]) -> list[Record]:
        """A completion re-cut to continue the prompt's header (not a plain suffix of the verified
        solution) must pass as `prompt + completion` too; where it does not, the record keeps the
        whole program as its completion."""
        verdicts: dict[str, bool] = {}
        out = []
        for r in records:
            solution = r.meta["solution"]
            if not solution.endswith(r.completion):
                if r.completion not in verdicts:
                    result = await self.check(run, run.task.prompt + r.completion)
                    verdicts[r.completion] = result.passed
                if not verdicts[r.completion]:
                    r = replace(r, completion=solution)
            out.append(r)
        return out

    async def _make_tests(self, run: TaskRun) -> testgen.TestgenResult:
        task, tally = run.task, run.tally
        if not task.reference:
            return testgen.TestgenResult([], "task has no tests and no reference solution to derive them from")
        if not task.entry_point:
            return testgen.TestgenResult([], "task has no tests and no entry_point to call")
        want = self.cfg.testgen_inputs
        resp = await self.steps.teach(lessons.testgen_messages(task, want), tally)
        calls = lessons.parse_calls(resp.texts[0] if resp.texts else "", task.entry_point, want)
        if not calls:
            return testgen.TestgenResult([], f"the teacher proposed no usable calls of {task.entry_point}(...)")
        marker = testgen.new_marker()
        probe_tests = testgen.reference_probe_tests(calls, marker)
        probe = await self.steps.execute(task, task.program(task.reference, probe_tests), tally)
        problems: list[str] = []
        tests = testgen.parse_probe(probe.stdout, calls, marker, problems)
        if not tests:
            why = probe.feedback if probe.status != "passed" else "; ".join(problems) or "no call returned a value"
            return testgen.TestgenResult([], f"running the reference on the teacher's inputs failed: {why}"[:1000])
        check = await self.steps.execute(task, task.program(task.reference, "\n".join(tests)), tally)
        if check.status != "passed":
            return testgen.TestgenResult(tests, f"the reference fails its generated tests: {check.feedback}"[:1000])
        return testgen.TestgenResult(tests)


@dataclass
class Turns:
    """A variant's prompts and checker bound to one task: the `Lesson` the refine step walks."""

    variant: FlowVariant
    run: TaskRun
    first: Callable[[], list[dict]]  # built when the refinement starts (fitting it may fail the refinement)
    code: str = ""  # the student's attempt the answers refine

    def messages(self) -> list[dict]:
        return self.first()

    def parse(self, text: str) -> str:
        return self.variant.parse_answer(self.run, text, self.code)

    async def check(self, answer: str) -> Verdict:
        return await self.variant.check(self.run, answer)

    def followup(self, answer: str, verdict: Verdict) -> dict:
        return self.variant.followup(self.run, answer, verdict)


VARIANTS: dict[str, type[FlowVariant]] = {"persd": FlowVariant}


def register(protocol: str) -> Callable[[type[FlowVariant]], type[FlowVariant]]:
    """Class decorator: the flow variant of `--protocol NAME` (paper mode registers itself)."""
    def add(cls: type[FlowVariant]) -> type[FlowVariant]:
        VARIANTS[protocol] = cls
        return cls

    return add


def variant_for(protocol: str) -> type[FlowVariant]:
    if protocol not in VARIANTS:
        raise PersdError(f"no task flow is registered for --protocol {protocol} (the command imports "
                         f"persd.engine.{protocol}.flow to register it)")
    return VARIANTS[protocol]


def _context_budget(cfg: CollectConfig) -> int | None:
    """Prompt tokens a teacher request may use: teacher.context_tokens, else the price table's context for
    the model, less the answer's tokens; None where unknown or the teacher is the offline stand-in."""
    from persd.runtime.teacher.pricing import context_tokens

    if cfg.teacher.standin:
        return None
    context = cfg.teacher.context_tokens or context_tokens(cfg.teacher.model)
    return context_fit.budget_for(context, cfg.teacher.max_tokens)


class TaskFlow:
    def __init__(self, cfg: CollectConfig, backends: Backends, limits: Limits, meta: Meta):
        time_limits = TimeLimits(backends.sandbox, config_from(cfg), cache=CollectLayout(cfg.out_dir).time_limits_path)
        t = cfg.teacher
        sampling = TeacherSampling(t.temperature, t.top_p, t.max_tokens)
        self.failures = FailurePolicy(cfg.failure_breaker)  # per-request failures: counted, held, the breaker
        self.steps = Steps(backends, limits, time_limits, sampling, failures=self.failures,
                           context_budget=_context_budget(cfg))
        self.variant = variant_for(cfg.protocol)(cfg, self.steps, meta)
        self.refine_turns = cfg.refine_turns

    async def run(self, task: Task, prior_attempt: dict | None = None,
                  on_attempt: Callable[[dict], None] | None = None) -> TaskOutcome:
        """The whole flow of one task. `prior_attempt`: the student's journaled attempt (resume);
        `on_attempt` is called with a fresh attempt before anything depends on it (journaling)."""
        run = TaskRun(task)
        try:
            return await self._run(run, prior_attempt, on_attempt)
        except TaskFailed as exc:  # a request only this task makes can never be served
            run.tally.failure = exc.record()
            return self._failed(run, exc.reason)

    def _failed(self, run: TaskRun, reason: str) -> TaskOutcome:
        return TaskOutcome.failed(run.task.task_id, reason, run.tally, protocol=self.variant.label,
                                  generated_tests=run.generated_tests)

    async def _run(self, run: TaskRun, prior_attempt: dict | None,
                   on_attempt: Callable[[dict], None] | None) -> TaskOutcome:
        v, steps = self.variant, self.steps
        why = await v.prepare(run)
        if why is not None:
            return self._failed(run, why)
        if prior_attempt is not None:
            attempt = Attempt.from_journal(prior_attempt)
        else:
            attempt = await steps.attempt(v.request(run), run.task.task_id)
            if on_attempt is not None:
                on_attempt(attempt.to_journal())
        run.tally.student_tokens_out = attempt.completion_tokens

        # execute: every sample; the first that passes is the attempt, else the first
        programs = [v.program(run, text) for text in attempt.texts] or [v.program(run, None)]
        verdicts = await _all([v.check(run, p) for p in programs])
        passing = [i for i, r in enumerate(verdicts) if r.passed]
        chosen = passing[0] if passing else 0
        code, verdict = programs[chosen], verdicts[chosen]
        failed = not passing

        # refine (a failed attempt) and the teacher's direct solution, side by side
        jobs = []
        if failed:
            jobs.append(steps.refine(Turns(v, run, lambda: v.refine_messages(run, code, verdict), code),
                                     self.refine_turns, run.tally))
        direct_lesson = v.direct_lesson(run, failed)
        if direct_lesson is not None:
            jobs.append(steps.refine(direct_lesson, 1, run.tally))
        done = await _all(jobs)
        refinement = done[0] if failed else None
        direct = done[-1] if direct_lesson is not None else None

        out = TaskOutcome(run.task.task_id, "student_passed", verdict.status, verdict.feedback, run.tally,
                          protocol=v.label, generated_tests=run.generated_tests or None, samples=len(programs),
                          samples_passed=len(passing), timeout=verdict if verdict.status == "timeout" else None,
                          refinement=refinement, direct=direct.last if direct is not None else None,
                          student_repaired=list(attempt.repaired) or None)
        if refinement is not None:
            out.outcome = "refined" if refinement.solution is not None else "unresolved"
            if out.outcome == "unresolved" and v.keeps_unresolved:
                # no record keeps these: `persd report` shows them (a refined task's are in its records' meta)
                out.attempt = code
        out.records = await v.records(run, code, verdict, refinement, direct)
        if attempt.repaired:  # the attempt these records show had bad text replaced (U+FFFD)
            for r in out.records:
                r.meta["student_repaired"] = list(attempt.repaired)
        return out


async def _all(coros: list) -> list:
    """Await the steps side by side (one is awaited as it is)."""
    if len(coros) == 1:
        return [await coros[0]]
    return list(await asyncio.gather(*coros)) if coros else []
