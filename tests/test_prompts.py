"""Student prompts per task shape, stop sequences, and the request the engine sends."""
from __future__ import annotations

import orjson
from persd.engine import prompts
from persd.engine.extract import extract_program
from persd.engine.tasks import parse_task_line
from persd.runtime.student import SamplingParams, StudentRequest


def task_of(obj: dict):
    return parse_task_line(orjson.dumps(obj), "t.jsonl", 1)


HE = task_of({"task_id": "HumanEval/0",
              "prompt": "def inc(x: int) -> int:\n    \"\"\" Add one.\n    >>> inc(1)\n    2\n    \"\"\"\n",
              "canonical_solution": "    return x + 1\n", "test": "def check(c):\n    assert c(1) == 2\n",
              "entry_point": "inc"})
MBPP = task_of({"task_id": 2, "text": "Write a function to find the shared elements of two lists.",
                "code": "def similar_elements(a, b):\n  return tuple(set(a) & set(b))",
                "test_list": ["assert similar_elements((3, 4),(4, 5)) == (4,)",
                              "assert similar_elements((1,),(2,)) == ()"],
                "test_setup_code": "", "challenge_test_list": []})
GENERIC = task_of({"task_id": "g/1", "instruction": "Sort a list in ascending order.", "header": "def sort_list(xs):\n",
                   "entry_point": "sort_list", "tests": ["assert sort_list([2, 1]) == [1, 2]"]})
FREEFORM = task_of({"task_id": "g/2", "instruction": "Write a function double(x).", "tests": ["assert double(2) == 4"],
                    "entry_point": "double"})


def test_base_prompts_per_shape():
    assert prompts.student_prompt(HE) == HE.prompt  # HumanEval: as is
    mb = prompts.student_prompt(MBPP)  # description, one example test, then the header
    assert (mb.index("shared elements") < mb.index("assert similar_elements((3, 4)")
            < mb.index("def similar_elements(a, b):"))
    assert "(1,),(2,)" not in mb and mb.endswith("def similar_elements(a, b):\n")
    gen = prompts.student_prompt(GENERIC)
    assert gen.index("Sort a list") < gen.index("def sort_list(xs):") and gen.endswith("def sort_list(xs):\n")


def test_stop_sequences():
    assert set(prompts.STOP_SEQUENCES) == {"\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert"}
    for task in (HE, MBPP, GENERIC):
        assert prompts.stop_sequences(task) == prompts.STOP_SEQUENCES
    # No header: the model writes the def itself, so a def must not stop it.
    assert "\ndef " not in prompts.stop_sequences(FREEFORM) and "\nassert" in prompts.stop_sequences(FREEFORM)


def test_stops_end_a_realistic_completion_where_the_function_ends():
    completion = "  return tuple(set(a) & set(b))\n\n\ndef main():\n    pass\n"
    cut = min(i for i in (completion.find(s) for s in prompts.STOP_SEQUENCES) if i >= 0)
    program = extract_program(MBPP, completion[:cut], chat=False)
    assert "def main" not in program and program.rstrip().endswith("return tuple(set(a) & set(b))")


def test_chat_messages_carry_task_header_and_visible_test():
    (system, user) = prompts.student_messages(MBPP)
    assert system["role"] == "system" and user["role"] == "user"
    content = user["content"]
    assert "shared elements" in content and "def similar_elements(a, b):" in content
    assert "assert similar_elements((3, 4),(4, 5)) == (4,)" in content and "(1,),(2,)" not in content
    assert "```python" in content
    he_user = prompts.student_messages(HE)[1]["content"]
    assert HE.prompt.rstrip() in he_user and he_user.count("def inc(") == 1


def test_student_request_for_base_and_chat_models():
    params = SamplingParams(n=2, temperature=0.3, top_p=0.95, max_tokens=128, stop=["\n\n\n"], seed=4)
    base = prompts.student_request(MBPP, params, chat=False)
    assert isinstance(base, StudentRequest) and base.prompt == MBPP.prompt and base.messages is None
    assert base.params.stop == ("\n\n\n",) + prompts.STOP_SEQUENCES
    assert (base.params.n, base.params.temperature, base.params.seed) == (2, 0.3, 4)
    chat = prompts.student_request(MBPP, params, chat=True)
    assert chat.prompt is None and chat.messages == prompts.student_messages(MBPP) and chat.params == params
