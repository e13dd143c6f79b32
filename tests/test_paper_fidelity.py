"""Paper mode against the reference implementation's own functions (tests/paper_reference.py).

Prompts byte for byte on every HumanEval task, the 307 MBPP tasks and all 3,248 Code-Alpaca tasks;
completion cleaning, answer parsing and header removal on a corpus; the teacher's chat as the
reference's `generate_feedback_for_problems` sends it; the error text of failing programs as the
reference's checker writes it (both run for real: persd's in its sandbox, the reference's in its processes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from persd.engine.paper import checker, cleaning, prompts
from persd.engine.tasks import iter_tasks

from tests.paper_reference import load, require_reference

DATA = Path(os.environ.get("PERSD_DATA_DIR", "/nonexistent"))


def _data(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{name} not found (set PERSD_DATA_DIR to the folder that holds it)")
    return path


# ------------------------------------------------------------------ prompts


def test_humaneval_prompt_matches_reference_on_every_task():
    ref = load("generate_code_for_humaneval")
    tasks = list(iter_tasks("humaneval"))
    assert len(tasks) == 164
    for task in tasks:
        assert prompts.task_prompt(task) == ref.format_prompt(task.prompt), task.task_id


def test_mbpp_prompt_matches_reference_on_the_307():
    ref = load("generate_code_for_mbpp")
    ids = set(json.loads(_data("mbpp-eval-ids-307.json").read_text()))
    rows = {r["task_id"]: r for r in map(json.loads, _data("mbpp.jsonl").read_text().splitlines()) if r}
    seen = 0
    for task in iter_tasks(str(_data("mbpp.jsonl"))):
        num = int(task.task_id.split("/")[1])
        if num not in ids:
            continue
        row = rows[num]
        want = ref.format_prompt(num, row["text"], row["test_list"], row["code"], 1)
        assert prompts.task_prompt(task) == want, task.task_id
        seen += 1
    assert seen == len(ids) == 307


def test_alpaca_prompt_matches_reference_and_release_on_all_tasks():
    ref = load("generate_code_for_alpaca")
    released = {r["task_id"]: r["prompt"] for r in map(json.loads, (DATA / "persdistill-codegen6b" / "persd.jsonl")
                                                        .read_text().splitlines())} \
        if (DATA / "persdistill-codegen6b" / "persd.jsonl").is_file() else {}
    tasks = list(iter_tasks(str(_data("code-alpaca-3k.jsonl"))))
    crlf = 0
    for task in tasks:
        ours = prompts.task_prompt(task)
        # the name as persd chose it; that the choice is the reference's is checked against the released
        # prompts in tests/test_paper_release.py (test_function_name_choice_against_the_reference)
        fn = ours.rstrip("\n").split("\n")[-1].split("def ")[1].split("(")[0].strip()
        raw = task.extra["raw"]
        assert ours == ref.format_prompt(raw["instruction"], [{"input": f"{fn}(1)"}], raw["reference"]), task.task_id
        if released:
            assert ours == released[task.task_id], task.task_id
        crlf += "\r\n" in ours
    assert len(tasks) == 3248 and crlf == 169  # the prompts persd's default layout normalises


# ------------------------------------------------------------------ cleaning

_PROMPT = '"""\nReturn the sum of a list.\n"""\n\nimport math\r\ndef add_all(xs):\n'
_HE_PROMPT = ('"""\nWrite a python function for the following task.\n Add two numbers.\n"""\n'
              'def add(a: int, b: int) -> int:\n')
_CONTINUATIONS = [
    "    return sum(xs)\n",
    "    return sum(xs)\n\nprint(add_all([1, 2]))\n",
    "    total = 0\n    for x in xs:\n        total += x\n    return total\n\n\n# test\nassert add_all([1]) == 1\n",
    "    return sum(xs)\nif __name__ == '__main__':\n    print(1)\n",
    "\n    '''doc'''\n    return sum(xs)\n\"\"\"trailing\"\"\"",
    "",
    "def add_all(xs):\n    return 0\ndef other():\n    pass\n",
    "    return helper(xs)\n\ndef helper(xs):\n    return sum(xs)\n",
    "    return sum(xs)<|endoftext|>garbage after the end",
    "    x = [\n1, 2]\n    return x\n",
    "\tif not xs:\n\t\treturn 0\n\treturn sum(xs)\nclass A:\n    pass\n",
    "    return sum(xs)\n_x = 1\n",
]


@pytest.mark.parametrize("cont", _CONTINUATIONS)
def test_alpaca_cleaning_matches_reference(cont):
    ref = load("generate_code_for_alpaca")
    decoded = _PROMPT + cont
    decoded = decoded[: decoded.find("<|endoftext|>")] if "<|endoftext|>" in decoded else decoded
    assert (cleaning.clean_completion(cleaning.strip_eos(_PROMPT + cont), _PROMPT)
            == ref.get_clean_completion(decoded, _PROMPT))
    assert cleaning.clean_completion(cont, _PROMPT) == ref.get_clean_completion(cont, _PROMPT)


@pytest.mark.parametrize("cont", _CONTINUATIONS)
def test_humaneval_cleaning_matches_reference(cont):
    ref = load("generate_code_for_humaneval")
    cont = cont.replace("add_all", "add")
    for fn in ("add", None):
        assert cleaning.clean_completion_humaneval(_HE_PROMPT + cont, _HE_PROMPT, fn) == \
            ref.get_clean_completion(_HE_PROMPT + cont, _HE_PROMPT, fn)


_ANSWERS = [
    "RECTIFIED CODE:\n```python\ndef f(x):\n    return x\n```",
    "FEEDBACK: wrong base case\nRECTIFIED CODE:\n```\ndef f(x):\n    return x\n```\nExplanation ...",
    "Here is the fix:\n```python\ndef f(x):\n    return 1\n```\nand a test:\n```python\nassert f(1) == 1\n```",
    "def f(x):\n    return x\nThis returns x.",
    "The code is correct.",
    "```python\ndef f(x):\n  return x",
    "RECTIFIED CODE\ndef f(x):\n\treturn x\n",
    "REFINEMENT:\n    return 2\n",
]


@pytest.mark.parametrize("answer", _ANSWERS)
def test_answer_parsing_truncation_and_header_removal_match_reference(answer):
    ft = load("create_alpaca_finetuning_data_from_chatgpt_refinements")
    ev = load("eval_alpaca")
    student = "\n\ndef f(x):\n    return 0"
    assert cleaning.parse_teacher_output(answer, student) == ft.parse_chatgpt_output(answer, orig_completion=student)
    assert cleaning.truncate_code(answer) == ev.truncate_code(answer)
    _, code = cleaning.parse_teacher_output(answer, student)
    body, sig = cleaning.remove_header(code)
    want_body, want_sig, _ = ft.remove_header_from_code(code, _PROMPT)
    assert (body, sig) == (want_body, want_sig)


# ------------------------------------------------------------------ prompts built from templates


def test_teacher_chat_matches_reference_generate_feedback(tmp_path, monkeypatch):
    ref_dir = require_reference()
    mod = load("generate_code_for_alpaca")
    prompt = _PROMPT
    completion = "\n\nimport math\r\n\ndef add_all(xs):\n    return xs[0]"
    gold = "import math\r\ndef add_all(xs):\r\n    return sum(xs)"
    rv = {"error_type": "AssertionError", "error": {"input": "([1, 2])", "output": "1", "expected": "3"}}
    code_file = tmp_path / "code.jsonl"
    code_file.write_text(json.dumps({"task_id": 7, "prompt": prompt, "completion": completion, "gold": gold}) + "\n")
    sent = []
    monkeypatch.setattr(mod, "load_dataset",
                        lambda name: {"train": {"task_id": [7], "test_list": [[{"input": "add_all([1, 2])"}]]}})
    monkeypatch.setattr(mod, "concatenate_datasets", lambda parts: parts[0])
    monkeypatch.setattr(mod, "eval", lambda completion, tests: (False, rv))
    monkeypatch.setattr(mod, "initialize_openai", lambda args: None)
    monkeypatch.setattr(mod, "sample_code_from_openai_model",
                        lambda args, msgs: sent.append(msgs) or [{"content": "x"}])
    monkeypatch.chdir(ref_dir)
    args = SimpleNamespace(feedback_type="auto", chatgpt_feedback_type="v1", get_openai_gold=False, num_feedbacks=1)
    mod.generate_feedback_for_problems(args, str(code_file))
    error = checker.error_text(rv)
    assert sent == [prompts.teacher_messages(prompt, completion, error, gold)]
    assert sent[0][1] == {"role": "assistant", "content": gold}


def test_refine_prompts_fill_the_template_the_reference_way():
    ref = load("create_alpaca_finetuning_data_from_chatgpt_refinements")
    tmpl = (require_reference() / "prompts" / "ft_error_rectify_instruction.txt").read_text()
    rectified = "def add_all(xs):\n    return sum(xs)\n"
    body, sig, _ = ref.remove_header_from_code(rectified, _PROMPT)
    task = '"""'.join(_PROMPT.split('"""')[:-1]) + '"""'
    want = ref.fill_ft_prompt(tmpl, {"<<TASK>>": task, "<<CODE>>": "ATTEMPT", "<<HEADER>>": sig,
                                     "<<FEEDBACK>>": "", "<<ERROR>>": "ERR"})
    assert prompts.refine_train_prompt(_PROMPT, "ATTEMPT", "ERR", sig) == want
    he = load("generate_code_for_humaneval")
    want_inf = he.fill_prompt_template(tmpl, {"<<TASK>>": "", "<<CODE>>": "CODE",
                                              "<<HEADER>>": _HE_PROMPT.split('"""')[-1] + "\n", "<<ERROR>>": "E"})
    assert prompts.refine_inference_prompt(_HE_PROMPT, "CODE", "E") == want_inf


