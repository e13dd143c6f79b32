"""Completion / chat answer -> program, on realistic model outputs. Programs are run for real."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson
import pytest
from persd.engine.extract import extract_program, fenced_blocks
from persd.engine.tasks import parse_task_line

HUMANEVAL = {
    "task_id": "HumanEval/x",
    "prompt": textwrap.dedent('''\
        from typing import List


        def _norm(x: int) -> int:
            return abs(x)


        def sum_abs(numbers: List[int]) -> int:
            """ Sum of absolute values.
            >>> sum_abs([-1, 2])
            3
            """
        '''),
    "canonical_solution": "    return sum(_norm(n) for n in numbers)\n",
    "test": "def check(candidate):\n    assert candidate([-1, 2]) == 3\n    assert candidate([]) == 0\n",
    "entry_point": "sum_abs",
}
MBPP = {
    "task_id": 7,
    "text": "Write a function to find all words of at least four characters in a string.",
    "code": "import re\r\ndef find_char_long(text):\r\n  return (re.findall(r\"\\b\\w{4,}\\b\", text))",
    "test_list": [
        "assert find_char_long('Please move back to stream') == ['Please', 'move', 'back', 'stream']",
        "assert find_char_long('Jing Eco and Tech') == ['Jing', 'Tech']",
    ],
    "test_setup_code": "",
    "challenge_test_list": [],
}


def task_of(obj: dict):
    return parse_task_line(orjson.dumps(obj), "t.jsonl", 1)


def passes(task, program: str) -> bool:
    proc = subprocess.run([sys.executable, "-c", task.program(program)], capture_output=True, timeout=30)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def he():
    return task_of(HUMANEVAL)


@pytest.fixture(scope="module")
def mbpp():
    return task_of(MBPP)


def test_body_completion_is_appended_to_the_prompt(he):
    program = extract_program(he, "    return sum(_norm(n) for n in numbers)\n", chat=False)
    assert program == he.prompt + "    return sum(_norm(n) for n in numbers)\n"
    assert passes(he, program)


def test_completion_that_re_emits_the_header_keeps_one_header_and_the_helpers(he):
    completion = "def sum_abs(numbers: List[int]) -> int:\n    return sum(_norm(n) for n in numbers)\n"
    program = extract_program(he, completion, chat=False)
    assert program.count("def sum_abs(") == 1
    assert "from typing import List" in program and "def _norm(" in program
    assert passes(he, program)


def test_tab_indented_body_fits_a_space_indented_prompt(he):
    program = extract_program(he, "\ttotal = 0\n\tfor n in numbers:\n\t\ttotal += _norm(n)\n\treturn total\n",
                              chat=False)
    assert "\t" not in program.split('"""')[-1]
    assert passes(he, program)


def test_body_that_lost_its_indentation_is_indented(mbpp):
    program = extract_program(mbpp, "return re.findall(r'\\b\\w{4,}\\b', text)\n", chat=False)
    assert passes(mbpp, program)


def test_fenced_block_with_chatter_keeps_the_headers_imports(mbpp):
    answer = (
        "Sure! Here is a solution using a regular expression:\n\n"
        "```python\n"
        "def find_char_long(text):\n"
        "    return re.findall(r'\\b\\w{4,}\\b', text)\n"
        "```\n\n"
        "It finds every word of four or more characters. Example:\n"
        "```python\nprint(find_char_long('abcd ef'))\n```\n"
    )
    program = extract_program(mbpp, answer, chat=True)
    assert program.startswith("import re\n")
    assert "Sure!" not in program and "print(" not in program and '"""' not in program
    assert passes(mbpp, program)


def test_whole_program_answer_with_imports_demo_code_and_tabs(mbpp):
    answer = (
        "```python\nimport re\n\ndef find_char_long(text):\n\twords = re.findall(r'\\b\\w{4,}\\b', text)\n"
        "\treturn words\n\nassert find_char_long('a bbbb') == ['wrong']\n\n"
        "if __name__ == \"__main__\":\n    print(find_char_long(input()))\n```"
    )
    program = extract_program(mbpp, answer, chat=True)
    assert program.count("import re") == 1
    assert "__main__" not in program and "wrong" not in program
    assert passes(mbpp, program)


