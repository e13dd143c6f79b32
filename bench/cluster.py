"""`persd bench cluster`: does collect scale over a Ray cluster's nodes, and beat static partitions?

Simulated nodes: a local Ray cluster (runtime/cluster/local.py) whose worker nodes have one CPU each;
on each, one scripted student replica of fixed capacity (`--capacity` requests at once, `--latency`
seconds each; right for every third task) and one real process-pool sandbox. The teacher is a local
server in its own process. The driver is `persd collect`'s engine (one Collector), as with `--ray`.

1. Scaling: the same per-node work on 1, 2 and 4 nodes: tasks/s against n x the one-node figure
   (linear), and the driver's CPU seconds per task.
2. Straggler: 4 nodes, one of them 2x slower. Ray (one driver, least-loaded routing) against the same
   work as 4 static partitions (--num-shards 4, each its own student and sandbox, in one process).
3. Node removal: 4 nodes, one removed when a third of the tasks are done: every task once, and no
   teacher request twice (the teacher journal holds one answer per request).

Ray binds to the machine's primary address: as root the benchmark re-runs itself in a loopback-only
network namespace (`--no-netns` to run where it is). Prints a table and writes JSON
(default runs/bench/cluster.json).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from persd.config import parser_for

NETNS_ENV = "PERSD_BENCH_NETNS"


# ------------------------------------------------------------------ the scripted student (in actors, or local)


class ScriptedStudent:
    """A student backend of fixed capacity: `capacity` requests at once, `latency` seconds each; 2x slower
    where it runs on the node `slow_node` (a Ray node id) or when `slow` is set."""

    name = "scripted"

    def __init__(self, capacity: int, latency: float, slow_node: str | None = None, slow: bool = False,
                 factor: float = 2.0):
        self.capacity, self.latency, self.slow_node, self.slow, self.factor = capacity, latency, slow_node, slow, factor
        self.config = None

    async def start(self) -> None:
        self._sem = asyncio.Semaphore(self.capacity)
        slow = self.slow
        if self.slow_node:
            import ray

            slow = ray.get_runtime_context().get_node_id() == self.slow_node
        if slow:
            self.latency *= self.factor

    async def close(self) -> None:
        pass

    async def generate(self, request: Any) -> Any:
        from persd.bench.engine import _num
        from persd.runtime.student import StudentOutput

        async with self._sem:
            await asyncio.sleep(self.latency)
        text = "    return x * 2\n" if _num(request.prompt or "") % 3 == 0 else "    return x + 2\n"
        n = request.params.n
        return StudentOutput([text] * n, ["stop"] * n, 20, 5 * n)

    async def __aenter__(self) -> "ScriptedStudent":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ------------------------------------------------------------------ backends: on the cluster, or one partition


def _teacher(cfg, url: str):
    from persd.engine.collect.backends import teacher_journal_path
    from persd.runtime.teacher import TeacherClient, TeacherConfig

    return TeacherClient(TeacherConfig(base_url=url, model="bench-teacher", api_key_env="PERSD_BENCH_NO_KEY",
                                       rpm=1_000_000, tpm=1_000_000_000, max_in_flight=256,
                                       journal_path=teacher_journal_path(cfg), prices={"bench-teacher": (0.0, 0.0)}))


def ray_opener(info, teacher_url: str, nodes: int, capacity: int, latency: float, slow_node: str | None):
    @contextlib.asynccontextmanager
    async def opener(cfg, collector):
        from persd.engine.collect.flow import Backends
        from persd.runtime.cluster import RaySandbox, RayStudent, ReplicaSpec, SandboxSpec
        from persd.runtime.sandbox import SandboxConfig

        make = _Factory(capacity, latency, slow_node)  # picklable by reference: the replicas import this module
        sandbox = RaySandbox(SandboxConfig(timeout_s=cfg.sandbox.timeout_s, per_core=2), SandboxSpec(), info)
        student = RayStudent(None, ReplicaSpec(replicas=nodes, cpus=1, in_flight=capacity), info,
                             nodes * capacity, make=make)
        async with sandbox, _teacher(cfg, teacher_url) as teacher, student:
            yield Backends(student=student, sandbox=sandbox, teacher=teacher)

    return opener


class _Factory:
    def __init__(self, capacity: int, latency: float, slow_node: str | None = None, slow: bool = False):
        self.args = (capacity, latency, slow_node, slow)

    def __call__(self) -> ScriptedStudent:
        return ScriptedStudent(*self.args)


def partition_opener(teacher_url: str, capacity: int, latency: float, slow: bool):
    @contextlib.asynccontextmanager
    async def opener(cfg, collector):
        from persd.engine.collect.flow import Backends
        from persd.runtime.sandbox import Sandbox, SandboxConfig

        async with Sandbox(SandboxConfig(workers=2, timeout_s=cfg.sandbox.timeout_s)) as sandbox, \
                _teacher(cfg, teacher_url) as teacher, _Factory(capacity, latency, None, slow)() as student:
            yield Backends(student=student, sandbox=sandbox, teacher=teacher)

    return opener


# ------------------------------------------------------------------ runs


def _config(tasks: Path, out: Path, capacity_total: int, *extra: str):
    """16 equal shards, so 4 static partitions hold the same number of tasks each."""
    from persd.engine.collect.config import parse_args

    n = sum(1 for _ in open(tasks, "rb"))

    return parse_args(["--tasks", str(tasks), "--out", str(out), "--student.backend", "openai", "--student.url",
                       "http://unused.invalid/v1", "--student.model", "scripted", "--teacher.base-url", "http://unused",
                       "--teacher.model", "bench-teacher", "--progress", "none", "--max-in-flight", "1024",
                       "--student.max-concurrency", str(capacity_total), "--teacher.max-in-flight", "256",
                       "--shard-size", str(max(1, n // 16)), *extra], environ={})


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _results(out: Path) -> list[dict]:
    return [orjson.loads(x) for p in sorted((out / "shards").glob("*.results.jsonl"))
            for x in p.read_bytes().splitlines()]


def _teacher_answers(out: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (out / "work").glob("teacher*.journal.jsonl"))


async def run_ray(args, work: Path, name: str, nodes: int, n_tasks: int, slow: bool = False,
                  remove_at: float | None = None) -> dict:
    """One Ray run on a fresh cluster of `nodes` worker nodes."""
    import ray
    from persd.bench.engine import write_tasks
    from persd.engine.collect.runner import Collector
    from persd.runtime.cluster import connect
    from persd.runtime.cluster.local import LocalCluster

    tasks = write_tasks(work / f"{name}.jsonl", n_tasks)
    cluster = LocalCluster([{"num_cpus": 1} for _ in range(nodes)]).start()  # Ray: in the main thread
    try:
        info = connect(cluster.address)
        slow_node = cluster.nodes[-1].node_id if slow else None
        out = work / name
        collector = Collector(_config(tasks, out, nodes * args.capacity), install_signals=False,
                              open_backends=ray_opener(info, args.teacher_url, nodes, args.capacity, args.latency,
                                                       slow_node))
        removed = None
        if remove_at is not None:
            async def remove() -> None:
                nonlocal removed
                while collector.stats.done < remove_at * n_tasks:
                    await asyncio.sleep(0.05)
                removed = collector.stats.done
                await asyncio.to_thread(cluster.remove_worker, 1)
            remover = asyncio.create_task(remove())
        cpu0 = _cpu()
        rc = await collector.run()
        cpu = _cpu() - cpu0
        if remove_at is not None:
            remover.cancel()
        assert rc == 0, f"{name}: collect exited {rc}"
        wall = collector.work_ended - collector.work_started
        snap = collector.snapshot()
        res = _results(out)
        ids = [r["task_id"] for r in res]
        return {"nodes": nodes, "tasks": n_tasks, "wall_s": round(wall, 3), "tasks_per_s": round(n_tasks / wall, 2),
                "driver_cpu_ms_per_task": round(1000 * cpu / n_tasks, 2), "tasks_once": len(ids) == len(set(ids)) ==
                n_tasks, "lost": n_tasks - len(set(ids)), "repeated": len(ids) - len(set(ids)),
                "teacher_calls": sum(r["teacher_calls"] for r in res), "teacher_answers": _teacher_answers(out),
                "removed_after": removed, "replicas": snap.get("replicas", {}).get("student", [])}
    finally:
        ray.shutdown()
        cluster.shutdown()


async def run_partitions(args, work: Path, n_tasks: int) -> dict:
    """The same work as 4 static partitions (one of them on the slow node), each its own student and sandbox."""
    from persd.bench.engine import write_tasks
    from persd.engine.collect.runner import Collector

    tasks = write_tasks(work / "partitions.jsonl", n_tasks)
    out = work / "partitions"
    collectors = [Collector(_config(tasks, out, args.capacity, "--num-shards", "4", "--shard-index", str(i)),
                            install_signals=False,
                            open_backends=partition_opener(args.teacher_url, args.capacity, args.latency, i == 3))
                  for i in range(4)]
    cpu0 = _cpu()
    rcs = await asyncio.gather(*(c.run() for c in collectors))
    cpu = _cpu() - cpu0
    assert rcs == [0] * 4, rcs
    wall = max(c.work_ended for c in collectors) - min(c.work_started for c in collectors)
    per = [round(c.work_ended - c.work_started, 3) for c in collectors]
    return {"nodes": 4, "tasks": n_tasks, "wall_s": round(wall, 3), "tasks_per_s": round(n_tasks / wall, 2),
            "partition_wall_s": per, "driver_cpu_ms_per_task": round(1000 * cpu / n_tasks, 2)}


async def bench(args, work: Path) -> dict:
    report: dict[str, Any] = {"capacity": args.capacity, "latency_s": args.latency, "load": os.getloadavg()}
    scale = []
    for n in (1, 2, 4):
        r = await run_ray(args, work, f"scale-{n}", n, args.tasks_per_node * n)
        scale.append(r)
    one = scale[0]["tasks_per_s"]
    for r in scale:
        r["of_linear"] = round(r["tasks_per_s"] / (one * r["nodes"]), 3)
    report["scaling"] = scale
    n = args.tasks_per_node * 4
    ray_slow = await run_ray(args, work, "straggler-ray", 4, n, slow=True)
    parts = await run_partitions(args, work, n)
    report["straggler"] = {"ray": ray_slow, "partitions": parts,
                           "speedup": round(parts["wall_s"] / ray_slow["wall_s"], 3)}
    report["node_removal"] = await run_ray(args, work, "node-removal", 4, n, remove_at=1 / 3)
    report["load_after"] = os.getloadavg()
    return report


def print_report(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"Ray scaling: scripted replicas ({rep['capacity']} at a time, {rep['latency_s']:g} s each), "
                    f"real sandbox, local teacher")
    for col in ("nodes", "tasks", "wall s", "tasks/s", "of linear", "driver CPU ms/task"):
        t.add_column(col, justify="right")
    for r in rep["scaling"]:
        t.add_row(str(r["nodes"]), str(r["tasks"]), f"{r['wall_s']:.1f}", f"{r['tasks_per_s']:.1f}",
                  f"{100 * r['of_linear']:.0f}%", f"{r['driver_cpu_ms_per_task']:.2f}")
    c.print(t)
    s = rep["straggler"]
    t = Table(title="4 nodes, one 2x slower: Ray vs 4 static partitions")
    for col in ("", "wall s", "tasks/s", "driver CPU ms/task"):
        t.add_column(col, justify="right")
    for name in ("ray", "partitions"):
        r = s[name]
        t.add_row(name, f"{r['wall_s']:.1f}", f"{r['tasks_per_s']:.1f}", f"{r['driver_cpu_ms_per_task']:.2f}")
    t.add_row("Ray speed-up", f"{s['speedup']:.2f}x", "", "")
    c.print(t)
    r = rep["node_removal"]
    c.print(f"node removal: 1 of 4 nodes removed after {r['removed_after']} of {r['tasks']} tasks: "
            f"{r['lost']} lost, {r['repeated']} repeated, teacher calls {r['teacher_calls']} = journal answers "
            f"{r['teacher_answers']}; wall {r['wall_s']:.1f} s")
    c.print(f"load average before {rep['load'][0]:.2f}, after {rep['load_after'][0]:.2f}")


def _in_netns(argv: list[str]) -> int | None:
    """As root, outside a namespace already: rerun this benchmark in a loopback-only network namespace."""
    if os.environ.get(NETNS_ENV) or os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    from persd.runtime.cluster.local import loopback_argv

    env = {**os.environ, NETNS_ENV: "1"}
    return subprocess.call(loopback_argv([sys.executable, "-m", "persd", "bench", "cluster", *argv]), env=env)


def main(argv: list[str]) -> int:
    p = parser_for("bench cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capacity", type=int, default=8, help="requests a replica serves at once (default 8)")
    p.add_argument("--latency", type=float, default=1.0, help="seconds per student request (default 1.0)")
    p.add_argument("--tasks-per-node", type=int, default=120, help="tasks per node in each run (default 120)")
    p.add_argument("--out", default="runs/bench/cluster.json")
    p.add_argument("--no-netns", action="store_true", help="run where it is (no loopback-only namespace)")
    args = p.parse_args(argv)
    if not args.no_netns:
        rc = _in_netns(argv)
        if rc is not None:
            return rc
    from persd.engine.aio import run_async

    with tempfile.TemporaryDirectory(prefix="persd-bench-cluster-") as tmp:
        work = Path(tmp)
        teacher = subprocess.Popen([sys.executable, "-m", "persd.runtime.local_server", "--port", "0"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            line = teacher.stdout.readline()
            args.teacher_url = line.strip().rsplit(" ", 1)[-1]
            t0 = time.perf_counter()
            rep = run_async(bench(args, work))
            rep["bench_s"] = round(time.perf_counter() - t0, 1)
        finally:
            teacher.terminate()
            teacher.wait()
    print_report(rep)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(rep, option=orjson.OPT_INDENT_2))
    print(f"written: {out}")
    return 0
