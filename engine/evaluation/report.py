"""The evaluation's summary (DIR/summary.json) and its table on screen."""
from __future__ import annotations

from collections import Counter
from typing import Any

from persd.engine.evaluation.passk import pass_at_k
from persd.engine.rundirs.kinds import hint
from persd.engine.timelimits import config_from
from persd.runtime.sandbox import STATUSES


def summarize(cfg, tasks, lines: list[dict], stats: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
    """Per step: pass@k over tasks, samples passed, samples refined at that step."""
    n_by_task = {t.task_id: cfg.n for t in tasks}
    steps = []
    for step in range(cfg.refine_steps + 1):
        at = [ln for ln in lines if ln["step"] == step]
        correct = Counter(ln["task_id"] for ln in at if ln["status"] == "passed")
        entry: dict[str, Any] = {"step": step}
        entry.update(pass_at_k(n_by_task, correct, cfg.k))
        entry["samples_passed"] = sum(correct.values())
        entry["tasks_solved"] = len(correct)
        entry["refined"] = sum(1 for ln in at if ln.get("origin") == "refined")
        entry["statuses"] = {s: sum(1 for ln in at if ln["status"] == s) for s in STATUSES}
        entry["timeouts_by_limit"] = dict(Counter(ln.get("limit") or "wall" for ln in at if ln["status"] == "timeout"))
        steps.append(entry)
    first = steps[0]
    summary: dict[str, Any] = {"tasks": len(tasks), "n": cfg.n}
    summary.update({k: v for k, v in first.items() if k.startswith("pass@")})
    summary["k_left_out"] = [k for k in cfg.k if f"pass@{k}" not in first]
    summary["steps"] = steps
    if cfg.refine_steps:
        summary["tasks_without_visible_tests"] = sum(1 for t in tasks if not t.visible_tests.strip())
        summary["final"] = {k: v for k, v in steps[-1].items() if k.startswith("pass@")}
    summary["samples"] = len(tasks) * cfg.n
    # samples whose request failed for its own content (persd.engine.failures), by cause, and repaired answers
    summary["failures"] = dict(sorted(Counter(
        (ln.get("failure") or ln.get("refine_failure") or {}).get("cause") for ln in lines
        if ln["step"] == cfg.refine_steps and (ln.get("failure") or ln.get("refine_failure"))).items()))
    summary["repaired_samples"] = sum(1 for ln in lines if ln["step"] == cfg.refine_steps and ln.get("repaired"))
    summary["protocol"] = {
        "name": cfg.protocol, "tasks": cfg.tasks, "task_ids": cfg.task_ids, "limit": cfg.limit, "n": cfg.n,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k, "max_tokens": cfg.max_tokens,
        "k": list(cfg.k),
        "seed": cfg.seed, "refine_steps": cfg.refine_steps, "refine_feedback": "visible tests",
        "refine_prompt": "persd-refine record layout (engine/lessons.refine_record_prompt)",
        "student_model": cfg.student.model, "student_backend": cfg.student.resolved_backend(),
        "student_chat": cfg.student.chat, "exec_timeout": cfg.sandbox.timeout_s, "style": cfg.style,
        **config_from(cfg).fingerprint(),
    }
    if cfg.style == "paper":
        from persd.engine.paper import evaluation as paper

        shapes = {t.shape for t in tasks}
        summary["protocol"].update(
            refine_prompt="the reference's ft_error_rectify_instruction.txt, TASK empty (engine/paper/prompts.py)",
            refine_feedback="; ".join(sorted({paper.feedback_tests_label(t) for t in tasks})) if tasks else "",
            scoring="the reference's programs: " + ", ".join(sorted(
                {"humaneval": "HumanEval test", "mbpp": "MBPP test_formatted"}.get(s, s) for s in shapes)))
    summary["run"] = stats
    if extra:
        summary.update(extra)
    return summary


def print_summary(summary: dict, out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    ks = [k for k in summary["steps"][0] if k.startswith("pass@")]
    title = f"persd eval: {summary['tasks']} tasks x {summary['n']} samples"
    if summary["protocol"].get("name"):
        title += f" ({summary['protocol']['name']})"
    table = Table(title=title)
    table.add_column("step", justify="right")
    for k in ks:
        table.add_column(k, justify="right")
    table.add_column("samples passed", justify="right")
    table.add_column("tasks solved", justify="right")
    table.add_column("refined", justify="right")
    for entry in summary["steps"]:
        label = "0 (direct)" if entry["step"] == 0 else f"{entry['step']} (refine)"
        table.add_row(label, *(f"{100 * entry[k]:.2f}%" for k in ks), str(entry["samples_passed"]),
                      str(entry["tasks_solved"]), str(entry["refined"]))
    console = Console()
    console.print(table)
    run = summary.get("run", {})
    if run:
        console.print(f"{run.get('generated', 0)} completions generated, {run.get('executions', 0)} executions, "
                      f"{run.get('wall_s', 0):.1f}s ({run.get('samples_per_s', 0):.2f} samples/s)"
                      + (f" after {run['startup_s']:.1f}s loading the student" if run.get("startup_s", 0) >= 1 else "")
                      + (f"; {run['resumed']} samples resumed" if run.get("resumed") else ""))
    if summary.get("failures"):
        console.print("failed samples by cause: " + ", ".join(f"{c} {n}" for c, n in summary["failures"].items())
                      + " (each recorded in results.jsonl with the provider's message)")
    breaker = summary.get("failure_breaker")
    if breaker:
        console.print(f"failure breaker: stops after {breaker['threshold']} failed requests in a row"
                      if breaker.get("threshold") else "failure breaker: off")
    if summary.get("k_left_out"):
        console.print(f"pass@k left out for k > n: {', '.join(map(str, summary['k_left_out']))}")
    console.print(f"results: {out}/results.jsonl  summary: {out}/summary.json")
    print(hint(out))
