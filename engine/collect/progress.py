"""Progress: a rich live panel on a terminal, periodic plain log lines otherwise, and the final table."""
from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, Callable

from persd.engine.rundirs.kinds import hint
from rich.console import Console
from rich.live import Live
from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _dur(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _num(x: Any) -> str:
    if x is None:
        return "-"
    x = float(x)
    if x >= 1e6:
        return f"{x / 1e6:.1f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}" if x == int(x) else f"{x:.1f}"


def _teacher_bits(snap: dict) -> tuple[str, str, str]:
    t = snap.get("teacher") or {}
    rpm = f"{_num(t.get('rpm_now'))}/{_num(t.get('rpm_limit'))} rpm"
    tpm = f"{_num(t.get('tpm_now'))}/{_num(t.get('tpm_limit'))} tpm"
    cost = t.get("cost_usd")
    cap = t.get("max_cost_usd")
    dollars = f"${cost or 0:.4f}" + (f" of ${cap:.2f}" if cap else "")
    return rpm, tpm, dollars


def status_line(snap: dict) -> str:
    rpm, tpm, dollars = _teacher_bits(snap)
    oc = snap.get("outcomes", {})
    total = snap.get("tasks_total") or 0
    done = snap.get("tasks_done", 0)
    sandbox = snap.get("sandbox") or {}
    t = snap.get("teacher") or {}
    return (
        f"[collect] {done}/{total} tasks ({100 * done / total if total else 100:.0f}%)"
        f" | student pass {_pct(snap.get('student_pass_rate'))}"
        f" | refined {oc.get('refined', 0)} unresolved {oc.get('unresolved', 0)} error {oc.get('error', 0)}"
        f" | teacher {t.get('requests', 0)} req{_teacher_queue(snap)}, {rpm}, {tpm}, {dollars}"
        f" | sandbox {sandbox.get('per_s', 0):.1f}/s"
        f" | shards {snap.get('shards_sealed', 0)}/{snap.get('shards_total', 0)}"
        f" | ETA {_dur(snap.get('eta_s'))}"
        + _replica_summary(snap)
    )


def _replica_summary(snap: dict) -> str:
    """--ray: per pool, replicas up of all, and each replica's done count and restarts."""
    parts = []
    for kind, rows in (snap.get("replicas") or {}).items():
        up = sum(r["state"] == "up" for r in rows)
        each = " ".join(f"{r['done']}" + (f"(r{r['restarts']})" if r["restarts"] else "") for r in rows)
        parts.append(f"{kind} replicas {up}/{len(rows)} up, done {each}")
    return "".join(f" | {p}" for p in parts)


def live_table(snap: dict, title: str) -> Table:
    rpm, tpm, dollars = _teacher_bits(snap)
    oc = snap.get("outcomes", {})
    total = snap.get("tasks_total") or 0
    done = snap.get("tasks_done", 0)
    bar_w = 30
    filled = int(bar_w * done / total) if total else bar_w
    table = Table(title=title, show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold cyan")
    table.add_column()
    table.add_row("tasks", f"[green]{'█' * filled}[/]{'░' * (bar_w - filled)} {done}/{total}  "
                           f"ETA {_dur(snap.get('eta_s'))}")
    table.add_row("student", f"pass rate {_pct(snap.get('student_pass_rate'))}  ({oc.get('student_passed', 0)} passed)"
                  + _slots(snap.get("student")))
    table.add_row("refinements", f"{oc.get('refined', 0)} verified, {oc.get('unresolved', 0)} unresolved, "
                  f"{oc.get('error', 0)} errors  (verified {_pct(snap.get('refined_rate'))} of failures)")
    t = snap.get("teacher") or {}
    table.add_row("teacher", f"{t.get('requests', 0)} requests{_teacher_queue(snap)}, {t.get('http_429', 0)} x 429  "
                  f"{rpm}  {tpm}  {dollars}")
    sandbox = snap.get("sandbox") or {}
    table.add_row("sandbox",
                  f"{sandbox.get('per_s', 0):.1f} executions/s, {sandbox.get('done', 0)} total" + _slots(sandbox))
    table.add_row("shards", f"{snap.get('shards_sealed', 0)}/{snap.get('shards_total', 0)} sealed, "
                  f"{snap.get('tasks_per_s', 0):.1f} tasks/s")
    for rows in (snap.get("replicas") or {}).values():  # --ray: one row per replica
        for r in rows:
            table.add_row(f"  {r['name']}", replica_line(r))
    return table


def replica_line(r: dict) -> str:
    """One Ray replica: state, node, in flight of its bound, done, rate, restarts."""
    return (f"{r['state']:<8} {r['in_flight']}/{r['bound']} in flight, {r['done']} done, {r['per_s']:.1f}/s, "
            f"{r['restarts']} restart(s)" + (f", {r['resent']} resent" if r.get("resent") else "")
            + (f"  [{r['node']}]" if r.get("node") else ""))


def _teacher_queue(snap: dict) -> str:
    """Requests sent and not yet answered, and tasks waiting for a teacher slot: a teacher that
    accepts connections and never answers shows as a growing 'in flight' with no new requests."""
    t = snap.get("teacher") or {}
    waiting = (snap.get("teacher_slots") or {}).get("waiting", 0)
    if t.get("mode") == "batch":  # --teacher.mode batch: tasks wait on batches, not on connections
        return (f" ({t.get('in_flight', 0)} tasks waiting on {t.get('batches_open', 0)} open batches, "
                f"{t.get('batch_submitted', 0)} lines submitted)")
    return f" ({t.get('in_flight', 0)} in flight, {waiting} waiting)"


def _slots(lim: dict | None) -> str:
    if not lim:
        return ""
    return f"  [{lim.get('in_use', 0)}/{lim.get('capacity', 0)} busy, {lim.get('waiting', 0)} waiting]"


class Progress:
    """Runs as a background task while the engine works; `stop()` ends it."""

    def __init__(self, mode: str, snapshot: Callable[[], dict], title: str, log_every: float = 10.0):
        if mode == "auto":
            mode = "live" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.snapshot = snapshot
        self.title = title
        self.log_every = log_every
        self.console = Console()
        self._task: asyncio.Task | None = None
        self._live: Live | None = None

    def start(self) -> None:
        if self.mode == "none":
            return
        if self.mode == "live":
            self._live = Live(live_table(self.snapshot(), self.title), console=self.console,
                              refresh_per_second=4, transient=False)
            self._live.start()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        period = 0.25 if self.mode == "live" else self.log_every
        last = time.monotonic()
        while True:
            await asyncio.sleep(period)
            if self.mode == "live" and self._live is not None:
                self._live.update(live_table(self.snapshot(), self.title))
            elif time.monotonic() - last >= self.log_every - 1e-3:
                last = time.monotonic()
                print(status_line(self.snapshot()), flush=True)

    def log(self, line: str) -> None:
        if self.mode == "none":
            return
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._live is not None:
            self._live.update(live_table(self.snapshot(), self.title))
            self._live.stop()
            self._live = None


def summary_table(snap: dict, out_dir: str, wall_s: float) -> Table:
    table = Table(title=f"persd collect: {out_dir}", show_lines=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    oc = snap.get("outcomes", {})
    table.add_row("tasks (this partition)", f"{snap.get('tasks_done', 0)}/{snap.get('tasks_total', 0)}")
    table.add_row("  done by this run", str(snap.get("tasks_done_this_run", 0)))
    for name in ("student_passed", "refined", "unresolved", "error"):
        table.add_row(f"  {name}", str(oc.get(name, 0)))
    for cause, n in (snap.get("failures") or {}).items():
        table.add_row(f"  failed: {cause}", str(n))
    breaker = snap.get("failure_breaker")
    if breaker:
        table.add_row("failure breaker", f"stops after {breaker['threshold']} failed requests in a row"
                      if breaker.get("threshold") else "off")
    table.add_row("student pass rate", _pct(snap.get("student_pass_rate")))
    table.add_row("refinements verified (of failures)", _pct(snap.get("refined_rate")))
    for fmt, n in (snap.get("records") or {}).items():
        table.add_row(f"records: {fmt}", str(n))
    t = snap.get("teacher") or {}
    table.add_row("teacher requests (this run)", str(t.get("requests", 0)))
    table.add_row("teacher tokens in/out (this run)", f"{t.get('tokens_in', 0)}/{t.get('tokens_out', 0)}")
    table.add_row("teacher cost (this run)", f"${t.get('cost_usd', 0) or 0:.4f}")
    if t.get("mode") == "batch":
        table.add_row("  through the Batch API (batch prices)",
                      f"${t.get('cost_usd_batch', 0) or 0:.4f} ({t.get('batch_submitted', 0)} lines in "
                      f"{t.get('batch_files', 0)} files)")
    if t.get("price_per_1m_usd"):
        p_in, p_out = t["price_per_1m_usd"]
        table.add_row("  at --teacher.price-in/-out", f"${p_in:g} / ${p_out:g} per 1M tokens")
    refined = oc.get("refined", 0)
    if refined and t.get("cost_usd"):
        table.add_row("  per verified refinement", f"${t['cost_usd'] / refined:.5f}")
    sandbox = snap.get("sandbox") or {}
    table.add_row("sandbox executions", str(sandbox.get("done", 0)))
    table.add_row("shards sealed", f"{snap.get('shards_sealed', 0)}/{snap.get('shards_total', 0)}")
    for rows in (snap.get("replicas") or {}).values():
        for r in rows:
            table.add_row(f"{r['name']} (done, restarts)", f"{r['done']}, {r['restarts']}")
    table.add_row("wall time", f"{wall_s:.1f}s")
    return table


def print_summary(snap: dict, out_dir: str, wall_s: float, mode: str) -> None:
    """The final table, whatever the progress mode: --progress none quiets the run, not its result."""
    Console().print(summary_table(snap, out_dir, wall_s))
    print(hint(out_dir))
