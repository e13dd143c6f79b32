"""`persd eval --protocol paper-*` against a scripted student and the real sandbox: the reference's prompt
(no stop strings, 1,024 tokens), its scoring of the kept text, its visible-test feedback and its
refine-inference prompt and rules."""
from __future__ import annotations

import orjson
from helpers import read_jsonl
from persd.engine.evaluation.config import parse_args
from persd.engine.evaluation.runner import evaluate
from persd.engine.paper import evaluation as paper
from persd.engine.paper import prompts
from persd.engine.tasks import iter_tasks
from persd.runtime.decoding import clean_up_tokenization as tidy
from persd.runtime.local_server import FakeOpenAIServer

WRONG = "    return not numbers\n<|endoftext|>def garbage("


async def test_paper_humaneval_prompts_scores_and_refines_the_reference_way(tmp_path):
    task = next(iter_tasks("humaneval"))  # HumanEval/0, has_close_elements
    body = task.reference[len(task.prompt):]
    ids = tmp_path / "ids.json"
    ids.write_text('["HumanEval/0"]')

    def reply(payload: dict, index: int) -> str:
        if payload["prompt"].startswith("Rectify the below code"):
            return body
        return body + "\n\nprint('trailing code is kept and run, as the reference ran it')\n" if index == 0 else WRONG

    async with FakeOpenAIServer(reply=reply) as server:
        cfg = parse_args(["--protocol", "paper-humaneval", "--task-ids", str(ids), "--out", str(tmp_path / "out"),
                          "--student-backend", "openai", "--student-url", server.url, "--student-model", "scripted",
                          "--n", "2", "--refine-steps", "1", "--sandbox-workers", "2", "--progress", "none"])
        assert cfg.style == "paper" and cfg.max_tokens == 1024 and cfg.exec_timeout == 3.0
        summary = await evaluate(cfg)
        direct, refine = server.requests[0], server.requests[1]
    prompt = prompts.humaneval_prompt(task.prompt)
    assert direct["prompt"] == prompt and not direct.get("stop") and direct["max_tokens"] == 1024
    assert direct["top_k"] == 50  # Hugging Face generate's default, sent to the (vLLM-style) server
    lines = {(ln["sample"], ln["step"]): ln for ln in read_jsonl(tmp_path / "out" / "results.jsonl")}
    # the kept text is decoded as transformers 4.29.2 decoded it: the clean-up also rewrites the prompt part
    assert "idx!= idx2" in lines[(0, 0)]["code"] and "idx != idx2" in body
    assert lines[(0, 0)]["status"] == "passed" and lines[(0, 0)]["code"].startswith(tidy(prompt))
    wrong = lines[(1, 0)]
    assert wrong["status"] == "failed" and wrong["code"] == tidy(prompt + "    return not numbers\n")  # cut at EOS
    assert wrong["visible_feedback"] == ("AssertionError\nINPUT: ([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)\n"
                                         "OUTPUT: False\nEXPECTED: True")
    assert refine["prompt"] == prompts.refine_inference_prompt(prompt, wrong["visible_code"], wrong["visible_feedback"])
    assert wrong["visible_code"] == paper.cleaned(task, wrong["code"])
    fixed = lines[(1, 1)]
    assert fixed["origin"] == "refined" and fixed["status"] == "passed"
    assert fixed["code"] == prompt.split('"""')[-1] + "\n\n" + tidy(body)  # header + "\n" + the answer
    assert lines[(0, 1)]["origin"] == "carried"
    assert summary["pass@1"] == 0.5 and summary["steps"][1]["pass@1"] == 1.0
    saved = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert saved["protocol"]["style"] == "paper" and "test_seen" in saved["protocol"]["refine_feedback"]


def test_paper_and_persd_protocols():
    base = ["--out", "x", "--student-model", "m"]
    for name in ("humaneval", "humaneval-passk", "mbpp"):
        paper_cfg = parse_args(["--protocol", f"paper-{name}", *base])
        persd_cfg = parse_args(["--protocol", f"persd-{name}", *base])
        assert ((paper_cfg.style, paper_cfg.max_tokens, persd_cfg.style, persd_cfg.max_tokens)
                == ("paper", 1024, "persd", 512))
        assert (paper_cfg.n, paper_cfg.temperature) == (persd_cfg.n, persd_cfg.temperature)
        assert (paper_cfg.top_k, persd_cfg.top_k, paper_cfg.clean_up_spaces, persd_cfg.clean_up_spaces) == \
            (50, None, "auto", "off")
    # pass@k: the release's pipeline reports k = 1, 5, 10, 20 (tests/test_paper_schedule.py reads its script)
    assert parse_args(["--protocol", "paper-humaneval-passk", *base]).k == (1, 5, 10, 20)


def test_every_humaneval_and_mbpp_task_has_the_reference_tests():
    assert all(paper.supported(t) for t in iter_tasks("humaneval"))
    assert len(paper.humaneval_seen()) == 164 and len(paper.mbpp_formatted()) == 974


async def test_paper_style_refuses_tasks_without_reference_tests(tmp_path):
    import pytest
    from helpers import write_doubling_tasks
    from persd.runtime.errors import UsageError

    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 1)
    cfg = parse_args(["--tasks", str(tasks), "--style", "paper", "--out", str(tmp_path / "out"),
                      "--student-model", "m"])
    with pytest.raises(UsageError, match="double/0"):
        await evaluate(cfg)


async def test_decode_clean_up_on_the_canonical_humaneval_solutions():
    """transformers 4.29.2's decode clean-up (paper-* protocols) changes 26 of the 164 canonical solutions'
    kept texts; 4 of them then fail (`' '.join` -> `''.join`): docs/fidelity.md."""
    from persd.engine.paper import checker
    from persd.runtime.sandbox.config import SandboxConfig
    from persd.runtime.sandbox.pool import Sandbox

    tasks = list(iter_tasks("humaneval"))
    changed = [t for t in tasks if paper.direct_completion(t, t.reference[len(t.prompt):], True)
               != paper.direct_completion(t, t.reference[len(t.prompt):], False)]
    assert len(tasks) == 164 and len(changed) == 26
    failing = {False: set(), True: set()}
    async with Sandbox(SandboxConfig(workers=2)) as sb:
        for task in changed:
            for cleanup in (False, True):
                mark = checker.new_marker()
                text = paper.direct_completion(task, task.reference[len(task.prompt):], cleanup)
                if (await sb.run(paper.score_program(task, text, mark), timeout=3)).status != "passed":
                    failing[cleanup].add(task.task_id)
    assert failing[True] - failing[False] == {"HumanEval/15", "HumanEval/19", "HumanEval/86", "HumanEval/91"}