def test_teacher_answer_restating_the_whole_humaneval_prompt(he):
    answer = f"Corrected:\n```python\n{he.prompt}    return sum(abs(n) for n in numbers)\n```"
    program = extract_program(he, answer, chat=True)
    assert program.count("def sum_abs(") == 1 and program.count("def _norm(") == 1
    assert program.count("from typing import List") == 1
    assert passes(he, program)


def test_chat_answer_with_only_the_body(he):
    program = extract_program(he, "```python\n    return sum(map(abs, numbers))\n```", chat=True)
    assert program.startswith(he.prompt)
    assert passes(he, program)


def test_last_block_defining_the_function_wins(mbpp):
    answer = (
        "Your code:\n```python\ndef find_char_long(text):\n    return text.split()\n```\n"
        "fails. The fix:\n```py\nimport re\ndef find_char_long(text):\n"
        "    return re.findall(r'\\b\\w{4,}\\b', text)\n```"
    )
    assert passes(mbpp, extract_program(mbpp, answer, chat=True))


def test_unterminated_fence_and_bare_code(mbpp):
    cut_off = "```python\nimport re\ndef find_char_long(text):\n    return re.findall(r'\\b\\w{4,}\\b', text)\n"
    assert passes(mbpp, extract_program(mbpp, cut_off, chat=True))
    bare = "import re\ndef find_char_long(text):\n    return re.findall(r'\\b\\w{4,}\\b', text)\n"
    assert passes(mbpp, extract_program(mbpp, bare, chat=True))


def test_garbage_stays_a_failing_program(mbpp):
    program = extract_program(mbpp, "I am sorry, I cannot help with that.", chat=True)
    assert not passes(mbpp, program)
    assert extract_program(mbpp, "", chat=False) == mbpp.prompt


def test_generic_task_without_header_takes_the_answer_as_the_program():
    task = task_of({"task_id": "g1", "instruction": "Print hello.", "tests": []})
    assert extract_program(task, "```python\nx = 'hello'\n```", chat=True) == "x = 'hello'\n"


def test_fenced_blocks_languages():
    text = "```bash\npip install x\n```\n```Python\nx = 1\n```\n```\ny = 2\n```"
    assert fenced_blocks(text) == [("bash", "pip install x"), ("python", "x = 1"), ("", "y = 2")]


def test_crlf_answers():
    task = task_of(MBPP)
    answer = ("```python\r\nimport re\r\ndef find_char_long(text):\r\n"
              "    return re.findall(r'\\b\\w{4,}\\b', text)\r\n```")
    assert passes(task, extract_program(task, answer, chat=True))


RUN_ALL = """
import sys, orjson
failed = []
for tid, program in orjson.loads(sys.stdin.buffer.read()):
    try:
        exec(compile(program, tid, "exec"), {"__name__": "__persd__"})
    except BaseException:
        failed.append(tid)
print(orjson.dumps(failed).decode())
"""


def failing(items: list[tuple[str, str]]) -> set[str]:
    """Run many trusted programs in one child process (fresh globals each); the ids that fail."""
    proc = subprocess.run([sys.executable, "-c", RUN_ALL], input=orjson.dumps(items), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return set(orjson.loads(proc.stdout.splitlines()[-1]))


def test_every_humaneval_reference_survives_extraction_both_ways():
    from persd.engine.tasks import iter_tasks

    items = []
    for t in iter_tasks("humaneval"):
        body = t.reference[len(t.prompt):]
        items.append((f"{t.task_id}/completion", t.program(extract_program(t, body, chat=False))))
        answer = f"Here you go:\n```python\n{t.reference}```\nHope it helps."
        items.append((f"{t.task_id}/chat", t.program(extract_program(t, answer, chat=True))))
    assert len(items) == 328 and failing(items) == set()


def test_mbpp_references_pass_as_often_after_extraction():
    from helpers import MBPP_FIXTURE
    from persd.engine.tasks import iter_tasks

    tasks = list(iter_tasks(str(MBPP_FIXTURE)))
    direct = failing([(t.task_id, t.program(t.reference)) for t in tasks])
    extracted = failing([(t.task_id, t.program(extract_program(t, f"```python\n{t.reference}\n```", chat=True)))
                         for t in tasks])
    assert extracted == direct and len(direct) <= 3
