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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncContextManager, Callable

import orjson
from persd.engine.collect import manifest as mf
from persd.engine.collect.cluster import replica_rows, utilisation
from persd.engine.collect.config import CollectConfig
from persd.engine.collect.flow import BackendFailure, Backends, Limits, TaskFlow
from persd.engine.collect.layout import CollectLayout, CollectManifest
from persd.engine.collect.metrics import RunStats, timeline_row
from persd.engine.collect.progress import Progress, print_summary
from persd.engine.collect.records import Meta, TaskOutcome
from persd.engine.collect.shards import DiskError, ShardPlan, ShardState, ShardStore
from persd.engine.collect.source import SourceInfo, scan_source
from persd.engine.rundirs.files import atomic_write_json
from persd.engine.tasks import Task, iter_tasks, task_reading
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


@dataclass(frozen=True)
class CollectPlan:
    """What set-up decides before any backend opens: the task source, its shards, where they are kept."""

    source: SourceInfo
    shards: ShardPlan
    store: ShardStore
    fingerprint: dict[str, Any]  # the settings that alter results, the task file's count and digest
    warnings: list[str]  # --force: the settings that changed


def plan_collect(cfg: CollectConfig) -> CollectPlan:
    """Read the task source (every line checked), split it into shards, hold this run to the directory's
    settings (refused unless --force) and make its folders."""
    source = scan_source(cfg.tasks, cfg.limit, task_reading(cfg))
    shards = ShardPlan(source.count, cfg.shard_size, cfg.num_shards, cfg.shard_index)
    fingerprint = dict(cfg.fingerprint(), tasks_count=source.count, tasks_sha256=source.sha256)
    out = Path(cfg.out)
    warnings = mf.check_compatible(out, fingerprint, cfg.force) if out.exists() else []
    store = ShardStore(out, shards)
    store.prepare()
    return CollectPlan(source, shards, store, fingerprint, warnings)


def _sandbox_workers(backends: Backends, cfg: CollectConfig) -> int:
    workers = getattr(getattr(backends.sandbox, "config", None), "worker_count", None)
    return workers() if callable(workers) else (cfg.sandbox.workers or 1)


