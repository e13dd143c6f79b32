"""`persd eval --protocol paper-*`: HumanEval and MBPP the reference's way.

- prompts: generate_code_for_humaneval.py:23-31 and generate_code_for_mbpp.py:24-39 (prompts.py);
  no stop strings, 1,024 new tokens (:676-680), top_p 0.95;
- a sample's text is kept as the reference keeps it (prompt + continuation, cut at the end token), and
  scored as the reference scores it: HumanEval with a typing import before it (eval_humaneval.py:113),
  the dataset's `test` and `check(entry_point)`; MBPP after `truncate_code` with the formatted tests
  (`test_formatted`, the test_list asserts with pytest's approx and INPUT/OUTPUT/EXPECTED messages,
  eval_mbpp.py:130-140, :275-283); each in a fresh namespace, 3 s;
- refine-inference (generate_code_for_humaneval.py:443-492, generate_code_for_mbpp.py:451-495): the
  sample cleaned (`get_clean_completion`), run on the visible tests (HumanEval: `test_seen` of the
  reference's formatted data; MBPP: the same formatted tests that score it, as the reference does:
  the summary says so), a failure's error text in ft_error_rectify_instruction.txt with an empty TASK;
  the answer becomes `header + "\\n" + answer` unless it is "none" or under 3 lines (then the sample is
  carried); a sample whose visible tests pass is carried unchanged.

The shipped data (data/, Apache 2.0 from the PersDistill release) holds the visible HumanEval tests
and MBPP's formatted tests; NOTICE in templates/.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import orjson
from persd.engine.paper import checker, cleaning, prompts
from persd.engine.tasks import Task
from persd.runtime.decoding import clean_up_tokenization

STANDARD_IMPORT = "from typing import List, Tuple, Any, Dict, Iterator, Callable"
MAX_TOKENS = 1024
MBPP_FEEDBACK = "the scored tests (the reference's refine-inference on MBPP sees the tests it is scored on)"
HUMANEVAL_FEEDBACK = "test_seen (the reference's visible HumanEval tests, docstring examples)"

# exec the program in a fresh namespace, as eval_code does; on failure print the traceback between markers
_WRAP = '''\
import traceback as _p_tb, sys as _p_sys
_p_src = {src!r}
try:
    exec(_p_src, {{}})
except Exception:
    _p_sys.stdout.write({mark!r} + "\\n" + _p_tb.format_exc() + "\\n" + {mark!r} + "\\n")
    _p_sys.stdout.flush()
    raise RuntimeError("paper-mode test failed (its error text is on stdout)")
'''


def _data(name: str) -> list[dict]:
    text = resources.files("persd.engine.paper").joinpath("data", name).read_bytes()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=None)
def humaneval_seen() -> dict[str, str]:
    return {r["task_id"]: r["test_seen"] for r in _data("humaneval_test_seen.jsonl")}


@lru_cache(maxsize=None)
def mbpp_formatted() -> dict[str, tuple[str, str]]:
    return {f"MBPP/{r['task_id']}": (r["entrypoint"], r["test_formatted"]) for r in _data("mbpp_test_formatted.jsonl")}


def supported(task: Task) -> bool:
    return (task.shape == "humaneval" and task.task_id in humaneval_seen()) or \
        (task.shape == "mbpp" and task.task_id in mbpp_formatted())


def feedback_tests_label(task: Task) -> str:
    return HUMANEVAL_FEEDBACK if task.shape == "humaneval" else MBPP_FEEDBACK


# ------------------------------------------------------------------ requests


def direct_request(task: Task, params, request_id: str):
    from dataclasses import replace

    from persd.runtime.student import StudentRequest

    return StudentRequest(prompt=prompts.task_prompt(task), params=replace(params, stop=()), request_id=request_id)


def refine_request(task: Task, params, code: str, error: str, request_id: str):
    from dataclasses import replace

    from persd.runtime.student import StudentRequest

    text = prompts.refine_inference_prompt(prompts.task_prompt(task), code, error)
    return StudentRequest(prompt=text, params=replace(params, stop=()), request_id=request_id)


# ------------------------------------------------------------------ what a sample is


def direct_completion(task: Task, text: str, cleanup: bool = False) -> str:
    """The sample as the reference keeps it: the decoded prompt and continuation, up to the end token;
    `cleanup`: decoded with clean_up_tokenization_spaces, which rewrites the prompt part too."""
    full = prompts.task_prompt(task) + cleaning.strip_eos(text)
    return clean_up_tokenization(full) if cleanup else full


def refined_completion(task: Task, text: str, previous: str, cleanup: bool = False, code: str | None = None,
                       error: str | None = None) -> str | None:
    """`header + "\\n" + answer`, or None (keep the previous sample) for a "none" or under-3-line answer.
    `cleanup` (with the refine prompt's `code` and `error`): the reference decoded refine prompt and answer
    together, cleaned up, and cut the answer at the uncleaned prompt's length (generate_code_for_humaneval.py:478)."""
    header = prompts.task_prompt(task).split('"""')[-1] + "\n"
    answer = cleaning.strip_eos(text)
    if cleanup and code is not None and error is not None:
        refine_prompt = prompts.refine_inference_prompt(prompts.task_prompt(task), code, error)
        answer = clean_up_tokenization(refine_prompt + answer)[len(refine_prompt):]
    refinement = header + "\n" + answer
    if refinement.lower().strip() == "none" or len(refinement.split("\n")) < 3:
        return None
    return refinement


def cleaned(task: Task, completion: str) -> str:
    """What the reference runs on the visible tests and shows in the refine prompt."""
    prompt = prompts.task_prompt(task)
    if task.shape == "humaneval":
        return cleaning.clean_completion_humaneval(completion, prompt, task.entry_point)
    return cleaning.clean_completion(completion, prompt)


# ------------------------------------------------------------------ programs


def _program(task: Task, code: str, tests: str) -> str:
    if task.shape == "humaneval":
        return f"{STANDARD_IMPORT}\n{code}\n{tests}\ncheck({task.entry_point})\n"
    entry, _ = mbpp_formatted()[task.task_id]
    return f"{cleaning.truncate_code(code)}\n{tests}\ncheck({entry})\n"


def scored_tests(task: Task) -> str:
    if task.shape == "humaneval":
        return task.test_program.rsplit(f"check({task.entry_point})", 1)[0].rstrip() + "\n"
    return mbpp_formatted()[task.task_id][1]


def visible_tests(task: Task) -> str:
    if task.shape == "humaneval":
        return humaneval_seen()[task.task_id]
    return mbpp_formatted()[task.task_id][1]


def wrapped(program: str, marker: str) -> str:
    return _WRAP.format(src=program, mark=marker)


def score_program(task: Task, completion: str, marker: str) -> str:
    return wrapped(_program(task, completion, scored_tests(task)), marker)


def feedback_program(task: Task, code: str, marker: str) -> str:
    return wrapped(_program(task, code, visible_tests(task)), marker)


def error_text(result, marker: str) -> str:
    """The reference's text for a failed HumanEval/MBPP run (`get_error_text` of eval_humaneval.py)."""
    return checker.error_text(checker.bench_return_value(checker.failure_text(result, marker)), trim_words=None)