def test_unittest_prompt_fills_the_reference_template():
    tmpl = (require_reference() / "prompts" / "chatgpt_unittest_instruction.txt").read_text()
    want = tmpl.replace("<<TASK>>", "Sum a list.").replace("<<CODE>>", "def s(x):\n    return sum(x)")
    assert (prompts.unittest_messages("Sum a list.", "def s(x):\n    return sum(x)")
            == [{"role": "user", "content": want}])


# ------------------------------------------------------------------ testing and error text

_TESTS = [{"input": "f(2, 3)", "output": "5"}, {"input": "f(0, 0)", "output": "0"}]
_FAILING = [
    "def f(a, b):\n    return a - b",  # wrong value: AssertionError with INPUT/OUTPUT/EXPECTED
    "def f(a, b):\n    return a / 0",  # an exception inside the function
    "def f(a, b):\n    return undefined_name",  # NameError
    "def f(a, b):\n    print(a + b + 1)",  # returns None: judged by stdout ("6\n" is not "5")
    "def f(a, b):\n    return [a] * 60",  # a long output, cut to 50 words
    "def f(a, b):\n    return 5.0000001 if a else 1",  # approx passes the first test, fails the second
    "def f(a, b):\n    return 'x y'",  # neither side a literal: text compared
    "def f(a, b)\n    return a + b",  # SyntaxError
    "def f(a, b):\n    raise SystemExit(3)",  # the process exits: Exit code
    "def f(a, b):\n    while True:\n        pass",  # timeout
    "def f(a, b):\n    assert a < 0, 'Input: sneaky Output: x Expected: y'\n    return a + b",
    "import json\ndef f(a, b):\n    return json.dumps({'Input:': a})",
    "def g(a, b):\n    return a + b",  # the function is missing
]
_PASSING = ["def f(a, b):\n    return a + b", "def f(a, b):\n    print(a + b)",
            "def f(a, b):\n    return 5.0000001 if a else 0",
            "def f(a, b):\n    return np.int64(a + b)"]


