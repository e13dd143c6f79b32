"""Eval's durable state: a journal of generations and scored steps, so a rerun continues where it stopped.

    DIR/work/eval.json       the settings that alter results (a rerun must keep them, or --force)
    DIR/work/journal.jsonl   {"kind": "gen", ...} as soon as a completion arrives (never generated twice),
                             {"kind": "result", ...} once that step is scored
    DIR/results.jsonl        written whole (atomically) at the end, in task, sample, step order

A line is appended with one write; a line torn by a kill is cut off before the next append.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
from persd.engine.collect.layout import iter_lines
from persd.engine.evaluation.config import EvalConfig
from persd.engine.rundirs.eval import EvalLayout, EvalManifest
from persd.engine.rundirs.files import atomic_write, atomic_write_json
from persd.engine.rundirs.settings import check_settings
from persd.runtime.errors import PersdError

Key = tuple[str, int, int]  # (task_id, sample, step)
__all__ = ["EvalJournal", "Key", "atomic_write"]


class EvalJournal:
    def __init__(self, out: Path):
        self.layout = EvalLayout(Path(out))
        self.out = self.layout.out
        self.work = self.layout.work
        self.path = self.layout.journal
        self.settings_path = self.layout.manifest
        self.results_path = self.layout.results
        self.summary_path = self.layout.summary
        self._fh = None

    # ------------------------------------------------------------ settings

    def check_settings(self, fingerprint: dict[str, Any], force: bool) -> bool:
        """Refuse a rerun whose settings differ (or, with --force, discard the old work). True: resuming."""
        try:
            manifest, why = self.layout.read_manifest(), ""
        except ValueError as exc:
            manifest, why = None, str(exc)
        if manifest is None and not why:
            return False
        diffs = check_settings(self.out, self.settings_path, manifest and manifest.fingerprint, fingerprint,
                               EvalConfig, force=force, what="an evaluation",
                               forced="discard the earlier results and start over", unreadable=why)
        if manifest is not None and not diffs:
            return True
        self.discard()  # --force: samples scored under other settings are not these settings' results
        return False

    def discard(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        for p in (self.results_path, self.summary_path):
            p.unlink(missing_ok=True)

    def save_settings(self, fingerprint: dict[str, Any]) -> None:
        atomic_write_json(self.settings_path, EvalManifest(fingerprint).to_json())

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
        atomic_write_json(self.summary_path, summary, sort_keys=False)
