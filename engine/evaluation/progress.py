"""Progress of an evaluation: a rich bar on a terminal, periodic plain lines otherwise."""
from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, Callable


def status_line(snap: dict[str, Any]) -> str:
    total, done = snap["samples_total"], snap["samples_done"]
    return (f"[eval] {done}/{total} samples ({100 * done / total if total else 100:.0f}%)"
            f" | {snap['generated']} generated, {snap['executions']} executions"
            f" | direct passed {snap['passed_step0']} | refined {snap['refined']}"
            f" | {snap['samples_per_s']:.1f} samples/s")


class EvalProgress:
    def __init__(self, mode: str, snapshot: Callable[[], dict], every_s: float = 10.0):
        if mode == "auto":
            mode = "live" if sys.stderr.isatty() else "plain"
        self.mode, self.snapshot, self.every_s = mode, snapshot, every_s
        self._task: asyncio.Task | None = None
        self._bar = None

    async def __aenter__(self) -> "EvalProgress":
        if self.mode == "live":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.description}"), console=Console(stderr=True), transient=True)
            self._bar.start()
            self._id = self._bar.add_task("", total=self.snapshot()["samples_total"])
        if self.mode != "none":
            self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(0.25 if self._bar is not None else self.every_s)
            self._show()

    def _show(self) -> None:
        snap = self.snapshot()
        if self._bar is not None:
            self._bar.update(self._id, completed=snap["samples_done"],
                             description=f"{snap['samples_per_s']:.1f} samples/s")
        else:
            print(status_line(snap), file=sys.stderr, flush=True)

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._bar is not None:
            self._bar.stop()