@pytest.fixture(scope="module")
async def sandbox():
    from persd.runtime.sandbox.config import SandboxConfig
    from persd.runtime.sandbox.pool import Sandbox

    async with Sandbox(SandboxConfig(workers=2)) as sb:
        yield sb


async def test_error_text_matches_reference_checker(sandbox):
    ev = load("eval_alpaca")
    run = lambda program, timeout: sandbox.run(program, timeout=timeout)  # noqa: E731
    for code in _FAILING:
        ours = await checker.check_alpaca(run, code, _TESTS)
        passed, rv = ev.eval(code, _TESTS)
        assert not passed and not ours.passed, code
        assert ours.error == ev.get_error_text(rv), code
    for code in _PASSING:
        ours = await checker.check_alpaca(run, code, _TESTS)
        passed, rv = ev.eval(code, _TESTS)
        assert ours.passed and passed == "True" and rv is None, code


def test_return_value_parsing_matches_reference_on_raw_failures(monkeypatch):
    """The part after the run: the same raw text gives the same error text (cases a run rarely makes)."""
    ev = load("eval_alpaca")
    he = load("eval_humaneval")
    raws = ["Traceback (most recent call last):\n  File x\nAssertionError: Input: (1) Output: 2 Expected: 3\n",
            "AssertionError: Input: (1) Output: a: Input: b Output: c Expected: d\n",
            "Exit code: None", "Exit code: -9",
            "Traceback:\nValueError: bad: value\n", "AssertionError\n", "AssertionError: Input: only\n", "x"]
    for raw in raws:
        monkeypatch.setattr(ev, "eval_code_wrapper", lambda src, test, raw=raw: (False, raw))
        _, rv = ev.eval("def f(): pass", [{"input": "f()"}])
        assert checker.alpaca_return_value(raw) == rv, raw
        assert checker.error_text(checker.alpaca_return_value(raw)) == ev.get_error_text(rv), raw
        monkeypatch.setattr(he, "eval_code_wrapper", lambda src, test, ep, raw=raw: (False, raw))
        monkeypatch.setattr(he, "get_entry_point", lambda data, tid: "f")
        monkeypatch.setattr(he, "get_all_tests", lambda *a, **k: "")
        _, rv = he.eval(None, "t", "def f(): pass")
        assert checker.bench_return_value(raw) == rv, raw
        assert checker.error_text(checker.bench_return_value(raw), trim_words=None) == he.get_error_text(rv), raw