class Collector:
    plan: CollectPlan  # made by run() first: source, shards and store exist before any backend opens

    def __init__(self, cfg: CollectConfig, open_backends: OpenBackends | None = None,
                 install_signals: bool = True):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.layout = CollectLayout(self.out)
        self._open_backends = open_backends
        self.install_signals = install_signals
        self.stats = RunStats()
        self.open_shards: dict[int, ShardState] = {}
        self.shard_info: dict[int, dict] = {}
        self.limits: Limits | None = None  # set once the backends are up (the snapshot shows them)
        self.backends: Backends | None = None
        self.flow: TaskFlow | None = None
        self.fatal: BaseException | None = None
        self.stopping: str | None = None
        self.state = "starting"
        self.warnings: list[str] = []
        self.notes: list[str] = []  # labels shown in the summary (e.g. the offline stand-in teacher)
        self.secrets: list[str] = []
        self._running: set[asyncio.Task] = set()
        self._admission: asyncio.Task | None = None
        self._slots = asyncio.Semaphore(cfg.max_in_flight)
        self._grace_handle: asyncio.TimerHandle | None = None
        self._hard_stop: threading.Timer | None = None
        self.work_started: float | None = None
        self._had_manifest = False
        self.work_ended: float | None = None
        self.student_label = cfg.student.model or "tiny-local"
        self.teacher_label = cfg.teacher.model if cfg.teacher.base_url else "offline-stand-in"

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        t0 = time.monotonic()
        self._had_manifest = self.layout.manifest_path(self.cfg.partition).exists()
        self.plan = plan_collect(self.cfg)  # nothing is opened before the input and the directory are checked
        self.warnings += self.plan.warnings
        left = self.recover()
        self.state = "running"
        if self._had_manifest or self.stats.resumed:
            self.write_manifest()
        for w in self.warnings:
            print(f"persd: warning: {w}", file=sys.stderr)
        if left:
            await self._open_and_work()
        if self.fatal is not None:
            self.finish("failed", t0)
            raise self._fatal_error()
        if self.stopping:
            self.finish("interrupted", t0)
            left = self.stats.total - self.stats.finished
            print(f"persd: interrupted ({self.stopping}): {left} task(s) left; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        self.finish("done", t0)
        return 0

    async def _open_and_work(self) -> None:
        opener = self._open_backends
        if opener is None:
            from persd.engine.collect.backends import open_backends as opener  # real sandbox, teacher, student
        try:
            async with opener(self.cfg, self) as backends:
                self.backends = backends
                self.limits = Limits.from_config(self.cfg, _sandbox_workers(backends, self.cfg))
                await self._work(backends, self.limits)
        except PersdError as exc:
            if self.fatal is None:
                self.fatal = exc
        finally:
            self.plan.store.close()

    def _fatal_error(self) -> PersdError:
        msg = str(self.fatal)
        if not isinstance(self.fatal, (DiskError, UsageError, StudentStartError)) and "rerun" not in msg:
            msg += f"\nthe work done so far is saved in {self.out}: rerun the same command to resume"
        fatal = self.fatal if isinstance(self.fatal, PersdError) else PersdError(msg)
        fatal.args = (msg,)
        return fatal

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """What earlier runs left: sealed shards adopted (a damaged one rebuilt from its journal), open
        shards' journals loaded. Returns the number of tasks left for this partition."""
        shards, store = self.plan.shards, self.plan.store
        owned = shards.owned()
        self.stats.total = shards.owned_tasks()
        self.stats.shards_total = len(owned)
        for k in owned:
            if store.is_sealed(k):
                problem = store.check_seal(k)
                if problem is None:
                    self._adopt_sealed(k)
                    continue
                self._rebuild_damaged(k, problem)
            state = store.load(k)
            if state.complete:  # every task journaled, the seal was interrupted
                self._seal(k, state)
                continue
            self.stats.resumed += len(state.done)
            self.stats.outcomes.update(state.outcomes)
            self.stats.failures.update(state.failures)
            self.stats.records.update(state.records)
            if state.done or state.attempts:
                self.open_shards[k] = state
        return self.stats.total - self.stats.resumed

    def _rebuild_damaged(self, k: int, problem: str) -> None:
        """A sealed shard whose files no longer match its seal: seal it again from its kept journal
        (nothing is redone), or refuse, naming the file, when that journal is gone."""
        store = self.plan.store
        if store.journal_path(k).exists() or store.unseal_for_rebuild(k):
            for path in (store.records_path(k), store.results_path(k), store.seal_path(k)):
                path.unlink(missing_ok=True)
            self.warnings.append(f"{problem}: shard {k} is damaged; rebuilt from its journal")
            return
        name = store.records_path(k).name.replace(".jsonl", "")
        raise UsageError(
            f"{problem}: shard {k} is damaged and its journal is gone, so it cannot be rebuilt; remove "
            f"{self.layout.shards_dir / name}.* and rerun to redo its tasks (teacher answers already paid for are "
            f"reused from the teacher journal where the same request comes again)")

    def _adopt_sealed(self, k: int) -> None:
        shards, store = self.plan.shards, self.plan.store
        stale = store.journal_path(k)
        if stale.exists():  # sealed, then stopped before the journal was moved aside
            with contextlib.suppress(OSError):
                store.sealed_journal_path(k).parent.mkdir(exist_ok=True)
                stale.replace(store.sealed_journal_path(k))
        info = store.sealed_stats(k)
        if info["tasks"] != shards.size(k):  # sealed under another --limit (a --force rerun)
            name = store.results_path(k).name.replace(".results.jsonl", "")
            raise UsageError(
                f"shard {k} was sealed with {info['tasks']} tasks, but with these settings it holds "
                f"{shards.size(k)}: remove {self.layout.shards_dir / name}.* to redo it, or use a new --out"
            )
        self.shard_info[k] = info
        self.stats.resumed += shards.size(k)
        self.stats.shards_sealed += 1
        self.stats.outcomes.update(info["outcomes"])
        self.stats.failures.update(info.get("failures") or {})
        self.stats.records.update(info["formats"])

    # ------------------------------------------------------------------ work

    async def _work(self, backends: Backends, limits: Limits) -> None:
        cfg = self.cfg
        # the protocol's flow variant: persd's, or one registered by its package (paper mode: engine/paper/flow.py)
        self.flow = TaskFlow(cfg, backends, limits, Meta(self.student_label, self.teacher_label, cfg.round))
        self.flow.steps.on_teacher_wait = self._flush_if_all_wait
        self.work_started = time.monotonic()  # backends are up: what follows is the work itself
        title = f"persd collect -> {self.out}" + (f" [{cfg.partition}]" if cfg.partition else "")
        if self.notes:
            title += "  (" + "; ".join(self.notes) + ")"
        self.write_manifest()  # the backends are up: from here on, the directory holds this run's settings
        progress = Progress(cfg.progress, self.snapshot, title, cfg.log_every)
        for note in self.notes:
            progress.log(f"persd: {note}")
        progress.start()
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
            self._admission.add_done_callback(lambda _: self._flush_if_all_wait())
            with contextlib.suppress(asyncio.CancelledError):
                await self._admission
            while self._running:
                await asyncio.gather(*list(self._running), return_exceptions=True)
            # failed tasks held while their backend's failure streak was open (persd.engine.failures)
            if self.fatal is None:
                self.flow.failures.flush()  # the run ended well (or was interrupted): they failed for their content
            else:
                self.flow.failures.drop()  # the run stops on a broken server: a rerun redoes them
            self.work_ended = time.monotonic()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await self.flow.steps.close()
            if self._grace_handle is not None:
                self._grace_handle.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            await progress.stop()

    async def _admit(self) -> None:
        plan, slots = self.plan.shards, self._slots
        total = plan.total
        sealed = {k for k in plan.owned() if k in self.shard_info}
        tasks = iter_tasks(self.cfg.tasks, task_reading(self.cfg))
        for idx, task in enumerate(itertools.islice(tasks, total)):  # nothing past --limit
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
            t.add_done_callback(lambda _: self._flush_if_all_wait())

    def _flush_if_all_wait(self) -> None:
        """Every unfinished task waits on the teacher and no more can be admitted: nothing else can make
        progress, so a Batch API teacher closes its file now rather than after --teacher.batch-flush-s."""
        flush = getattr(self.backends.teacher, "flush", None) if self.backends is not None else None
        if flush is None or self.flow is None:
            return
        waiting = self.flow.steps.teacher_waits
        admitting = self._admission is not None and not self._admission.done() and not self._slots.locked()
        if waiting and waiting >= len(self._running) and not admitting:
            flush()

    async def _one(self, idx: int, k: int, task: Task, prior: dict | None) -> None:
        store = self.plan.store
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
                outcome = TaskOutcome.failed(task.task_id, f"{type(exc).__name__}: {exc}")
            result, records = outcome.to_json(index=idx, shard=k)
            failure = result.get("failure")
            later = lambda: self._finish(idx, k, result, records)  # noqa: E731
            if failure and self.flow.failures.hold(failure.get("by", ""), later):
                return  # journaled once its backend's failure streak is settled (persd.engine.failures)
            self._finish(idx, k, result, records)
        finally:
            self._slots.release()

    def _finish(self, idx: int, k: int, result: dict, records: list[dict]) -> None:
        """Journal a finished task (one write), count it, seal its shard when it was the last."""
        try:
            self.plan.store.journal_done(k, idx, result, records)
        except DiskError as exc:
            self._fail(exc)
            return
        self.stats.add(result, records)
        state = self.open_shards[k]
        state.done.add(idx)
        if state.complete:
            try:
                self._seal(k, state)
            except PersdError as exc:
                self._fail(exc)

    def _seal(self, k: int, state: ShardState) -> None:
        info = self.plan.store.seal(k)
        self.shard_info[k] = info
        self.open_shards.pop(k, None)
        self.stats.shards_sealed += 1
        if self.state != "starting":
            self.write_manifest()
        else:  # sealed during recovery: its tasks count as resumed
            self.stats.resumed += info["tasks"]
            self.stats.outcomes.update(info["outcomes"])
            self.stats.failures.update(info.get("failures") or {})

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
        with contextlib.suppress(OSError), open(self.layout.timeline_path(self.cfg.partition), "ab") as fh:
            fh.write(orjson.dumps(mf.scrub(timeline_row(self.snapshot()), self.secrets)) + b"\n")

    def snapshot(self) -> dict:
        teacher = self.backends.teacher if self.backends else None
        snap = self.stats.snapshot(self.limits, teacher, self.cfg.teacher.max_cost_usd)
        if self.cfg.teacher.price_in is not None and "teacher" in snap:  # --price-in/--price-out: say which prices
            snap["teacher"]["price_per_1m_usd"] = [self.cfg.teacher.price_in, self.cfg.teacher.price_out]
        flow = getattr(self, "flow", None)
        snap["failure_breaker"] = (flow.failures.report() if flow is not None
                                   else {"threshold": self.cfg.failure_breaker})
        snap.update(replica_rows(self.backends))  # --ray: one row per student replica and sandbox actor
        return snap

    def manifest(self) -> CollectManifest:
        plan, store = self.plan.shards, self.plan.store
        shards = []
        totals = Counter()
        for k in plan.owned():
            lo, hi = plan.span(k)
            entry: dict[str, Any] = {"index": k, "span": [lo, hi], "tasks": hi - lo}
            if k in self.shard_info:
                info = self.shard_info[k]
                entry.update(state="sealed", done=hi - lo, records=info["records"], outcomes=info["outcomes"],
                             teacher_calls=info["teacher_calls"], teacher_tokens=info["teacher_tokens"],
                             files=[str(store.records_path(k).relative_to(self.out)),
                                    str(store.results_path(k).relative_to(self.out))])
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
        source = self.plan.source
        manifest = CollectManifest(
            fingerprint=self.plan.fingerprint,
            state=self.state,
            config=self.cfg.public(),
            tasks={"source": source.name, "path": str(source.path), "count": source.count, "sha256": source.sha256},
            partition={"index": self.cfg.shard_index, "count": self.cfg.num_shards},
            shard_size=self.cfg.shard_size,
            student={"model": self.student_label, "backend": self.cfg.resolved_student_backend()},
            teacher={"model": self.teacher_label, "url": self.cfg.teacher.base_url,
                     "offline_stand_in": self.cfg.teacher.standin, **self._adapted_parameters()},
            shards=shards,
            totals={
                "tasks": self.stats.total,
                "done": self.stats.finished,
                "shards": len(shards),
                "shards_sealed": self.stats.shards_sealed,
                "outcomes": snap["outcomes"],
                "failures": snap["failures"],
                "records_sealed": totals["records"],
                "records": snap["records"],
                "teacher_calls_sealed": totals["teacher_calls"],
                "teacher_tokens_sealed": totals["teacher_tokens"],
            },
            notes=self.notes,
            failure_breaker=snap["failure_breaker"],
            cluster=({"address": self.cfg.ray_address(), "replicas": snap["replicas"],
                      "utilisation": utilisation(snap["replicas"])} if "replicas" in snap else None),
            error=None if self.fatal is None else str(self.fatal),
        )
        return CollectManifest.from_json(mf.scrub(manifest.to_json(), self.secrets))

    def _adapted_parameters(self) -> dict[str, Any]:
        """Parameters the teacher model refused, adapted once for the run (runtime/teacher/params.py)."""
        params = getattr(self.backends.teacher, "params", None) if self.backends else None
        return {"adapted_parameters": params.record()} if params is not None and params.changes else {}

    def write_manifest(self) -> None:
        mf.write_manifest(self.layout.manifest_path(self.cfg.partition), self.manifest())

    def finish(self, state: str, t0: float) -> None:
        """The run ends `state`: the manifest, the last timeline line and metrics.json, then the summary."""
        self.state = state
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
            atomic_write_json(self.layout.metrics_path(self.cfg.partition), mf.scrub(snap, self.secrets), mkdir=False)
        except (PersdError, OSError) as exc:
            if self.fatal is None:
                self.fatal = exc if isinstance(exc, PersdError) else PersdError(f"cannot write metrics: {exc}")
            return
        if self.state != "failed" or self.stats.done:
            print_summary(self.snapshot(), str(self.out), wall, self.cfg.progress)
