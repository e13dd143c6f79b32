"""`persd collect` in paper mode: one task's flow, the reference's way (generate_code_for_alpaca.py).

attempt (the reference's prompt, no stop strings) -> clean (`get_clean_completion`) -> test each
test in its own sandbox run (checker.py) -> failed: the teacher's three-turn chat with the gold
solution (prompts.teacher_messages) -> parse its answer (`parse_chatgpt_output`) -> verify the
same way -> records (formats.py). A task without tests first gets them the reference's way: the
teacher proposes inputs (chatgpt_unittest_instruction.txt) and the reference solution's outputs
become the expectations.

Resources, journaling, resume and shard writing are the default flow's (engine/collect/flow.py);
only what is sent, run and kept differs.
"""
from __future__ import annotations

from persd.engine.collect.flow import TaskFlow
from persd.engine.collect.records import Tally, TaskOutcome, result_line
from persd.engine.paper import checker, cleaning, formats, prompts, unittests
from persd.engine.tasks import Task
from persd.runtime.student.base import RequestRejected


class PaperTaskFlow(TaskFlow):
    async def run(self, task: Task, prior_attempt: dict | None = None, on_attempt=None) -> TaskOutcome:
        tally = Tally()
        more: dict = {"protocol": "paper"}
        task = unittests.apply(task, self.cfg.tests_from)  # --tests-from: the release's unit tests

        def error(reason: str) -> TaskOutcome:
            return TaskOutcome(result_line(task, "error", "error", reason, tally, error=reason, **more))

        tests = list(task.extra.get("io_tests") or [])
        if not tests:
            if prompts.task_prompt(task) is None:  # nothing to attempt: no teacher call either
                return error("no `def <name>(...):` line found for the task's function (the reference skips it)")
            tests, why = await self._paper_tests(task, tally)
            more["generated_tests"] = tests
            if not tests:
                return error(why)
        prompt = prompts.task_prompt(task, more.get("generated_tests"))
        if prompt is None:
            return error("no `def <name>(...):` line found for the task's function (the reference skips it)")
        try:
            attempt = prior_attempt if prior_attempt is not None else await self._attempt(
                task, on_attempt, self._request(task, prompt))
        except RequestRejected as exc:
            return error(f"student rejected the request: {exc}")
        tally.student_tokens_out = int(attempt.get("completion_tokens", 0))
        cleaned = [self._clean(prompt, text) for text in attempt["texts"]] or [prompt]
        verdicts = [await checker.check_alpaca(self._runner(tally), code, tests, self.cfg.exec_timeout)
                    for code in cleaned]
        passing = [i for i, v in enumerate(verdicts) if v.passed]
        chosen = passing[0] if passing else 0
        code, verdict = cleaned[chosen], verdicts[chosen]
        more.update(samples=len(cleaned), samples_passed=len(passing))
        status = "passed" if verdict.passed else "failed"
        if passing:
            return TaskOutcome(result_line(task, "student_passed", status, "", tally, **more))

        rectified, ran, turns, last = await self._refine_paper(task, prompt, code, verdict.error, tests, tally)
        more.update(refine_turns=turns, refine_status="passed" if ran is not None else "failed",
                    refine_feedback=last)
        records: list[dict] = []
        if ran is not None:
            records += formats.refinement_records(task, self.formats, prompt, rectified, ran, code, verdict.error,
                                                  self.meta, turns)
        records += formats.gold_records(task, self.formats, prompt, ran is not None, self.meta, code, verdict.error)
        records.sort(key=lambda r: formats.PAPER_FORMATS.index(r["format"]))
        outcome = "refined" if ran is not None else "unresolved"
        return TaskOutcome(result_line(task, outcome, status, verdict.error, tally, **more), records)

    # ------------------------------------------------------------------ steps

    def _request(self, task: Task, prompt: str):
        from persd.runtime.student import SamplingParams, StudentRequest

        params = SamplingParams(n=self.cfg.samples, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                max_tokens=self.cfg.max_tokens, seed=self.cfg.seed, top_k=self.cfg.top_k)  # no stops
        return StudentRequest(prompt=prompt, params=params, request_id=task.task_id)

    def _clean(self, prompt: str, text: str) -> str:
        from persd.runtime.decoding import resolve_cleanup

        return cleaning.attempt_code(prompt, text, resolve_cleanup(self.cfg.clean_up_spaces, self.cfg.student_model))

    def _runner(self, tally: Tally):
        async def run(program: str, timeout: float):
            return await self._in_sandbox(self.b.sandbox.run(program, timeout=timeout), tally)

        return run

    def _teacher_context(self, task: Task) -> str | None:
        gold = prompts.gold(task)
        return gold if (self.cfg.teacher_context or "gold") == "gold" and gold else None

    async def _refine_paper(self, task: Task, prompt: str, code: str, error: str, tests: list[dict], tally: Tally):
        """Teacher turns until one answer passes: (parsed answer, program that passed or None, turns, last error)."""
        messages = prompts.teacher_messages(prompt, code, error, self._teacher_context(task))
        last = error
        for turn in range(1, self.cfg.refine_turns + 1):
            resp = await self._teach(messages, tally)
            text = resp.texts[0] if resp.texts else ""
            _, rectified = cleaning.parse_teacher_output(text, code)
            verdict = await checker.check_alpaca(self._runner(tally), rectified, tests, self.cfg.exec_timeout)
            if verdict.passed:
                return rectified, cleaning.truncate_code(rectified), turn, ""
            last = verdict.error
            follow = prompts.fill(prompts.teacher_turns()[1], [("<<TASK>>", prompts.split_prompt(prompt)[0]),
                                                               ("<<HEADER>>", prompts.split_prompt(prompt)[1]),
                                                               ("<<CODE>>", rectified), ("<<ERROR>>", last)])
            messages = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": follow}]
        return None, None, self.cfg.refine_turns, last

    async def _paper_tests(self, task: Task, tally: Tally) -> tuple[list[dict], str]:
        code = prompts.gold(task)
        if "def " not in code:
            return [], "task has no tests and no reference function to derive them from (the reference skips it)"
        entry = code.split("def ")[1].split("(")[0].strip()
        resp = await self._teach(prompts.unittest_messages(prompts.raw(task, "instruction", task.instruction), code),
                                 tally)
        tests = await checker.expected_outputs(self._runner(tally), code, entry, resp.texts[0] if resp.texts else "",
                                               self.cfg.exec_timeout)
        return tests, "" if tests else "none of the teacher's proposed inputs ran on the reference solution"
