"""Paper-mode training records, as the reference's data scripts write them.

The reference (create_alpaca_finetuning_data_from_chatgpt_refinements.py, create_refinement_as_new_gold_data.py,
create_chatgpt_only_refinement_data.py and the "PersD-variants" block of
chatgpt_ilf_pipeline_auto_feedback_alpaca.sh:158-165) builds, for each failed task:

- `persd`        task prompt -> verified refinement without its header (newgold_rectification_only:
                 create_refinement_as_new_gold_data.py:56-66, the gold file's prompt, :60)
- `persd-refine` ft_error_rectify prompt (task, the student's cleaned attempt, its error, and as HEADER the
                 refinement's text before its `def` line, as the released records have it: the release's
                 code puts the signature there) -> the same body as `persd` (create_alpaca...:269-300)
- `refine-gold`  the same prompt -> the dataset's gold after its first `def` line (the released
                 finetuning_data_gold_rectification_nochatgpt.jsonl, for the tasks with a verified refinement)
- `inpd`         task prompt -> the dataset's gold without its header, for exactly the tasks with a
                 verified refinement (create_chatgpt_only_refinement_data.py:57-60, file
                 finetuning_data_chatgpt_gold.jsonl)
- `stand`        task prompt -> gold, for every task whose attempt failed and reached the teacher,
                 verified or not (GOLD_TRAINING_FILE: create_alpaca...:138-179, StanD at pipeline :169-197)
- PersD-combined (finetuning_data_chatgpt_only.jsonl) is `persd-refine` plus `inpd` of the same tasks
  (create_chatgpt_only_refinement_data.py:55-60): train with `--formats persd-refine,inpd`; it is not
  written twice.

Completions are cut at the code's first `:` (`remove_header`), so they start right after the
header the prompt ends with, as the reference's did; meta.solution is what ran in the sandbox.
"""
from __future__ import annotations

from persd.engine.collect.records import Meta
from persd.engine.paper import cleaning, prompts
from persd.engine.tasks import Task

PAPER_FORMATS = ("persd", "persd-refine", "refine-gold", "inpd", "stand")
COMBINED = ("persd-refine", "inpd")  # the reference's PersD-combined training file


def _record(task: Task, fmt: str, prompt: str, completion: str, solution: str, meta: Meta, attempt: str,
            error: str, **extra) -> dict:
    m = {"student_model": meta.student_model, "teacher_model": meta.teacher_model, "round": meta.round,
         "attempt": attempt, "feedback": error, "solution": solution, "protocol": "paper"}
    m.update(extra)
    return {"id": f"{task.task_id}/{fmt}", "task_id": task.task_id, "format": fmt, "prompt": prompt,
            "completion": completion, "meta": m}


def refinement_records(task: Task, formats: tuple[str, ...], prompt: str, rectified: str, ran: str, attempt: str,
                       error: str, meta: Meta, turn: int) -> list[dict]:
    """`persd` / `persd-refine` for a verified refinement (`rectified`: the parsed answer; `ran`: what passed)."""
    body, _ = cleaning.remove_header(rectified)
    refine = prompts.refine_train_prompt(prompt, attempt, error, cleaning.split_at_def_line(rectified)[0])
    out = []
    if "persd" in formats:
        out.append(_record(task, "persd", prompt, body, ran, meta, attempt, error, turn=turn))
    if "persd-refine" in formats:
        out.append(_record(task, "persd-refine", refine, body, ran, meta, attempt, error, turn=turn))
    gold = prompts.gold(task)
    if "refine-gold" in formats and gold:
        out.append(_record(task, "refine-gold", refine, cleaning.split_at_def_line(gold)[1], gold, meta, attempt,
                           error, turn=turn, verified=False))
    return out


def gold_records(task: Task, formats: tuple[str, ...], prompt: str, refined: bool, meta: Meta, attempt: str,
                 error: str) -> list[dict]:
    """`inpd` (tasks with a verified refinement) and `stand` (every failed task): the dataset's gold.
    The reference does not run the gold; neither does paper mode (meta.verified says so)."""
    gold = prompts.gold(task)
    if not gold:
        return []
    body, _ = cleaning.remove_header(gold)
    out = []
    if "inpd" in formats and refined:
        out.append(_record(task, "inpd", prompt, body, gold, meta, attempt, error, verified=False))
    if "stand" in formats:
        out.append(_record(task, "stand", prompt, body, gold, meta, attempt, error, verified=False))
    return out
