"""The steps every task flow is made of, over the three typed resources (runtime.interfaces).

    steps = Steps(backends, limits, time_limits, teacher_sampling)
    attempt = await steps.attempt(request)                 # the student: Attempt
    result = await steps.execute(task, program, tally)     # the sandbox, under the task's time limit
    answer = await steps.teach(messages, tally)            # the teacher: ChatResponse
    messages = steps.fit(build, [attempt, error], tally)   # a teacher prompt cut to the teacher's context
    refinement = await steps.refine(lesson, turns, tally)  # teacher turns until one answer passes

Collect's flows (engine/collect/flow.py, paper mode's engine/paper/flow.py) and eval's pipeline
(engine/evaluation/pipeline.py) compose these. Each call runs under its resource's limiter (when
the run has limiters) and under the one guard (engine/collect/guard.py), so a backend's failure is
judged in one place: `TaskFailed` (this request only) or `BackendFailure` (stop the run). A
refinement whose request fails for its own content ends there (the task's tally keeps the failure;
its outcome is `unresolved`), as does one whose prompt cannot fit the teacher's context.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from persd.engine import context_fit
from persd.engine.collect.guard import guard
from persd.engine.collect.limiter import Limiter
from persd.engine.collect.records import Refinement, Tally, Verdict
from persd.engine.failures import FailurePolicy, TaskFailed
from persd.engine.tasks import Task
from persd.engine.timelimits import TimeLimits
from persd.runtime.interfaces import Sandbox, Student, Teacher

if TYPE_CHECKING:
    from persd.engine.collect.config import CollectConfig
    from persd.runtime.sandbox import ExecResult
    from persd.runtime.student import StudentRequest
    from persd.runtime.teacher import ChatResponse


@dataclass
class Backends:
    """The three resources of a run, opened by persd.engine.collect.backends.open_backends (or fakes, in
    tests and benchmarks). Eval opens no teacher."""

    student: Student
    sandbox: Sandbox
    teacher: Teacher | None = None


@dataclass
class Limits:
    """One concurrency limiter per resource (collect's progress shows their queues)."""

    student: Limiter
    sandbox: Limiter
    teacher: Limiter

    @classmethod
    def from_config(cls, cfg: CollectConfig, sandbox_workers: int) -> "Limits":
        return cls(
            student=Limiter("student", cfg.student.max_concurrency),
            sandbox=Limiter("sandbox", max(1, sandbox_workers)),
            teacher=Limiter("teacher", cfg.teacher.max_in_flight),
        )


@dataclass(frozen=True)
class TeacherSampling:
    """How the teacher samples (None: the provider's default)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Attempt:
    """The student's answer to one request: `n` texts. Journaled as `to_journal()` (resume reuses it)."""

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repaired: tuple[str, ...] = ()  # bad text the server sent (NUL, lone surrogate, not UTF-8), replaced by U+FFFD

    def to_journal(self) -> dict[str, Any]:
        entry = {"texts": list(self.texts), "finish_reasons": list(self.finish_reasons),
                 "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
        if self.repaired:
            entry["repaired"] = list(self.repaired)
        return entry

    @classmethod
    def from_journal(cls, entry: dict[str, Any]) -> "Attempt":
        return cls(list(entry.get("texts") or []), list(entry.get("finish_reasons") or []),
                   int(entry.get("prompt_tokens", 0) or 0), int(entry.get("completion_tokens", 0) or 0),
                   tuple(entry.get("repaired") or ()))


class Lesson(Protocol):
    """What one refinement sends and checks (a flow variant's prompts and checker)."""

    def messages(self) -> list[dict]: ...

    def parse(self, text: str) -> str:
        """The program (or answer) a teacher's text stands for."""

    async def check(self, answer: str) -> Verdict: ...

    def followup(self, answer: str, verdict: Verdict) -> dict:
        """The next user turn after a failing answer."""


class Steps:
    def __init__(self, backends: Backends, limits: Limits | None = None, time_limits: TimeLimits | None = None,
                 teacher_sampling: TeacherSampling = TeacherSampling(), exec_timeout: float | None = None,
                 failures: FailurePolicy | None = None, context_budget: int | None = None):
        self.b = backends
        self.failures = failures  # counts the student's and the teacher's failed requests, holds the breaker
        self.context_budget = context_budget  # prompt tokens a teacher request may use (None: no fitting)
        self.limits = limits
        self.time_limits = time_limits
        self.teacher_sampling = teacher_sampling
        self.exec_timeout = exec_timeout  # without time limits: each program's wall-clock limit
        self.teacher_waits = 0  # tasks waiting on a teacher answer now
        self.on_teacher_wait: Callable[[], None] | None = None  # called as one more starts waiting

    def _timed(self, name: str):
        return getattr(self.limits, name).timed() if self.limits is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------ attempt

    async def attempt(self, request: StudentRequest, task_id: str | None = None) -> Attempt:
        """One student request. Raises TaskFailed for a request the student can never serve."""
        async with self._timed("student"), guard("student", task_id, failures=self.failures):
            out = await self.b.student.generate(request)
        return Attempt(list(out.texts), list(getattr(out, "finish_reasons", []) or []),
                       int(getattr(out, "prompt_tokens", 0) or 0), int(getattr(out, "completion_tokens", 0) or 0),
                       tuple(getattr(out, "repaired", None) or ()))

    # ------------------------------------------------------------------ execute

    def measure_soon(self, task: Task) -> None:
        """Measure `task`'s time limit in the background while its student generates (engine/timelimits.py),
        so that its first check does not wait for the measurement."""
        if self.time_limits is not None:
            self.time_limits.measure_soon(task)

    async def close(self) -> None:
        """The run is ending: stop what was started ahead for it."""
        if self.time_limits is not None:
            await self.time_limits.close()

    async def execute(self, task: Task, program: str, tally: Tally | None = None) -> ExecResult:
        """A whole program of `task`'s in the sandbox, under the task's time limit."""
        if self.time_limits is not None:
            return await self._in_sandbox(lambda: self.time_limits.run(task, program), tally)
        return await self._in_sandbox(lambda: self.b.sandbox.run(program, timeout=self.exec_timeout), tally)

    async def run(self, program: str, timeout: float, tally: Tally | None = None) -> ExecResult:
        """A program under a wall-clock limit of its own (paper mode's checker)."""
        return await self._in_sandbox(lambda: self.b.sandbox.run(program, timeout=timeout), tally)

    async def _in_sandbox(self, execution: Callable[[], Awaitable[ExecResult]], tally: Tally | None) -> ExecResult:
        # a callable, not a coroutine: a run stopped while this waits for a sandbox slot leaves none unawaited
        async with self._timed("sandbox"), guard("sandbox"):
            result = await execution()
        if tally is not None:
            tally.executions += 1
        return result

    # ------------------------------------------------------------------ teach, refine

    async def teach(self, messages: list[dict], tally: Tally) -> ChatResponse:
        from persd.runtime.teacher import ChatRequest  # the teacher's request type (no network code here)

        s = self.teacher_sampling
        req = ChatRequest(messages=messages, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                          n=1, sample_index=0)
        assert self.b.teacher is not None, "this run has no teacher"
        self.teacher_waits += 1
        try:
            if self.on_teacher_wait is not None:  # once this request is with the teacher (queued, for a batch)
                asyncio.get_running_loop().call_soon(self.on_teacher_wait)
            async with self._timed("teacher"), guard("teacher", journal="the teacher journal",
                                                     failures=self.failures):
                resp = await self.b.teacher.chat(req)
        finally:
            self.teacher_waits -= 1
        tally.add_teacher(resp)
        return resp

    def fit(self, build, texts: list[str], tally: Tally) -> list[dict]:
        """The messages `build(*texts)` makes, the texts cut (head and tail kept) so the prompt fits the
        teacher's context, counted with the teacher client's own estimator. Raises TaskFailed
        ("prompt_too_long") where even the fixed part cannot fit (persd.engine.context_fit)."""
        if self.context_budget is None:
            return build(*texts)
        estimator = getattr(self.b.teacher, "estimator", None)
        if estimator is None:
            from persd.runtime.teacher.tokens import TokenEstimator

            estimator = TokenEstimator()
        messages, cut = context_fit.fit(build, texts, self.context_budget, estimator.prompt_tokens)
        tally.context_cut_chars += cut
        return messages

    async def refine(self, lesson: Lesson, turns: int, tally: Tally) -> Refinement:
        """Up to `turns` teacher turns, each answer checked; stops at the first that passes. A request that
        fails for its own content (or a prompt that cannot fit) ends the refinement: `tally.failure`."""
        last, answer, done = None, "", 0
        try:
            messages = lesson.messages()
            for turn in range(1, turns + 1):
                resp = await self.teach(messages, tally)
                text = resp.texts[0] if resp.texts else ""
                answer = lesson.parse(text)
                last, done = await lesson.check(answer), turn
                if last.passed:
                    return Refinement(turn, last, answer)
                if turn < turns:
                    nxt = lesson.followup(answer, last)
                    before = messages + [{"role": "assistant", "content": text}]
                    messages = self.fit(lambda c, b=before, n=nxt: b + [{**n, "content": c}], [nxt["content"]], tally)
        except TaskFailed as exc:
            tally.failure = exc.record()
            return Refinement(done, last, answer)  # the turns whose answer was checked
        return Refinement(turns, last, answer)
