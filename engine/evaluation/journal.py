"""Eval's durable state: a journal of generations and scored steps, so a rerun continues where it stopped.

    DIR/work/eval.json       the settings that alter results (a rerun must keep them, or --force)
    DIR/work/journal.jsonl   {"kind": "gen", ...} as soon as a completion arrives (never generated twice),
                             {"kind": "result", ...} once that step is scored
    DIR/results.jsonl        written whole (atomically) at the end, in task, sample, step order

A line is appended with one write; a line torn by a kill is cut off before the next append.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import orjson
from persd.config import with_defaults
from persd.engine.collect.config import describe_difference
from persd.engine.collect.layout import iter_lines
from persd.engine.evaluation.config import EvalConfig
from persd.runtime.errors import PersdError, UsageError

Key = tuple[str, int, int]  # (task_id, sample, step)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class EvalJournal:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.work = self.out / "work"
        self.path = self.work / "journal.jsonl"
        self.settings_path = self.work / "eval.json"
        self.results_path = self.out / "results.jsonl"
        self.summary_path = self.out / "summary.json"
        self._fh = None

    # ------------------------------------------------------------ settings

    def check_settings(self, fingerprint: dict[str, Any], force: bool) -> bool:
        """Refuse a rerun whose settings differ (or, with --force, discard the old work). True: resuming."""
        if not self.settings_path.exists():
            return False
        try:
            old = orjson.loads(self.settings_path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            if not force:
                raise UsageError(f"{self.settings_path}: unreadable ({exc}), so the settings of the results in "
                                 f"{self.out} are unknown: pass --force to discard them and start over, or use "
                                 f"another --out") from None
            old = {}
        diffs = describe_difference(with_defaults(old, EvalConfig), fingerprint)
        if not diffs:
            return True
        if not force:
            raise UsageError(f"{self.out} holds an evaluation with other settings:\n  " + "\n  ".join(diffs)
                             + "\nuse another --out, or pass --force to discard it and start over")
        self.discard()
        return False

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        for p in (self.results_path, self.summary_path):
            p.unlink(missing_ok=True)

    def save_settings(self, fingerprint: dict[str, Any]) -> None:
        atomic_write(self.settings_path, orjson.dumps(fingerprint, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    # ------------------------------------------------------------ journal

    def load(self) -> tuple[dict[Key, dict], dict[Key, dict]]:
        """(generations, scored result lines) journaled so far."""
        gens: dict[Key, dict] = {}
        results: dict[Key, dict] = {}
        if not self.path.exists():
            return gens, results
        for obj in iter_lines(self.path):
            key = (str(obj.get("task_id")), int(obj.get("sample", -1)), int(obj.get("step", -1)))
            kind = obj.pop("kind", None)
            if kind == "gen":
                gens[key] = obj
            elif kind == "result":
                results[key] = obj
        return gens, results

    def open(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # cut a torn last line (a kill mid-write) so the next line starts clean
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.path, "r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
        self._fh = open(self.path, "ab", buffering=0)

    def append(self, kind: str, obj: dict) -> None:
        if self._fh is None:
            raise PersdError("the eval journal is not open")
        try:
            self._fh.write(orjson.dumps({"kind": kind, **obj}) + b"\n")
        except OSError as exc:
            raise PersdError(f"cannot write {self.path}: {exc}; rerun the same command to resume") from None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # ------------------------------------------------------------ outputs

    def write_results(self, lines: list[dict]) -> None:
        atomic_write(self.results_path, b"".join(orjson.dumps(line) + b"\n" for line in lines))

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.summary_path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
