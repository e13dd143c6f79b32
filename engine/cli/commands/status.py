"""`persd status DIR [DIR...] [--json]`: progress of one or many collect partitions.

Reads every manifest in each DIR (`manifest.json`, or `manifest.part-*.json` when machines
share DIR) and checks the disk for what the manifests may not have caught up with yet:
sealed shard files and finished tasks in the shards' journals.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
from persd.config import Command, load, opt
from persd.engine.collect.layout import CollectLayout
from persd.engine.collect.manifest import find_manifests, read_manifest
from persd.engine.runlock import is_locked
from persd.runtime.errors import ConfigError, PersdError, UsageError
from persd.runtime.teacher.batch import read_batches
from rich.console import Console
from rich.table import Table


@dataclass
class StatusConfig:
    dirs: list[str] = opt(default_factory=list, help="collect output directories (--out)", changes_results=False,
                          positional=True, nargs="+", metavar="DIR", shown="required")
    json: bool = opt(False, help="print JSON instead of a table", changes_results=False)

    def validate(self) -> None:
        if not self.dirs:
            raise ConfigError("dirs", "give one or more collect output directories (persd status DIR)")


STATUS = Command(StatusConfig, "status", description="Summarise the progress of one or many `persd collect` "
                                                     "directories.")


def _journal_done(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for raw in fh if raw.startswith(b'{"e":"d"') and raw.endswith(b"\n"))
    except OSError:
        return 0


def partition_status(out: Path, manifest_file: Path) -> dict:
    m = read_manifest(manifest_file)
    lay = CollectLayout(out)
    shards = m.shards
    done = sealed = 0
    damaged: list[str] = []
    for s in shards:
        k = s["index"]
        if lay.is_sealed(k):
            problem = lay.seal_problem(k)
            if problem:
                damaged.append(problem)
                continue
            sealed += 1
            done += s["tasks"]
        else:
            done += min(s["tasks"], _journal_done(lay.journal_path(k)))
    totals, part, teacher, state = m.totals, m.partition, m.teacher, m.state
    batches = [_batch_row(b) for b in read_batches(lay.teacher_batches_path(m.partition_suffix))]
    if state in ("starting", "running"):
        if not is_locked(out, lay.lock_name(m.partition_suffix)):  # says running, but no process holds DIR
            state = "stopped"
    if damaged:
        state = "damaged"
    return {
        "dir": str(out),
        "manifest": manifest_file.name,
        "partition": f"{part.get('index', 0)}/{part.get('count', 1)}",
        "state": state,
        "damaged": damaged,
        "tasks": totals.get("tasks", sum(s["tasks"] for s in shards)),
        "done": done,
        "shards": len(shards),
        "shards_sealed": sealed,
        "outcomes": totals.get("outcomes", {}),
        "failures": totals.get("failures", {}),  # failed tasks by cause (persd.engine.failures)
        "failure_breaker": (m.failure_breaker or {}).get("threshold"),
        "records": totals.get("records", {}),
        "teacher": teacher.get("model"),
        "offline_stand_in": bool(teacher.get("offline_stand_in")),
        "updated_at": m.updated_at,
        "error": m.error,
        "batches": batches,  # --teacher.mode batch: each batch's last status as the run saw it
    }


def _batch_row(b) -> dict:
    return {"id": b.batch_id, "requests": b.requests, "status": b.status, "counts": b.counts, "ended": b.ended,
            "age_s": round(time.time() - b.created_at, 1) if b.created_at else None}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def main(argv: list[str]) -> int:
    args = load(STATUS, argv)
    rows = []
    for d in args.dirs:
        out = Path(d)
        if not out.is_dir():
            raise UsageError(f"{d}: no such directory")
        files = find_manifests(out)
        if not files:
            raise UsageError(f"{d}: no manifest (is it a `persd collect --out` directory?)")
        for f in files:
            try:
                rows.append(partition_status(out, f))
            except PersdError as exc:
                rows.append({"dir": str(out), "manifest": f.name, "state": "unreadable", "error": str(exc),
                             "tasks": 0, "done": 0, "shards": 0, "shards_sealed": 0, "outcomes": {}, "records": {},
                             "failures": {}})
    total = {
        "tasks": sum(r["tasks"] for r in rows),
        "done": sum(r["done"] for r in rows),
        "shards": sum(r["shards"] for r in rows),
        "shards_sealed": sum(r["shards_sealed"] for r in rows),
        "outcomes": dict(sum((Counter(r["outcomes"]) for r in rows), Counter())),
        "failures": dict(sum((Counter(r.get("failures") or {}) for r in rows), Counter())),
        "records": dict(sum((Counter(r["records"]) for r in rows), Counter())),
        "complete": all(r["shards_sealed"] == r["shards"] and r["shards"] for r in rows),
    }
    # damage or an unreadable manifest is a failure a script must see: exit 1, after the report
    rc = 1 if any(r["state"] in ("unreadable", "damaged") for r in rows) else 0
    if args.json:
        print(orjson.dumps({"partitions": rows, "total": total}, option=orjson.OPT_INDENT_2).decode())
        return rc
    table = Table(title="persd collect status")
    for col in ("dir", "partition", "state", "tasks done", "shards sealed", "outcomes", "failed (cause)", "records",
                "teacher", "updated"):
        table.add_column(col)
    for r in rows:
        teacher = str(r.get("teacher") or "-") + (" (offline stand-in)" if r.get("offline_stand_in") else "")
        if r.get("batches"):
            teacher += f", {sum(not b['ended'] for b in r['batches'])} of {len(r['batches'])} batches open"
        table.add_row(r["dir"], r.get("partition", "?"), r["state"], f"{r['done']}/{r['tasks']}",
                      f"{r['shards_sealed']}/{r['shards']}", _fmt(r["outcomes"]), _fmt(r.get("failures") or {}),
                      _fmt(r["records"]), teacher,
                      str(r.get("updated_at") or ""))
    if len(rows) > 1:
        table.add_row("total", "", "complete" if total["complete"] else "in progress",
                      f"{total['done']}/{total['tasks']}", f"{total['shards_sealed']}/{total['shards']}",
                      _fmt(total["outcomes"]), _fmt(total["failures"]), _fmt(total["records"]), "", "")
    console = Console(width=max(Console().width, 140))
    console.print(table)
    _print_batches(console, rows)
    for r in rows:
        if r.get("error"):
            console.print(f"{r['dir']} ({r['manifest']}): {r['error']}", markup=False)
        if r["state"] == "stopped":
            console.print(f"{r['dir']} ({r['manifest']}): stopped before it finished (no process holds it); rerun "
                          f"the same `persd collect` command to resume", markup=False)
        for problem in r.get("damaged", ()):
            console.print(f"damaged: {problem}; rerun the same `persd collect` command to rebuild it from its "
                          f"journal", markup=False)
    return rc


def _print_batches(console: Console, rows: list[dict]) -> None:
    """The teacher's batches (--teacher.mode batch), as each run last saw them: id, status, counts, age."""
    listed = [(r, b) for r in rows for b in r.get("batches") or ()]
    if not listed:
        return
    table = Table(title="teacher batches (as the run last saw them)")
    for col in ("dir", "batch", "requests", "status", "completed", "failed", "age"):
        table.add_column(col)
    for r, b in listed:
        c = b["counts"]
        table.add_row(r["dir"], b["id"], str(b["requests"]), b["status"] + ("" if b["ended"] else " (open)"),
                      str(c.get("completed", "-")), str(c.get("failed", "-")), _age(b["age_s"]))
    console.print(table)


def _fmt(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"
