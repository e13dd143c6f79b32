"""What `persd collect --preset paper` really sends its teacher, against the reference's own
`generate_feedback_for_problems` on the same attempts (tests/paper_reference.py).

The real CLI in a subprocess, the real sandbox, a scripted student (the openai backend against a local
server) and a logging teacher (runtime/local_server.py). Tasks are in the release's gold-file
layout (`\\r\\n` kept) and their tests come through `--tests-from` in the release's unit-test layout. On the
reference's side each student text is decoded as transformers 4.29.2 decoded it (clean-up on, transformers'
own function), cleaned by the reference's `get_clean_completion`, tested by its own `eval` and turned into
chat messages by its own `generate_feedback_for_problems`: every message must be the one persd sent.
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from persd.runtime.local_server import FakeOpenAIServer, LocalOpenAIServer

from tests.paper_reference import load, require_reference

pytestmark = [pytest.mark.slow]  # one collect run in a subprocess
REPO = Path(__file__).resolve().parents[1]

# (task id, instruction, gold as the release stores it, tests, the student's continuation)
TASKS = [
    (101, "Join the words of a list with spaces.", "def join_words(words):\r\n    return ' '.join(words)\r\n",
     [{"input": "join_words(['a', 'b'])", "output": "a b"}],
     "    return ' '.join(words)\n"),  # right, until the decode clean-up makes it ''.join
    (102, "Return the sum of a list.", "import math\r\ndef add_all(xs):\r\n    return sum(xs)",
     [{"input": "add_all([1, 2])", "output": "3"}, {"input": "add_all([])", "output": "0"}],
     "    return xs[0]\n\nprint(add_all([1]))\n"),
    (103, "Return the square of a number.", "def square(n): \r\n  return n * n",
     [{"input": "square(3)", "output": "9"}], "    return undefined_name\n"),
    (104, "Print the double of a number.", "def show_double(x):\n    print(2 * x)",
     [{"input": "show_double(2)", "output": "4\n"}], "    print(x + 1)\n"),
    (105, "Return the first element.", "def first(xs):\r\n    return xs[0]",
     [{"input": "first([5, 6])", "output": "5"}], "    return (xs[0]\n"),
]


def _release_row(tid: int, text: str, gold: str) -> dict:
    """The release's gold-file line for a task (format_prompt + remove_header_from_code)."""
    def_at = gold.index("def ")
    prefix = gold[: gold.index(":", def_at) + 1]
    sig = gold[: gold.index(":") + 1]
    return {"finetuning_prompt": f'"""\n{text}\n"""\n\n{prefix}\n', "finetuning_completion": gold[len(sig):],
            "task_id": tid}


def _reference_messages(tmp_path: Path, monkeypatch, prompts: dict[int, str]) -> dict[int, list[dict]]:
    """The messages the reference's collection sends for the scripted attempts."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    mod = load("generate_code_for_alpaca")
    tidy = PreTrainedTokenizerBase.clean_up_tokenization
    lines = []
    for tid, _, gold, _, cont in TASKS:
        prompt = prompts[tid]
        decoded = tidy(None, prompt + cont) if "self" in tidy.__code__.co_varnames else tidy(prompt + cont)
        clean = mod.get_clean_completion(decoded, prompt)  # generate_code_for_alpaca.py:454-457
        completion = clean if len(clean.strip()) > 0 else decoded
        lines.append({"task_id": tid, "prompt": prompt, "completion": completion, "gold": gold})
    code_file = tmp_path / "reference-attempts.jsonl"
    code_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sent: dict[int, list[dict]] = {}
    current = {}

    def capture(args, msgs):
        sent[current["tid"]] = msgs
        return [{"content": "x"}]

    real_eval = mod.eval

    def eval_and_note(completion, tests):
        current["tid"] = next(line["task_id"] for line in lines if line["completion"] == completion)
        return real_eval(completion=completion, tests=tests)

    data = {"task_id": [t[0] for t in TASKS], "test_list": [t[3] for t in TASKS]}
    monkeypatch.setattr(mod, "load_dataset", lambda name: {"train": data})
    monkeypatch.setattr(mod, "concatenate_datasets", lambda parts: parts[0])
    monkeypatch.setattr(mod, "eval", eval_and_note)
    monkeypatch.setattr(mod, "initialize_openai", lambda args: None)
    monkeypatch.setattr(mod, "sample_code_from_openai_model", capture)
    monkeypatch.chdir(require_reference())
    args = SimpleNamespace(feedback_type="auto", chatgpt_feedback_type="v1", get_openai_gold=False, num_feedbacks=1)
    mod.generate_feedback_for_problems(args, str(code_file))
    return sent


async def test_collect_sends_the_teacher_what_the_reference_sends(tmp_path, monkeypatch):
    require_reference()
    rows = [_release_row(tid, text, gold) for tid, text, gold, _, _ in TASKS]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tests = tmp_path / "code-alpaca_unittests_mbpp.json"  # the release's dataset layout
    tests.write_text("".join(json.dumps({"task_id": t[0], "text": t[1], "code": t[2], "test_list": t[3]}) + "\n"
                             for t in TASKS))
    by_text = {text: cont for _, text, _, _, cont in TASKS}
    gold_of = {text: gold for _, text, gold, _, _ in TASKS}

    def student(payload: dict, index: int) -> str:
        return next(cont for text, cont in by_text.items() if text in payload["prompt"])

    def teacher(body: dict) -> str:  # the gold, so every refinement verifies
        task_text = next(text for text in gold_of if text in body["messages"][0]["content"])
        return "FEEDBACK: fixed\nRECTIFIED CODE:\n```python\n" + gold_of[task_text] + "\n```"

    async with FakeOpenAIServer(reply=student) as stu, LocalOpenAIServer(teacher) as tea:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "persd", "collect", "--preset", "paper", "--tasks", str(tasks),
            "--tests-from", str(tests), "--out", str(tmp_path / "out"), "--student-backend", "openai",
            "--student-url", stu.url, "--student-model", "scripted", "--teacher-url", tea.base_url,
            "--teacher-model", "logged", "--sandbox-workers", "2", "--progress", "none", cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 600)
        assert proc.returncode == 0, err.decode()[-3000:]
        received = [b for b in tea.received if "messages" in b]
        students = list(stu.requests)
    assert len(students) == len(TASKS) and all(s["top_k"] == 50 for s in students)
    prompts = {tid: next(s["prompt"] for s in students if text in s["prompt"]) for tid, text, *_ in TASKS}
    assert {tid: p for tid, p in prompts.items()} == {r["task_id"]: r["finetuning_prompt"] for r in rows}
    want = _reference_messages(tmp_path, monkeypatch, prompts)
    assert len(want) == len(TASKS) == len(received)  # every attempt failed, each under the reference too
    ours = {next(tid for tid, text, *_ in TASKS if text in b["messages"][0]["content"]): b["messages"]
            for b in received}
    for tid in want:
        assert ours[tid] == want[tid], tid
    assert "return''.join(words)" in ours[101][2]["content"]  # the clean-up, as the reference decoded it
