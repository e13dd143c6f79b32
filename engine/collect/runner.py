"""The engine: admission, back-pressure, journaling, sealing, signals. One `Collector` per run.

    rc = await Collector(cfg).run()          # real backends (persd.engine.collect.backends)
    rc = await Collector(cfg, open_backends=my_fakes).run()   # tests and benchmarks

Tasks are read lazily; at most --max-in-flight are alive. Each finished task is journaled
(one write) before it counts; a shard is sealed the moment its last task is journaled.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncContextManager, Callable

import orjson
from persd.engine.collect import manifest as mf
from persd.engine.collect.cluster import replica_rows, utilisation
from persd.engine.collect.config import CollectConfig
from persd.engine.collect.flow import BackendFailure, Backends, Limits, TaskFlow
from persd.engine.collect.metrics import RunStats, timeline_row
from persd.engine.collect.progress import Progress, print_summary
from persd.engine.collect.records import Meta, Tally, TaskOutcome, result_line
from persd.engine.collect.shards import DiskError, ShardPlan, ShardState, ShardStore
from persd.engine.collect.source import SourceInfo, scan_source
from persd.engine.tasks import Task, iter_tasks
from persd.runtime.errors import PersdError, UsageError
from persd.runtime.student.base import StudentStartError

OpenBackends = Callable[[CollectConfig, "Collector"], AsyncContextManager[Backends]]
MANIFEST_EVERY_S = 30.0
TIMELINE_EVERY_S = 5.0  # one DIR/timeline.jsonl line (what `persd report` plots over time)
HARD_STOP_S = 3.0  # after a second SIGINT/SIGTERM, the longest the process waits for its backends to close


def _exit_now() -> None:
    """The second signal's deadline passed: every finished task is already journaled (one write each)."""
    print("persd: stopped; rerun the same command to resume", file=sys.stderr, flush=True)
    os._exit(130)


