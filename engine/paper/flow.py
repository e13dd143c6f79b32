"""`persd collect` in paper mode: the reference's prompts and checks (generate_code_for_alpaca.py)
in collect's flow (engine/collect/flow.py), registered as the flow variant of `--protocol paper`.

attempt (the reference's prompt, no stop strings) -> clean (`get_clean_completion`) -> test each
test in its own sandbox run (checker.py) -> failed: the teacher's three-turn chat with the gold
solution (prompts.teacher_messages) -> parse its answer (`parse_chatgpt_output`) -> verify the
same way -> records (formats.py). A task without tests first gets them the reference's way: the
teacher proposes inputs (chatgpt_unittest_instruction.txt) and the reference solution's outputs
become the expectations.

Resources, journaling, resume and shard writing are collect's; only what is sent, run and kept differs.
"""
from __future__ import annotations

from persd.engine.collect.flow import FlowVariant, TaskRun, Turns, register
from persd.engine.collect.layout import Record
from persd.engine.collect.records import Refinement, Verdict
from persd.engine.paper import checker, cleaning, formats, prompts, unittests

NO_FUNCTION = "no `def <name>(...):` line found for the task's function (the reference skips it)"


@register("paper")
class PaperVariant(FlowVariant):
    label = "paper"
    keeps_unresolved = False

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.tests_from is not None:
            unittests.load(cfg.tests_from)  # --tests-from: the release's unit tests, every line checked

    async def prepare(self, run: TaskRun) -> str | None:
        run.task = task = unittests.apply(run.task, self.cfg.tests_from)  # --tests-from: the release's unit tests
        tests = list(task.extra.get("io_tests") or [])
        if not tests:
            if prompts.task_prompt(task) is None:  # nothing to attempt: no teacher call either
                return NO_FUNCTION
            tests, why = await self._paper_tests(run)
            run.generated_tests = tests
            if not tests:
                return why
        prompt = prompts.task_prompt(task, run.generated_tests)
        if prompt is None:
            return NO_FUNCTION
        run.tests, run.prompt = tests, prompt
        return None

    def request(self, run: TaskRun):
        from persd.runtime.student import SamplingParams, StudentRequest

        params = SamplingParams(n=self.cfg.samples, temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                max_tokens=self.cfg.max_tokens, seed=self.cfg.seed, top_k=self.cfg.top_k)  # no stops
        return StudentRequest(prompt=run.prompt, params=params, request_id=run.task.task_id)

    def program(self, run: TaskRun, text: str | None) -> str:
        """The decoded text is prompt + continuation up to the end token (with transformers 4.29.2's
        decode clean-up where set); the cleaned code where it is not blank, else the whole text
        (generate_code_for_alpaca.py:86-87, :454-457)."""
        from persd.runtime.decoding import resolve_cleanup

        if text is None:
            return run.prompt
        return cleaning.attempt_code(run.prompt, text, resolve_cleanup(self.cfg.clean_up_spaces,
                                                                       self.cfg.student.model))

    async def check(self, run: TaskRun, program: str) -> Verdict:
        verdict = await checker.check_alpaca(self._runner(run), program, run.tests or [], self.cfg.sandbox.timeout_s)
        return Verdict("passed" if verdict.passed else "failed", verdict.error)

    def refine_messages(self, run: TaskRun, code: str, verdict: Verdict) -> list[dict]:
        gold = prompts.gold(run.task)
        context = gold if (self.cfg.teacher.context or "gold") == "gold" and gold else None
        return self.steps.fit(lambda c, e: prompts.teacher_messages(run.prompt, c, e, context),
                              [code, verdict.feedback], run.tally)

    def parse_answer(self, run: TaskRun, text: str, code: str) -> str:
        return cleaning.parse_teacher_output(text, code)[1]

    def followup(self, run: TaskRun, answer: str, verdict: Verdict) -> dict:
        task_text, header = prompts.split_prompt(run.prompt)
        follow = prompts.fill(prompts.teacher_turns()[1], [("<<TASK>>", task_text), ("<<HEADER>>", header),
                                                           ("<<CODE>>", answer), ("<<ERROR>>", verdict.feedback)])
        return {"role": "user", "content": follow}

    def direct_lesson(self, run: TaskRun, student_failed: bool) -> Turns | None:
        return None  # inpd and stand are the dataset's gold (formats.gold_records), not the teacher's

    async def records(self, run: TaskRun, code: str, verdict: Verdict, refinement: Refinement | None,
                      direct: Refinement | None) -> list[Record]:
        if refinement is None:  # the student passed: nothing to learn
            return []
        task, fmts, refined = run.task, self.cfg.formats, refinement.solution is not None
        rows: list[dict] = []
        if refined:
            rows += formats.refinement_records(task, fmts, run.prompt, refinement.answer,
                                               cleaning.truncate_code(refinement.answer), code, verdict.feedback,
                                               self.meta, refinement.turns)
        rows += formats.gold_records(task, fmts, run.prompt, refined, self.meta, code, verdict.feedback)
        rows.sort(key=lambda r: formats.PAPER_FORMATS.index(r["format"]))
        return [Record.from_json(r) for r in rows]

    # ------------------------------------------------------------------ the reference's test generation

    def _runner(self, run: TaskRun):
        async def execute(program: str, timeout: float):
            return await self.steps.run(program, timeout, run.tally)

        return execute

    async def _paper_tests(self, run: TaskRun) -> tuple[list[dict], str]:
        task = run.task
        code = prompts.gold(task)
        if "def " not in code:
            return [], "task has no tests and no reference function to derive them from (the reference skips it)"
        entry = code.split("def ")[1].split("(")[0].strip()
        resp = await self.steps.teach(prompts.unittest_messages(prompts.raw(task, "instruction", task.instruction),
                                                                code), run.tally)
        tests = await checker.expected_outputs(self._runner(run), code, entry, resp.texts[0] if resp.texts else "",
                                               self.cfg.sandbox.timeout_s)
        return tests, "" if tests else "none of the teacher's proposed inputs ran on the reference solution"
