"""One task, one coroutine: attempt -> execute -> (failed) refine -> verify -> emit.

The flow knows its three resources only through their runtime interfaces (student.generate,
sandbox.run, teacher.chat), each behind its own Limiter, so tasks interleave freely: while one
waits on the teacher, others generate or execute.

A failure of a backend itself (teacher refusing the key, budget reached, student unreachable
after its retries, a broken sandbox) is not a task outcome: it raises `BackendFailure` and the
run stops with resumable state. A task-level problem (no tests could be made, a prompt the student
rejects as too long) is outcome `error`. One request that fails for its own content (persd.engine.failures:
context too long, content filter, an unreadable answer) fails its task with that cause (`failure` in the
result line: outcome `error`, or `unresolved` where the refinement failed) and the run goes on, until the
failure breaker says it is not one request's fault.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from persd.engine import context_fit, lessons
from persd.engine.collect import testgen
from persd.engine.collect.config import FORMATS, CollectConfig
from persd.engine.collect.limiter import Limiter
from persd.engine.collect.records import Meta, Tally, TaskOutcome, direct_records, refinement_records, result_line
from persd.engine.collect.shards import disk_error
from persd.engine.collect.studentio import extract, student_request
from persd.engine.failures import FailurePolicy, TaskFailed
from persd.engine.tasks import Task
from persd.engine.timelimits import TimeLimits, config_from, limit_fields
from persd.runtime.errors import PersdError

FORMAT_ORDER = {f: i for i, f in enumerate(FORMATS)}


class BackendFailure(PersdError):
    """A resource failed for good (not a task's fault): the run stops; rerun to resume."""


@dataclass
class Limits:
    student: Limiter
    sandbox: Limiter
    teacher: Limiter

    @classmethod
    def from_config(cls, cfg: CollectConfig, sandbox_workers: int) -> "Limits":
        return cls(
            student=Limiter("student", cfg.student_concurrency),
            sandbox=Limiter("sandbox", max(1, sandbox_workers)),
            teacher=Limiter("teacher", cfg.teacher_max_in_flight),
        )


@dataclass
class Backends:
    """The three resources, opened by persd.engine.collect.backends (or fakes, in tests and benchmarks)."""

    student: Any
    sandbox: Any
    teacher: Any


class TaskFlow:
    def __init__(self, cfg: CollectConfig, backends: Backends, limits: Limits, meta: Meta):
        from persd.runtime.teacher import ChatRequest  # the teacher's request type (no network code here)

        self._ChatRequest = ChatRequest
        self.cfg = cfg
        self.b = backends
        self.lim = limits
        self.meta = meta
        self.formats = cfg.formats
        self.need_direct = "stand" in cfg.formats or "inpd" in cfg.formats
        self.time_limits = TimeLimits(backends.sandbox, config_from(cfg),
                                      cache=cfg.out_dir / "work" / "time-limits.jsonl")
        self.failures = FailurePolicy(cfg.failure_breaker)  # per-request failures: counted, the breaker
        self.context_budget = self._context_budget()

    # ------------------------------------------------------------------ the flow

    async def run(self, task: Task, prior_attempt: dict | None = None,
                  on_attempt: Callable[[dict], None] | None = None) -> TaskOutcome:
        """The whole flow of one task. `prior_attempt`: the student's journaled attempt (resume);
        `on_attempt` is called with a fresh attempt before anything depends on it (journaling)."""
        tally = Tally()
        more: dict[str, Any] = {}
        if not task.has_tests:
            try:
                gen = await self._make_tests(task, tally)
            except TaskFailed as exc:
                tally.failure = exc.record()
                return TaskOutcome(result_line(task, "error", "error", str(exc), tally, error=str(exc), **more))
            more["generated_tests"] = gen.tests
            if gen.error:
                return TaskOutcome(result_line(task, "error", "error", gen.error, tally, error=gen.error, **more))
            task = task.with_tests(gen.tests)

        try:
            attempt = prior_attempt if prior_attempt is not None else await self._attempt(task, on_attempt)
        except TaskFailed as exc:  # this task's prompt can never be served (too long, ...)
            reason = f"student rejected the request: {exc}"
            tally.failure = exc.record()
            return TaskOutcome(result_line(task, "error", "error", reason, tally, error=reason, **more))
        tally.student_tokens_out = int(attempt.get("completion_tokens", 0))
        if attempt.get("repaired"):  # the server sent bad text (NUL, lone surrogate, bytes not UTF-8): replaced
            more["student_repaired"] = attempt["repaired"]
        programs = [extract(task, text, self.cfg.student_chat) for text in attempt["texts"]]
        if not programs:
            programs = [""]
        if len(programs) == 1:
            results = [await self._execute(task, programs[0], tally)]
        else:
            results = await asyncio.gather(*(self._execute(task, p, tally) for p in programs))
        passing = [i for i, r in enumerate(results) if r.status == "passed"]
        chosen = passing[0] if passing else 0
        attempt_code, first = programs[chosen], results[chosen]
        more["samples"] = len(programs)
        more["samples_passed"] = len(passing)
        if first.status == "timeout":  # which limit stopped the attempt, and its value
            more.update({k: v for k, v in limit_fields(first).items() if k != "cpu_s"})
        student_failed = not passing

        jobs: list[Awaitable] = []
        if student_failed:
            jobs.append(self._refine(task, attempt_code, first.feedback, tally))
        if "stand" in self.formats or ("inpd" in self.formats and student_failed):
            jobs.append(self._direct(task, tally))
        done = [await jobs[0]] if len(jobs) == 1 else (await asyncio.gather(*jobs) if jobs else [])

        records: list[dict] = []
        outcome = "student_passed"
        if student_failed:
            solution, turns, last, last_program = done[0]
            more["refine_turns"] = turns
            more["refine_status"] = last.status if last is not None else None
            more["refine_feedback"] = last.feedback if last is not None else ""
            if solution is not None:
                outcome = "refined"
                records += refinement_records(task, self.formats, solution, attempt_code, first.feedback,
                                              self.meta, turns)
            else:
                outcome = "unresolved"
                # no record keeps these: `persd report` shows them (a refined task's are in its records' meta)
                more["attempt"] = attempt_code
                more["refinement"] = last_program  # the teacher's last (failing) program
        if len(done) > (1 if student_failed else 0):
            direct_solution, direct_result = done[-1]
            more["direct_status"] = direct_result.status if direct_result is not None else None
            if direct_solution is not None:
                records += direct_records(task, self.formats, direct_solution, student_failed, self.meta,
                                          attempt_code if student_failed else "",
                                          first.feedback if student_failed else "")
        records.sort(key=lambda r: FORMAT_ORDER[r["format"]])
        records = await self._verify_recut(task, records, tally)
        if attempt.get("repaired"):  # the attempt these records show had bad text replaced (U+FFFD)
            for r in records:
                r["meta"]["student_repaired"] = attempt["repaired"]
        if "generated_tests" in more and not more["generated_tests"]:
            more.pop("generated_tests")
        return TaskOutcome(result_line(task, outcome, first.status, first.feedback, tally, **more), records)

    # ------------------------------------------------------------------ steps

    async def _attempt(self, task: Task, on_attempt: Callable[[dict], None] | None, req=None) -> dict:
        req = req if req is not None else student_request(task, self.cfg, self.cfg.seed)
        async with self.lim.student.timed():
            try:
                with self.failures.guard("student"):
                    out = await self.b.student.generate(req)
            except TaskFailed:
                raise
            except PersdError as exc:
                raise BackendFailure(f"student: {exc}") from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an unreachable server after the backend's retries, an OOM, ...
                raise BackendFailure(f"student failed on task {task.task_id}: {type(exc).__name__}: {exc}") from exc
        attempt = {
            "texts": list(out.texts),
            "finish_reasons": list(getattr(out, "finish_reasons", []) or []),
            "prompt_tokens": int(getattr(out, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(out, "completion_tokens", 0) or 0),
        }
        if getattr(out, "repaired", None):
            attempt["repaired"] = list(out.repaired)
        if on_attempt is not None:
            on_attempt(attempt)
        return attempt

    async def _verify_recut(self, task: Task, records: list[dict], tally: Tally) -> list[dict]:
        """A completion re-cut to continue the prompt's header (not a plain suffix of the verified
        solution) must pass as `prompt + completion` too; where it does not, the record keeps the
        whole program as its completion."""
        verdicts: dict[str, bool] = {}
        for r in records:
            completion, solution = r["completion"], r["meta"]["solution"]
            if solution.endswith(completion):
                continue
            if completion not in verdicts:
                result = await self._execute(task, task.prompt + completion, tally)
                verdicts[completion] = result.status == "passed"
            if not verdicts[completion]:
                r["completion"] = solution
        return records

    async def _execute(self, task: Task, solution: str, tally: Tally, tests: str | None = None):
        program = task.program(solution, tests)
        return await self._in_sandbox(self.time_limits.run(task, program), tally)

    async def _in_sandbox(self, execution, tally: Tally):
        """Await one sandbox execution under the sandbox's limiter; a failing sandbox stops the run."""
        async with self.lim.sandbox.timed():
            try:
                result = await execution
            except PersdError as exc:
                raise BackendFailure(f"sandbox: {exc}") from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise BackendFailure(f"sandbox failed: {type(exc).__name__}: {exc}") from exc
        tally.executions += 1
        return result

    async def _teach(self, messages: list[dict], tally: Tally):
        req = self._ChatRequest(
            messages=messages,
            temperature=self.cfg.teacher_temperature,
            top_p=self.cfg.teacher_top_p,
            max_tokens=self.cfg.teacher_max_tokens,
            n=1,
            sample_index=0,
        )
        async with self.lim.teacher.timed():
            try:
                with self.failures.guard("teacher"):
                    resp = await self.b.teacher.chat(req)
            except PersdError as exc:  # TeacherError (status + body), BudgetExceeded
                raise BackendFailure(f"teacher: {exc}") from exc
            except OSError as exc:  # the teacher's journal could not be written
                raise disk_error(exc, "the teacher journal") from exc
        tally.add_teacher(resp)
        return resp

    # ------------------------------------------------------------------ the teacher's context

    def _context_budget(self) -> int | None:
        """Prompt tokens a teacher request may use (--teacher-context-tokens, else the price table's context
        for the model), None where unknown or the teacher is the offline stand-in."""
        from persd.runtime.teacher.pricing import context_tokens

        if self.cfg.standin_teacher:
            return None
        context = self.cfg.teacher_context_tokens or context_tokens(self.cfg.teacher_model)
        return context_fit.budget_for(context, self.cfg.teacher_max_tokens)

    def _fit(self, build, texts: list[str], tally: Tally) -> list[dict]:
        """The messages `build(*texts)` makes, cut to the teacher's context (counted with its own tokenizer)."""
        estimator = getattr(self.b.teacher, "estimator", None)
        if estimator is None:
            from persd.runtime.teacher.tokens import TokenEstimator

            estimator = TokenEstimator()
        messages, cut = context_fit.fit(build, texts, self.context_budget, estimator.prompt_tokens)
        tally.context_cut_chars += cut
        return messages

    async def _refine(self, task: Task, attempt: str, feedback: str, tally: Tally):
        """Up to --refine-turns teacher turns; returns (verified program or None, turns used, last result,
        last program). A turn whose request fails for its own content ends the refinement (tally.failure)."""
        last, program, turn = None, "", 0
        try:
            messages = self._fit(lambda a, f: lessons.refine_messages(task, a, f), [attempt, feedback], tally)
            for turn in range(1, self.cfg.refine_turns + 1):
                resp = await self._teach(messages, tally)
                text = resp.texts[0] if resp.texts else ""
                program = extract(task, text, True)
                last = await self._execute(task, program, tally)
                if last.status == "passed":
                    return program, turn, last, program
                if turn < self.cfg.refine_turns:
                    so_far = messages + [{"role": "assistant", "content": text}]
                    messages = self._fit(lambda f, before=so_far: before + [lessons.followup_message(f)],
                                         [last.feedback], tally)
        except TaskFailed as exc:
            tally.failure = exc.record()
            return None, turn, last, program
        return None, self.cfg.refine_turns, last, program

    async def _direct(self, task: Task, tally: Tally):
        try:
            resp = await self._teach(lessons.direct_messages(task), tally)
        except TaskFailed as exc:
            tally.failure = exc.record()
            return None, None
        program = extract(task, resp.texts[0] if resp.texts else "", True)
        result = await self._execute(task, program, tally)
        return (program if result.status == "passed" else None), result

    async def _make_tests(self, task: Task, tally: Tally) -> testgen.TestgenResult:
        if not task.reference:
            return testgen.TestgenResult([], "task has no tests and no reference solution to derive them from")
        if not task.entry_point:
            return testgen.TestgenResult([], "task has no tests and no entry_point to call")
        want = self.cfg.testgen_inputs
        resp = await self._teach(lessons.testgen_messages(task, want), tally)
        calls = lessons.parse_calls(resp.texts[0] if resp.texts else "", task.entry_point, want)
        if not calls:
            return testgen.TestgenResult([], f"the teacher proposed no usable calls of {task.entry_point}(...)")
        marker = testgen.new_marker()
        probe = await self._execute(task, task.reference, tally, tests=testgen.reference_probe_tests(calls, marker))
        problems: list[str] = []
        tests = testgen.parse_probe(probe.stdout, calls, marker, problems)
        if not tests:
            why = probe.feedback if probe.status != "passed" else "; ".join(problems) or "no call returned a value"
            return testgen.TestgenResult([], f"running the reference on the teacher's inputs failed: {why}"[:1000])
        check = await self._execute(task, task.reference, tally, tests="\n".join(tests))
        if check.status != "passed":
            return testgen.TestgenResult(tests, f"the reference fails its generated tests: {check.feedback}"[:1000])
        return testgen.TestgenResult(tests)
