"""The dataset card (README.md) `persd export` writes beside the data: YAML metadata the hub reads
(licence, tags, where each split's files are), then what a reader needs to trust and reuse the data."""
from __future__ import annotations

import orjson
from persd import __version__


def _yaml_str(value: str) -> str:
    return orjson.dumps(str(value)).decode()  # a JSON string is a valid YAML scalar


def card(stats, fmt: str, style: str, split: str, fields: dict[str, str]) -> str:
    teachers = sorted({str(r.get("teacher")) for r in stats.runs if r.get("teacher")})
    students = sorted({str(r.get("student")) for r in stats.runs if r.get("student")})
    head = ["---", f"license: {fields.get('license') or 'other'}", "task_categories:", "- text-generation",
            "tags:", "- code", "- distillation", "- persd", "- synthetic",
            f"pretty_name: {_yaml_str(fields.get('name') or 'persd records')}"]
    if fmt in ("parquet", "jsonl"):
        pattern = f"data/{split}-*.parquet" if fmt == "parquet" else f"data/{split}.jsonl"
        head += ["configs:", "- config_name: default", "  data_files:", f"  - split: {split}",
                 f"    path: {pattern}"]
    head.append("---")
    body = [f"# {fields.get('name') or 'persd records'}", "",
            f"Training records made with persd {__version__} (personalised distillation for code models): a "
            "student model tried each task, a sandbox ran the task's tests, and a teacher model's refinement "
            "was kept only where it passed them. Exported with `persd export` from "
            f"{len(stats.runs)} collect run(s).", ""]
    body += ["## Contents", "", f"{stats.records} records, split `{split}`, style `{style}`, format `{fmt}`.", "",
             "| record format | records |", "| --- | --- |"]
    body += [f"| {k} | {v} |" for k, v in sorted(stats.per_format.items())]
    body += ["", f"Tasks: {stats.tasks}, by outcome:", "", "| outcome | tasks |", "| --- | --- |"]
    body += [f"| {k} | {v} |" for k, v in sorted(stats.outcomes.items())]
    body += ["", "## Models and licences", "",
             f"- teacher model: {', '.join(teachers) or 'unknown'}",
             f"- teacher's terms of use: {fields.get('teacher_terms') or 'unknown'}",
             f"- student model: {', '.join(students) or 'unknown'}",
             f"- task set licence: {fields.get('tasks_license') or 'unknown'}",
             f"- this data set's licence: {fields.get('license') or 'other'}", "",
             "The records hold text the teacher model wrote: check its terms before training or releasing "
             "a model on them.", "", "## Runs", ""]
    for run in stats.runs:
        body += [f"- `{run.get('dir')}`: tasks `{run.get('tasks')}` (sha256 {str(run.get('tasks_sha256'))[:16]}), "
                 f"state {run.get('state')}",
                 f"  settings: `{orjson.dumps(run.get('settings') or {}, option=orjson.OPT_SORT_KEYS).decode()}`"]
    cols = "`id`, `task_id`, `format`, " + ("`messages` (user, assistant)" if style == "messages"
                                             else "`prompt`, `completion`") + ", `meta` (JSON text)"
    load = {"parquet": 'load_dataset("parquet", data_files="data/*.parquet")  # or load_dataset(REPO) on the hub',
            "jsonl": 'load_dataset("json", data_files="data/*.jsonl")',
            "hf": "load_from_disk(THIS_FOLDER)"}[fmt]
    body += ["", "## Columns", "", cols + ". `format` is `persd` (task prompt -> verified refinement), "
             "`persd-refine` (task, failed attempt and its feedback -> refinement), `inpd` or `stand` (the "
             "teacher's direct solution). `meta.solution` is the exact program that passed the tests.", "",
             "## Loading", "", "```python", "from datasets import load_dataset, load_from_disk",
             f"ds = {load}", "```", "", f"persd version: {__version__}", ""]
    return "\n".join(head + [""] + body)
