"""Paper-mode prompt texts: the student's, the teacher's, and the refine layouts, built the reference's way.

Byte-for-byte targets (PersDistill release, code/):
- Code-Alpaca student prompt: generate_code_for_alpaca.py:20-28 (`format_prompt`)
- HumanEval student prompt: generate_code_for_humaneval.py:23-31
- MBPP student prompt: generate_code_for_mbpp.py:24-39 (one `>>> Example:` line by default, :792)
- teacher chat: generate_code_for_alpaca.py:284-336 with prompts/chatgpt_error_instruction.txt
- refine prompt at inference: generate_code_for_humaneval.py:457-469 (TASK left empty)
- refine prompt for training: create_alpaca_finetuning_data_from_chatgpt_refinements.py:269-279
- unit-test inputs: generate_alpaca_data.py:171-181 with prompts/chatgpt_unittest_instruction.txt

Placeholders are replaced one after another in the reference's order, so a placeholder-like text
inside a task behaves as it did there. The prompts keep the data's own line ends (`\\r\\n` in
some reference solutions), as the reference's did.
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

TEACHER_TEMPLATE = "chatgpt_error_instruction.txt"
REFINE_TEMPLATE = "ft_error_rectify_instruction.txt"
UNITTEST_TEMPLATE = "chatgpt_unittest_instruction.txt"
HUMANEVAL_INSTRUCTION = "Write a python function for the following task.\n"


@lru_cache(maxsize=None)
def template(name: str) -> str:
    """A template file as shipped (read in text mode, like the reference's `open(...).read()`)."""
    return resources.files("persd.engine.paper").joinpath("templates", name).read_text(encoding="utf-8")


def fill(text: str, pairs: list[tuple[str, str]]) -> str:
    """Replace each placeholder in turn (the reference's `fill_prompt_template`)."""
    for key, value in pairs:
        text = text.replace(key, value)
    return text


# ------------------------------------------------------------------ student prompts


def header_match(code: str, fn_name: str) -> re.Match | None:
    """The `def fn(...):` line the reference cuts the code prefix at (first match in the code)."""
    return re.search(rf"def [ ]*{fn_name}[ ]*\(.*\)[ ]*:", code)


def alpaca_prompt(text: str, fn_name: str, code: str) -> str | None:
    """The docstring-wrapped task, then the reference solution up to its header. None where the
    header is not found (the reference skips such tasks)."""
    m = header_match(code, fn_name)
    if m is None:
        return None
    return f'"""\n{text}\n"""\n\n{code[: m.end()]}\n'


def mbpp_prompt(text: str, tests: list[str], code: str, num_demos: int = 1) -> str | None:
    """MBPP: the text, `>>> Example:` lines from the first tests (`==` shown as `=`), the code prefix."""
    head = f'"""\n{text}\n\n'
    for test in tests[:num_demos] if num_demos > 0 else []:
        head += f">>> Example: {test.split('assert ')[-1].replace('==', '=')}\n"
    fn_name = tests[0].split("assert ")[-1].split("(")[0]
    m = header_match(code, fn_name)
    if m is None:
        return None
    return f'{head}"""\n\n{code[: m.end()]}\n'


def humaneval_prompt(prompt: str) -> str:
    """HumanEval rewritten into the training layout: docstring text first, then the code before it."""
    text = prompt.replace("'''", '"""')
    task = "\n".join(re.findall('"""(.*?)"""', text, re.DOTALL))
    code_prefix = text.split('"""')[0].strip().strip("\n")
    return f'"""\n{HUMANEVAL_INSTRUCTION}{task}\n"""\n{code_prefix}\n'


def split_prompt(prompt: str) -> tuple[str, str]:
    """(task, header): the part up to the last `\"\"\"` and what follows it."""
    header = prompt.split('"""')[-1]
    task = prompt[: -len(header)] if header else ""  # the reference's prompt[:-len(header)]
    return task, header


# ------------------------------------------------------------------ the teacher


@lru_cache(maxsize=None)
def teacher_turns(name: str = TEACHER_TEMPLATE) -> tuple[str, ...]:
    """The template's turns: lines up to each all-`=` line, each line stripped, joined by newlines."""
    turns, turn = [], []
    for line in template(name).splitlines(keepends=True):
        if line.startswith("=") and len(set(line.strip())) == 1:
            turns.append("\n".join(turn))
            turn = []
        else:
            turn.append(line.strip())
    return tuple(turns)


def teacher_messages(prompt: str, completion: str, error_text: str, gold: str | None) -> list[dict]:
    """The reference's chat: the task with its header, the dataset's gold solution as the assistant's
    answer, then the student's code and its error. `gold=None` (--teacher-context none, persd's
    variant) sends both turns' text as one user message instead."""
    task, header = split_prompt(prompt)
    first, second = teacher_turns()
    pairs = [("<<TASK>>", task), ("<<HEADER>>", header), ("<<CODE>>", completion)]
    turn1 = fill(first, pairs)
    turn2 = fill(second, pairs + [("<<ERROR>>", error_text)])
    if gold is None:
        return [{"role": "user", "content": f"{turn1}\n\n{turn2}"}]
    return [{"role": "user", "content": turn1}, {"role": "assistant", "content": gold},
            {"role": "user", "content": turn2}]


def unittest_messages(instruction: str, code: str) -> list[dict]:
    """Ask for 5 example inputs, one call per line (the reference's unit-test prompt)."""
    body = fill(template(UNITTEST_TEMPLATE), [("<<TASK>>", instruction), ("<<CODE>>", code)])
    return [{"role": "user", "content": body}]


# ------------------------------------------------------------------ refine layouts


def refine_inference_prompt(prompt: str, code: str, error_text: str) -> str:
    """What a model trained on persd-refine sees at inference: TASK empty, the cleaned attempt, its
    error, then the prompt's header."""
    header = prompt.split('"""')[-1] + "\n"
    return fill(template(REFINE_TEMPLATE), [("<<TASK>>", ""), ("<<CODE>>", code), ("<<HEADER>>", header),
                                            ("<<ERROR>>", error_text)])


def refine_train_prompt(prompt: str, attempt: str, error_text: str, func_sig: str, feedback: str = "") -> str:
    """The persd-refine training prompt: the task docstring (twice, as the template has it), the
    student's attempt, its error, and `func_sig` as the header (the release's code passes the refinement's
    signature; its released records hold the refinement's text before its def line: formats.py)."""
    task = '"""'.join(prompt.split('"""')[:-1]) + '"""'
    return fill(template(REFINE_TEMPLATE), [("<<TASK>>", task), ("<<CODE>>", attempt), ("<<HEADER>>", func_sig),
                                            ("<<FEEDBACK>>", feedback), ("<<ERROR>>", error_text)])


# ------------------------------------------------------------------ persd tasks


def raw(task, name: str, default: str = "") -> str:
    """A task field as the data gave it (`\\r\\n` kept); persd's Task holds normalised copies."""
    return (task.extra.get("raw") or {}).get(name, default)


def task_prompt(task, generated: list[dict] | None = None) -> str | None:
    """The student prompt for a persd Task, the reference's way for its shape (None: no header found,
    a task the reference skips). `generated`: tests made for a task that had none."""
    if task.shape == "humaneval":
        return humaneval_prompt(task.prompt)
    if task.shape == "mbpp":
        return mbpp_prompt(raw(task, "text", task.instruction), list(task.tests),
                           raw(task, "code", task.reference or ""))
    tests = task.extra.get("io_tests") or []
    # the reference takes the name from the first test's call; without tests, the function the
    # header ends with (Code-Alpaca headers may define helpers first), else the entry point
    defs = re.findall(r"def [ ]*(\w+)[ ]*\(", raw(task, "header"))
    fn_name = tests[0]["input"].split("(")[0] if tests else defs[-1] if defs else \
        generated[0]["input"].split("(")[0] if generated else task.entry_point or ""
    code = raw(task, "reference") or raw(task, "header") or task.reference or task.header
    if not fn_name or not code:
        return None
    return alpaca_prompt(raw(task, "instruction", task.instruction), fn_name, code)


def gold(task) -> str:
    """The dataset's solution as given: the teacher's first answer, and the inpd/stand completion."""
    if task.shape == "mbpp":
        return raw(task, "code", task.reference or "")
    return raw(task, "reference", task.reference or "")