async def test_humaneval_and_mbpp_feedback_match_reference_checker(sandbox):
    """Visible-test feedback at refine-inference: persd's program in its sandbox vs the reference's eval."""
    from persd.engine.paper import evaluation as paper

    he_ref, mbpp_ref = load("eval_humaneval"), load("eval_mbpp")
    ref_dir = require_reference()
    he_rows = [json.loads(line) for line in (ref_dir / "data" / "humaneval_formatted.jsonl").read_text().splitlines()]
    mb_rows = [json.loads(line) for line in (ref_dir / "data" / "mbpp_formatted.jsonl").read_text().splitlines()]
    he_data = {k: [r[k] for r in he_rows] for k in ("task_id", "entry_point", "test_seen", "test")}
    mb_data = {"task_id": [r["task_id"] for r in mb_rows], "entrypoint": [r["entrypoint"] for r in mb_rows],
               "test_formatted": [r["test_formatted"] for r in mb_rows]}
    he_tasks = {t.task_id: t for t in iter_tasks("humaneval")}
    cases = [("HumanEval/0", "    return False\n"), ("HumanEval/2", "    return int(number)\n"),
             ("HumanEval/4", "    return 1 / 0\n"), ("HumanEval/7", "    while True:\n        pass\n"),
             ("HumanEval/12", "    return undefined\n"), ("HumanEval/0", "    return True\n")]
    for tid, body in cases:
        task = he_tasks[tid]
        code = paper.cleaned(task, prompts.humaneval_prompt(task.prompt) + body)
        mark = checker.new_marker()
        result = await sandbox.run(paper.feedback_program(task, code, mark), timeout=3)
        passed, rv = he_ref.eval(he_data, tid, code, mode="infer_seen")
        assert (result.status == "passed") == bool(passed), (tid, body)
        assert ("" if passed else paper.error_text(result, mark)) == he_ref.get_error_text(rv), (tid, body)
    if not (DATA / "mbpp.jsonl").is_file():
        pytest.skip("mbpp.jsonl not found (set PERSD_DATA_DIR)")
    mb_tasks = {t.task_id: t for t in iter_tasks(str(DATA / "mbpp.jsonl"))}
    for num, body in [(2, "    return tuple(test_tup1)"), (3, "    return n % 2 == 0"), (4, "    return nums[:n]"),
                      (11, "    return s.replace(ch, '')")]:
        task = mb_tasks[f"MBPP/{num}"]
        code = paper.cleaned(task, prompts.task_prompt(task) + body)
        mark = checker.new_marker()
        result = await sandbox.run(paper.feedback_program(task, code, mark), timeout=3)
        passed, rv = mbpp_ref.eval(mb_data, num, code)
        assert (result.status == "passed") == bool(passed), (num, body)
        assert ("" if passed else paper.error_text(result, mark)) == mbpp_ref.get_error_text(rv), (num, body)


def test_raw_code_alpaca_lines_become_tasks(tmp_path):
    """The Code-Alpaca release as JSONL: ids by position, the output as the reference, the reference's
    prompt once tests name the function; an output without a function is reported, not attempted."""
    ref = load("generate_code_for_alpaca")
    rows = [{"instruction": "Add two numbers.", "input": "",
             "output": "import math\r\ndef add(a, b):\r\n    return a + b"},
            {"instruction": "What is a list?", "input": "", "output": "A sequence."}]
    path = tmp_path / "code_alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = list(iter_tasks(str(path)))
    assert [t.task_id for t in tasks] == ["CodeAlpaca/0", "CodeAlpaca/1"]
    assert tasks[0].entry_point == "add" and tasks[1].entry_point is None
    tests = [{"input": "add(1, 2)", "output": "3"}]
    assert prompts.task_prompt(tasks[0], tests) == ref.format_prompt(rows[0]["instruction"], tests, rows[0]["output"])
    assert prompts.task_prompt(tasks[1]) is None
