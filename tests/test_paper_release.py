"""Paper mode's records against the PersDistill release's own training files (models/CCG_ALP/, byte for byte,
in ../shared/reference/persdistill beside the checkout: tests/paper_reference.py).

The released files are the reference's output on its own data: the tasks read from the released gold
file must give every released prompt, and paper mode's record layouts must give every released line:
- finetuning_data_chatgpt_gold.jsonl (InpD, 3,248): task prompt -> gold after its first `:`;
- finetuning_data_chatgpt_newgold_rectification_only_.jsonl (PERsD, 3,248): the same prompt -> refinement;
- finetuning_data_gold_rectification_nochatgpt.jsonl (refine prompt -> gold, 3,244): the layout the release's
  data has, not the one its code writes (docs/fidelity.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from persd.engine.collect.records import Meta
from persd.engine.paper import cleaning, formats, prompts
from persd.engine.tasks import iter_tasks

from tests.paper_reference import load, require_reference

META = Meta("student", "teacher")
REFINE_HEAD = "Rectify the below code for the given task based on the errors obtained in the unit tests. \n\nTASK: \n"


def _release(name: str) -> tuple[Path, list[dict]]:
    path = require_reference() / "models" / "CCG_ALP" / name
    if not path.is_file():
        pytest.skip(f"{path} is missing (the reference folder holds the release's models/CCG_ALP files)")
    return path, [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def released():
    gold_path, gold = _release("finetuning_data_chatgpt_gold.jsonl")
    _, newgold = _release("finetuning_data_chatgpt_newgold_rectification_only_.jsonl")
    _, refine = _release("finetuning_data_gold_rectification_nochatgpt.jsonl")
    tasks = {t.task_id: t for t in iter_tasks(str(gold_path))}
    return tasks, gold, newgold, refine


def _task(tasks, row):
    return tasks[f"CodeAlpaca/{row['task_id']}"]


def test_tasks_from_the_released_gold_give_every_released_prompt(released):
    tasks, gold, _, _ = released
    assert len(tasks) == len(gold) == 3248
    for row in gold:
        assert prompts.task_prompt(_task(tasks, row)) == row["finetuning_prompt"], row["task_id"]
    assert sum("\r\n" in prompts.gold(t) for t in tasks.values()) > 1000  # the release's bytes, not normalised


def test_function_name_choice_against_the_reference(released, shared_data):
    """persd picks the function a Code-Alpaca prompt ends at without the release's (unpublished) tests; the
    reference's own format_prompt, given that name and the release's gold, must write the released prompt."""
    ref = load("generate_code_for_alpaca")
    tasks, gold, _, _ = released
    ours = {t.task_id: t for t in iter_tasks(str(shared_data / "code-alpaca-3k.jsonl"))}
    for row in gold:
        task = ours[f"CodeAlpaca/{row['task_id']}"]
        fn = prompts.task_prompt(task).rstrip("\n").split("\n")[-1].split("def ")[1].split("(")[0].strip()
        released_task = _task(tasks, row)
        want = ref.format_prompt(released_task.instruction, [{"input": f"{fn}(1)"}], prompts.gold(released_task))
        assert want == row["finetuning_prompt"], row["task_id"]


def test_inpd_and_stand_records_equal_the_released_gold_file(released):
    tasks, gold, _, _ = released
    for row in gold:
        task = _task(tasks, row)
        recs = formats.gold_records(task, ("inpd", "stand"), prompts.task_prompt(task), True, META, "x", "e")
        assert [(r["format"], r["prompt"], r["completion"]) for r in recs] == \
            [(f, row["finetuning_prompt"], row["finetuning_completion"]) for f in ("inpd", "stand")], row["task_id"]


def test_persd_records_equal_the_released_newgold_file(released):
    """The refinement's text is the teacher's (not released); any code whose first `:` ends its header
    stands for it. What is checked: the prompt (the gold file's, create_refinement_as_new_gold_data.py:60)
    and the cut."""
    tasks, gold, newgold, _ = released
    assert sorted(r["task_id"] for r in newgold) == sorted(r["task_id"] for r in gold)
    for row in newgold:
        task = _task(tasks, row)
        rectified = "def refined(x):" + row["finetuning_completion"]
        (rec,) = formats.refinement_records(task, ("persd",), prompts.task_prompt(task), rectified, rectified, "a",
                                            "e", META, 1)
        assert (rec["prompt"], rec["completion"]) == (row["finetuning_prompt"], row["finetuning_completion"])


def _parse_refine_prompt(prompt: str) -> tuple[str, str, str, str]:
    """(task, attempt, error, header) of a released refine prompt (ft_error_rectify_instruction.txt)."""
    assert prompt.startswith(REFINE_HEAD)
    rest = prompt[len(REFINE_HEAD):]
    task = rest[: rest.index('"""', 4) + 3]
    second = prompt.rindex("\n\n" + task + "\n")
    header = prompt[second + len(task) + 3: -1]
    body = prompt[len(REFINE_HEAD) + len(task) + 1: second]
    cut = body.rindex("\n\nERROR: \n")
    return task, body[:cut], body[cut + len("\n\nERROR: \n"):], header


def test_refine_gold_records_equal_the_released_refine_file(released):
    """Attempt, error and the refinement's text before its def line are read back from each released
    prompt; paper mode's refine-gold record must then give the line, gold body included (the gold after
    its first def line: 3,243 of 3,244 lines; task 5919 is not in the released gold file)."""
    tasks, _, _, refine = released
    compared = []
    for row in refine:
        tid = f"CodeAlpaca/{row['task_id']}"
        if tid not in tasks:
            continue
        task = tasks[tid]
        _, attempt, error, header = _parse_refine_prompt(row["finetuning_prompt"])
        rectified = header + "def refined(x):\n    return x\n"
        recs = formats.refinement_records(task, ("refine-gold",), prompts.task_prompt(task), rectified, rectified,
                                          attempt, error, META, 1)
        assert [(r["prompt"], r["completion"]) for r in recs] == \
            [(row["finetuning_prompt"], row["finetuning_completion"])], row["task_id"]
        compared.append(row["task_id"])
    assert len(refine) == 3244 and len(compared) == 3243
    assert {r["task_id"] for r in refine} - {int(t.split("/")[1]) for t in tasks} == {5919}


def test_the_releases_code_would_write_other_refine_records(released):
    """Where the release's code and its data disagree: create_alpaca...:269-279 puts the refinement's
    signature in the header and cuts the gold at its first `:`; the released lines do neither."""
    ref = load("create_alpaca_finetuning_data_from_chatgpt_refinements")
    tmpl = (require_reference() / "prompts" / "ft_error_rectify_instruction.txt").read_text()
    tasks, _, _, refine = released
    differ = 0
    for row in refine[:200]:
        task = tasks.get(f"CodeAlpaca/{row['task_id']}")
        if task is None:
            continue
        prompt = prompts.task_prompt(task)
        text, attempt, error, header = _parse_refine_prompt(row["finetuning_prompt"])
        gold_body, _, _ = ref.remove_header_from_code(prompts.gold(task), prompt)
        _, sig, _ = ref.remove_header_from_code(header + "def refined(x):\n    return x\n", prompt)
        by_code = ref.fill_ft_prompt(tmpl, {"<<TASK>>": text, "<<CODE>>": attempt, "<<HEADER>>": sig,
                                            "<<FEEDBACK>>": "", "<<ERROR>>": error})
        differ += by_code != row["finetuning_prompt"] and gold_body != row["finetuning_completion"]
    assert differ == 200  # every compared line, prompt and completion both


def test_split_at_def_line():
    assert cleaning.split_at_def_line("import re\r\n# a: b\ndef f(x):  \r\n  return x") == ("import re\r\n# a: b\n",
                                                                                            "  return x")
    assert cleaning.split_at_def_line("x = 1") == ("", "x = 1")


def test_share_of_released_feedback_in_python_37_wording(released):
    """The release's feedback was written by Python 3.7.13 (environment.yml): error messages that later
    Pythons word differently, counted in the 3,244 released refine prompts (docs/fidelity.md quotes it)."""
    import re

    _, _, _, refine = released
    only_37 = [r"EOF while scanning", r"EOL while scanning", r"unexpected EOF while parsing", r"can't assign to",
               r"expected an indented block(?! after)", r"Did you mean print\((?!\.\.\.\))"]
    errors = [_parse_refine_prompt(r["finetuning_prompt"])[2] for r in refine]
    hits = [e for e in errors if any(re.search(p, e) for p in only_37)]
    assert (len(hits), len(errors)) == (262, 3244)  # 8.1 %
    assert sum("EOF while scanning triple-quoted string literal" in e for e in errors) == 147


def test_a_release_line_becomes_a_task_and_a_bad_one_is_named(tmp_path):
    from persd.runtime.errors import UsageError

    row = {"finetuning_prompt": '"""\nAdd.\n"""\n\nimport math\r\ndef add(a, b):\n',
           "finetuning_completion": "\r\n    return a + b", "task_id": 12}
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (task,) = iter_tasks(str(path))
    assert (task.task_id, task.entry_point, prompts.gold(task)) == \
        ("CodeAlpaca/12", "add", "import math\r\ndef add(a, b):\r\n    return a + b")
    assert prompts.task_prompt(task) == row["finetuning_prompt"]
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "finetuning_prompt": "Rectify ..."}) + "\n")
    with pytest.raises(UsageError, match=r"gold.jsonl:2: field 'finetuning_prompt'"):
        list(iter_tasks(str(path)))