class Collector:
    def __init__(self, cfg: CollectConfig, open_backends: OpenBackends | None = None,
                 install_signals: bool = True):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self._open_backends = open_backends
        self.install_signals = install_signals
        self.stats = RunStats()
        self.source: SourceInfo | None = None
        self.plan: ShardPlan | None = None
        self.store: ShardStore | None = None
        self.open_shards: dict[int, ShardState] = {}
        self.shard_info: dict[int, dict] = {}
        self.limits: Limits | None = None
        self.backends: Backends | None = None
        self.progress: Progress | None = None
        self.fatal: BaseException | None = None
        self.stopping: str | None = None
        self.state = "starting"
        self.warnings: list[str] = []
        self.notes: list[str] = []  # labels shown in the summary (e.g. the offline stand-in teacher)
        self.secrets: list[str] = []
        self._running: set[asyncio.Task] = set()
        self._admission: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None
        self._grace_handle: asyncio.TimerHandle | None = None
        self._hard_stop: threading.Timer | None = None
        self.work_started: float | None = None
        self._had_manifest = False
        self.work_ended: float | None = None
        self.student_label = cfg.student_model or "tiny-local"
        self.teacher_label = cfg.teacher_model if cfg.teacher_url else "offline-stand-in"

    # ------------------------------------------------------------------ setup

    def prepare(self) -> int:
        """Everything before any backend starts: input check, layout, compatibility, recovery.
        Returns the number of tasks left for this partition."""
        cfg = self.cfg
        self.source = scan_source(cfg.tasks, cfg.limit)
        self.plan = ShardPlan(self.source.count, cfg.shard_size, cfg.num_shards, cfg.shard_index)
        fp = self.fingerprint()
        if self.out.exists():
            self.warnings += mf.check_compatible(self.out, fp, cfg.force)
        self.store = ShardStore(self.out, self.plan)
        self.store.prepare()
        owned = self.plan.owned()
        self.stats.total = self.plan.owned_tasks()
        self.stats.shards_total = len(owned)
        for k in owned:
            if self.store.is_sealed(k):
                problem = self.store.check_seal(k)
                if problem is None:
                    self._adopt_sealed(k)
                    continue
                self._rebuild_damaged(k, problem)
            state = self.store.load(k)
            if state.complete:  # every task journaled, the seal was interrupted
                self._seal(k, state)
                continue
            self.stats.resumed += len(state.done)
            self.stats.outcomes.update(state.outcomes)
            self.stats.records.update(state.records)
            if state.done or state.attempts:
                self.open_shards[k] = state
        return self.stats.total - self.stats.resumed

    def _rebuild_damaged(self, k: int, problem: str) -> None:
        """A sealed shard whose files no longer match its seal: seal it again from its kept journal
        (nothing is redone), or refuse, naming the file, when that journal is gone."""
        assert self.store
        if self.store.journal_path(k).exists() or self.store.unseal_for_rebuild(k):
            for path in (self.store.records_path(k), self.store.results_path(k), self.store.seal_path(k)):
                path.unlink(missing_ok=True)
            self.warnings.append(f"{problem}: shard {k} is damaged; rebuilt from its journal")
            return
        name = self.store.records_path(k).name.replace(".jsonl", "")
        raise UsageError(
            f"{problem}: shard {k} is damaged and its journal is gone, so it cannot be rebuilt; remove "
            f"{self.out / 'shards' / name}.* and rerun to redo its tasks (teacher answers already paid for are "
            f"reused from the teacher journal where the same request comes again)")

    def _adopt_sealed(self, k: int) -> None:
        assert self.store and self.plan
        stale = self.store.journal_path(k)
        if stale.exists():  # sealed, then stopped before the journal was moved aside
            with contextlib.suppress(OSError):
                self.store.sealed_journal_path(k).parent.mkdir(exist_ok=True)
                stale.replace(self.store.sealed_journal_path(k))
        info = self.store.sealed_stats(k)
        if info["tasks"] != self.plan.size(k):  # sealed under another --limit (a --force rerun)
            name = self.store.results_path(k).name.replace(".results.jsonl", "")
            raise UsageError(
                f"shard {k} was sealed with {info['tasks']} tasks, but with these settings it holds "
                f"{self.plan.size(k)}: remove {self.store.layout.shards_dir / name}.* to redo it, or use a new --out"
            )
        self.shard_info[k] = info
        self.stats.resumed += self.plan.size(k)
        self.stats.shards_sealed += 1
        self.stats.outcomes.update(info["outcomes"])
        self.stats.records.update(info["formats"])

    def fingerprint(self) -> dict[str, Any]:
        fp = self.cfg.fingerprint()
        assert self.source is not None
        fp["tasks_count"] = self.source.count
        fp["tasks_sha256"] = self.source.sha256
        return fp

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        t0 = time.monotonic()
        self._had_manifest = mf.manifest_path(self.out, self.cfg).exists()
        left = self.prepare()
        self.state = "running"
        if self._had_manifest or self.stats.resumed:
            self.write_manifest()
        for w in self.warnings:
            print(f"persd: warning: {w}", file=sys.stderr)
        if left == 0:
            self.state = "done"
            self.finish(t0)
            return 0
        opener = self._open_backends
        if opener is None:
            from persd.engine.collect.backends import open_backends as opener  # real sandbox, teacher, student
        try:
            async with opener(self.cfg, self) as backends:
                self.backends = backends
                workers = getattr(getattr(backends.sandbox, "config", None), "worker_count", None)
                n_workers = workers() if callable(workers) else (self.cfg.sandbox_workers or 1)
                self.limits = Limits.from_config(self.cfg, n_workers)
                await self._work()
        except PersdError as exc:
            if self.fatal is None:
                self.fatal = exc
        finally:
            assert self.store is not None
            self.store.close()
        if self.fatal is not None:
            self.state = "failed"
            self.finish(t0)
            msg = str(self.fatal)
            if not isinstance(self.fatal, (DiskError, UsageError, StudentStartError)) and "rerun" not in msg:
                msg += f"\nthe work done so far is saved in {self.out}: rerun the same command to resume"
            fatal = self.fatal if isinstance(self.fatal, PersdError) else PersdError(msg)
            fatal.args = (msg,)
            raise fatal
        if self.stopping:
            self.state = "interrupted"
            self.finish(t0)
            left = self.stats.total - self.stats.finished
            print(f"persd: interrupted ({self.stopping}): {left} task(s) left; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        self.state = "done"
        self.finish(t0)
        return 0

    async def _work(self) -> None:
        cfg = self.cfg
        assert self.limits and self.backends
        flow_class = TaskFlow
        if cfg.protocol == "paper":
            from persd.engine.paper.flow import PaperTaskFlow as flow_class
        self.flow = flow_class(cfg, self.backends, self.limits, Meta(self.student_label, self.teacher_label, cfg.round))
        self.work_started = time.monotonic()  # backends are up: what follows is the work itself
        self._slots = asyncio.Semaphore(cfg.max_in_flight)
        title = f"persd collect -> {self.out}" + (f" [{cfg.partition}]" if cfg.partition else "")
        if self.notes:
            title += "  (" + "; ".join(self.notes) + ")"
        self.write_manifest()  # the backends are up: from here on, the directory holds this run's settings
        self.progress = Progress(cfg.progress, self.snapshot, title, cfg.log_every)
        for note in self.notes:
            self.progress.log(f"persd: {note}")
        self.progress.start()
        loop = asyncio.get_running_loop()
        installed = []
        if self.install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._on_signal, sig.name)
                    installed.append(sig)
        ticker = asyncio.create_task(self._tick())
        try:
            self._admission = asyncio.create_task(self._admit())
            with contextlib.suppress(asyncio.CancelledError):
                await self._admission
            while self._running:
                await asyncio.gather(*list(self._running), return_exceptions=True)
            self.work_ended = time.monotonic()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if self._grace_handle is not None:
                self._grace_handle.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.progress.stop()

    async def _admit(self) -> None:
        assert self.plan and self._slots and self.source
        plan, slots = self.plan, self._slots
        total = plan.total
        sealed = {k for k in plan.owned() if k in self.shard_info}
        for idx, task in enumerate(itertools.islice(iter_tasks(self.cfg.tasks), total)):  # nothing past --limit
            k = idx // plan.shard_size
            if not plan.owns(k) or k in sealed:
                continue
            state = self.open_shards.get(k)
            if state is None:
                state = self.open_shards[k] = ShardState(k, plan.size(k))
            elif idx in state.done:
                continue
            await slots.acquire()
            if self.stopping or self.fatal:
                slots.release()
                return
            prior = state.attempts.pop(idx, None)
            t = asyncio.create_task(self._one(idx, k, task, prior))
            self._running.add(t)
            t.add_done_callback(self._running.discard)

    async def _one(self, idx: int, k: int, task: Task, prior: dict | None) -> None:
        assert self.store and self._slots
        store = self.store
        try:
            try:
                outcome = await self.flow.run(
                    task, prior, lambda attempt: store.journal_attempt(k, idx, task.task_id, attempt))
            except (BackendFailure, DiskError) as exc:
                self._fail(exc)
                return
            except asyncio.CancelledError:
                raise
            except PersdError as exc:
                self._fail(exc)
                return
            except Exception as exc:  # a task the flow could not handle: recorded, not fatal
                why = f"{type(exc).__name__}: {exc}"
                outcome = TaskOutcome(result_line(task, "error", "error", why, Tally(), error=why))
            outcome.result["index"] = idx
            outcome.result["shard"] = k
            try:
                store.journal_done(k, idx, outcome.result, outcome.records)
            except DiskError as exc:
                self._fail(exc)
                return
            self.stats.add(outcome.result, outcome.records)
            state = self.open_shards[k]
            state.done.add(idx)
            if state.complete:
                try:
                    self._seal(k, state)
                except PersdError as exc:
                    self._fail(exc)
        finally:
            self._slots.release()

    def _seal(self, k: int, state: ShardState) -> None:
        assert self.store
        info = self.store.seal(k)
        self.shard_info[k] = info
        self.open_shards.pop(k, None)
        self.stats.shards_sealed += 1
        if self.state != "starting":
            self.write_manifest()
        else:  # sealed during recovery: its tasks count as resumed
            self.stats.resumed += info["tasks"]
            self.stats.outcomes.update(info["outcomes"])

    # ------------------------------------------------------------------ stopping

    def _on_signal(self, name: str) -> None:
        if self.stopping is None:
            self.stopping = name
            n = len(self._running)
            msg = (f"persd: {name}: admitting no new tasks; {n} in flight get up to {self.cfg.grace:g}s to finish "
                   f"(send it again to stop now). Rerun the same command to resume.")
            print(msg, file=sys.stderr, flush=True)
            if self._admission is not None:
                self._admission.cancel()
            self._grace_handle = asyncio.get_running_loop().call_later(self.cfg.grace, self._cancel_running)
        elif self._hard_stop is None:
            print(f"persd: {name} again: stopping now (finished tasks are journaled). Rerun the same command to "
                  f"resume.", file=sys.stderr, flush=True)
            self._cancel_running()
            # a backend may block its close on work in a thread (a long generation): do not wait for it
            self._hard_stop = threading.Timer(HARD_STOP_S, _exit_now)
            self._hard_stop.daemon = True
            self._hard_stop.start()

    def _cancel_running(self) -> None:
        for t in list(self._running):
            t.cancel()

    def _fail(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
            if self._admission is not None:
                self._admission.cancel()
            self._cancel_running()

    # ------------------------------------------------------------------ reporting

    async def _tick(self) -> None:
        last_manifest = time.monotonic()
        while True:
            self.write_timeline()
            await asyncio.sleep(TIMELINE_EVERY_S)
            if time.monotonic() - last_manifest >= MANIFEST_EVERY_S:
                last_manifest = time.monotonic()
                with contextlib.suppress(PersdError):
                    self.write_manifest()

    def write_timeline(self) -> None:
        """Append one line of counters to DIR/timeline.jsonl (appended across resumed runs)."""
        name = f"timeline.{self.cfg.partition}.jsonl" if self.cfg.partition else "timeline.jsonl"
        with contextlib.suppress(OSError), open(self.out / name, "ab") as fh:
            fh.write(orjson.dumps(mf.scrub(timeline_row(self.snapshot()), self.secrets)) + b"\n")

    def snapshot(self) -> dict:
        teacher = self.backends.teacher if self.backends else None
        snap = self.stats.snapshot(self.limits, teacher, self.cfg.max_cost)
        if self.cfg.price_in is not None and "teacher" in snap:  # --price-in/--price-out: say which prices
            snap["teacher"]["price_per_1m_usd"] = [self.cfg.price_in, self.cfg.price_out]
        snap.update(replica_rows(self.backends))  # --ray: one row per student replica and sandbox actor
        return snap

    def manifest(self) -> dict:
        assert self.plan and self.source and self.store
        plan = self.plan
        shards = []
        totals = Counter()
        for k in plan.owned():
            lo, hi = plan.span(k)
            entry: dict[str, Any] = {"index": k, "span": [lo, hi], "tasks": hi - lo}
            if k in self.shard_info:
                info = self.shard_info[k]
                entry.update(state="sealed", done=hi - lo, records=info["records"], outcomes=info["outcomes"],
                             teacher_calls=info["teacher_calls"], teacher_tokens=info["teacher_tokens"],
                             files=[str(self.store.records_path(k).relative_to(self.out)),
                                    str(self.store.results_path(k).relative_to(self.out))])
                if info.get("seal"):
                    entry["seal"] = {f: {"bytes": info["seal"][f]["bytes"], "sha256": info["seal"][f]["sha256"]}
                                     for f in ("records", "results")}
                totals["records"] += info["records"]
                totals["teacher_calls"] += info["teacher_calls"]
                totals["teacher_tokens"] += info["teacher_tokens"]
            elif k in self.open_shards:
                entry.update(state="open", done=len(self.open_shards[k].done))
            else:
                entry.update(state="pending", done=0)
            shards.append(entry)
        snap = self.snapshot()
        data = {
            "version": mf.VERSION,
            "command": "persd collect",
            "state": self.state,
            "config": self.cfg.public(),
            "fingerprint": self.fingerprint(),
            "tasks": {"source": self.source.name, "path": str(self.source.path), "count": self.source.count,
                      "sha256": self.source.sha256},
            "partition": {"index": self.cfg.shard_index, "count": self.cfg.num_shards},
            "shard_size": self.cfg.shard_size,
            "student": {"model": self.student_label, "backend": self.cfg.resolved_student_backend()},
            "teacher": {"model": self.teacher_label, "url": self.cfg.teacher_url,
                        "offline_stand_in": self.cfg.standin_teacher},
            "shards": shards,
            "totals": {
                "tasks": self.stats.total,
                "done": self.stats.finished,
                "shards": len(shards),
                "shards_sealed": self.stats.shards_sealed,
                "outcomes": snap["outcomes"],
                "records_sealed": totals["records"],
                "records": snap["records"],
                "teacher_calls_sealed": totals["teacher_calls"],
                "teacher_tokens_sealed": totals["teacher_tokens"],
            },
            "notes": self.notes,
        }
        if "replicas" in snap:
            data["cluster"] = {"address": self.cfg.ray_address(), "replicas": snap["replicas"],
                               "utilisation": utilisation(snap["replicas"])}
        if self.fatal is not None:
            data["error"] = str(self.fatal)
        return mf.scrub(data, self.secrets)

    def write_manifest(self) -> None:
        mf.write_manifest(mf.manifest_path(self.out, self.cfg), self.manifest())

    def finish(self, t0: float) -> None:
        wall = time.monotonic() - t0
        if self._hard_stop is not None:  # the backends closed in time: finish normally
            self._hard_stop.cancel()
        if self.state == "failed" and self.work_started is None and not (self._had_manifest or self.stats.resumed):
            return  # failed at start-up (a backend would not open): leave no settings behind to be held to
        try:
            self.write_manifest()
            snap = self.snapshot()
            snap["wall_s"] = round(wall, 3)
            snap["state"] = self.state
            if self.work_started is not None:
                self.write_timeline()
            name = f"metrics.{self.cfg.partition}.json" if self.cfg.partition else "metrics.json"
            path = self.out / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(orjson.dumps(mf.scrub(snap, self.secrets),
                                         option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
            tmp.replace(path)
        except (PersdError, OSError) as exc:
            if self.fatal is None:
                self.fatal = exc if isinstance(exc, PersdError) else PersdError(f"cannot write metrics: {exc}")
            return
        if self.state != "failed" or self.stats.done:
            print_summary(self.snapshot(), str(self.out), wall, self.cfg.progress)
