"""Pools of actors behind the local interfaces: RayStudent (a StudentBackend) and RaySandbox (a Sandbox).

Student replicas are spread over the nodes by Ray's scheduler (each asks for `cpus` and `gpus`); sandboxes
are one per node with CPUs, pinned softly to that node (a restart may land elsewhere) and sized to its CPU
count. Each actor is restarted by Ray where the cluster has room (`max_restarts`); the router resends what
a dead actor held.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from persd.runtime.cluster.connect import ClusterError, ClusterInfo, live_nodes
from persd.runtime.cluster.router import Replica, Router

NODE_WATCH_S = 5.0  # how often the sandbox pool looks for nodes that joined
START_WAIT_S = 600.0  # longest the start waits for every replica (a vLLM replica loads its model first)


@dataclass
class ReplicaSpec:
    """How many student replicas and what each asks of the cluster. replicas 0: as many as the
    cluster holds (GPU replicas: its GPUs / gpus; else one per node with `cpus` free)."""

    replicas: int = 0
    cpus: float = 1.0
    gpus: float = 0.0
    in_flight: int = 0  # per replica; 0: the caller's total / replicas
    max_restarts: int = -1  # -1: Ray restarts it whenever there is room
    wait_s: float = 60.0  # no replica up this long: NoReplicaLeft
    start_wait_s: float = START_WAIT_S
    resources: dict[str, float] = field(default_factory=dict)  # custom resources each asks for (tests, benches)

    def count(self, info: ClusterInfo) -> int:
        if self.replicas:
            return self.replicas
        if self.gpus > 0:
            return max(1, int(info.gpus // self.gpus))
        return max(1, sum(1 for n in info.nodes if n.cpus >= self.cpus and _has(n.resources, self.resources)))

    def check(self, info: ClusterInfo) -> None:
        """Whether one replica fits on some node; a ClusterError saying what is missing if not."""
        if any(n.cpus >= self.cpus and n.gpus >= self.gpus and _has(n.resources, self.resources) for n in info.nodes):
            return
        if self.gpus > 0 and info.gpus == 0:
            raise ClusterError(f"a student replica asks for {self.gpus:g} GPU(s) and the {info.describe()} has "
                               f"none")
        raise ClusterError(f"no node of the {info.describe()} has room for one student replica "
                           f"({self.cpus:g} CPU(s), {self.gpus:g} GPU(s){_named(self.resources)} each)")


@dataclass
class SandboxSpec:
    """One sandbox actor per node with CPUs (`per_node`), each with `workers` processes (0: its node's CPUs
    x the sandbox config's per_core)."""

    per_node: int = 1
    workers: int = 0
    max_restarts: int = -1
    wait_s: float = 60.0
    start_wait_s: float = 120.0
    resources: dict[str, float] = field(default_factory=dict)  # only nodes holding these get sandboxes


def _has(have: dict[str, float], want: dict[str, float]) -> bool:
    return all(have.get(k, 0.0) >= v for k, v in want.items())


def _named(res: dict[str, float]) -> str:
    return "".join(f", {v:g} {k}" for k, v in res.items())


class _Pool:
    kind = "pool"

    def __init__(self) -> None:
        self.router: Router | None = None
        self._handles: list[Any] = []
        self._remote: Any = None

    def _spawn(self, name: str, options: dict, make: Callable[[], Any], bound: int) -> Replica:
        handle = self._remote.options(**options).remote(make)
        self._handles.append(handle)
        return Replica(name, handle, bound)

    async def _open(self, actor_cls: type, specs: list[tuple[str, dict, Callable[[], Any], int]],
                    wait_s: float, start_wait_s: float) -> None:
        import ray

        self._remote = ray.remote(actor_cls)
        replicas = [self._spawn(*spec) for spec in specs]
        self.router = Router(self.kind, replicas, wait_s)
        await self.router.start(start_wait_s)

    async def close(self) -> None:
        import ray

        if self.router is not None:
            await self.router.close()
        for h in self._handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # already gone with its node, or Ray already shut down
                pass
        self._handles = []

    def rows(self) -> list[dict[str, Any]]:
        return self.router.rows() if self.router else []


class RayStudent(_Pool):
    """A StudentBackend whose generate() runs on one of the cluster's replicas."""

    kind = "student"
    name = "ray"

    def __init__(self, config: Any, spec: ReplicaSpec, info: ClusterInfo, total_in_flight: int,
                 make: Callable[[], Any] | None = None):
        super().__init__()
        self.config = config
        self.spec = spec
        self.info = info
        self.total_in_flight = total_in_flight
        self._make = make

    def replica_count(self) -> int:
        return self.spec.count(self.info)

    async def start(self) -> None:
        from persd.runtime.cluster.actors import StudentReplica

        if self._make is None:
            from persd.runtime.student import create_student

            self._make = functools.partial(create_student, self.config)
        n = self.replica_count()
        bound = self.spec.in_flight or max(1, math.ceil(self.total_in_flight / n))
        options = {"num_cpus": self.spec.cpus, "num_gpus": self.spec.gpus, "max_restarts": self.spec.max_restarts,
                   "max_task_retries": 0, "scheduling_strategy": "SPREAD", "max_concurrency": max(1000, 4 * bound)}
        if self.spec.resources:
            options["resources"] = dict(self.spec.resources)
        specs = [(f"student-{i}", options, self._make, bound) for i in range(n)]
        await self._open(StudentReplica, specs, self.spec.wait_s, self.spec.start_wait_s)

    async def generate(self, request: Any) -> Any:
        assert self.router is not None, "RayStudent.generate() before start()"
        return await self.router.call("generate", request)

    async def __aenter__(self) -> "RayStudent":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _SandboxCapacity:
    """What the engine reads of a sandbox's config: how many executions it runs at once."""

    def __init__(self, total: int, timeout_s: float):
        self.total = total
        self.timeout_s = timeout_s

    def worker_count(self) -> int:
        return self.total


class RaySandbox(_Pool):
    """A Sandbox whose run() executes on one of the cluster's sandbox actors (persd's process pool)."""

    kind = "sandbox"

    def __init__(self, config: Any, spec: SandboxSpec, info: ClusterInfo):
        super().__init__()
        self.local_config = config
        self.spec = spec
        self.info = info
        self.config = _SandboxCapacity(0, config.timeout_s)

    def plan(self, skip: set[str] = frozenset()) -> list[tuple[str, int]]:
        """(node id, workers) of each sandbox actor, for the live nodes with CPUs not in `skip`."""
        plan = []
        for n in live_nodes():
            if n.cpus <= 0 or n.node_id in skip or not _has(n.resources, self.spec.resources):
                continue
            workers = self.spec.workers or max(1, int(n.cpus) * max(1, self.local_config.per_core))
            plan += [(n.node_id, workers)] * self.spec.per_node
        return plan

    def _spec(self, i: int, node: str, workers: int) -> tuple[str, dict, Callable[[], Any], int]:
        """A sandbox pinned to its node (a hard affinity: Ray places an actor that asks for no resources
        anywhere otherwise); it dies with its node, and a node that joins gets one of its own."""
        from dataclasses import replace

        from persd.runtime.sandbox import Sandbox
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options = {"num_cpus": 0, "max_restarts": self.spec.max_restarts, "max_task_retries": 0,
                   "max_concurrency": max(1000, 4 * workers),
                   "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        return (f"sandbox-{i}", options, functools.partial(Sandbox, replace(self.local_config, workers=workers)),
                workers)

    async def start(self) -> "RaySandbox":
        from persd.runtime.cluster.actors import SandboxNode

        plan = self.plan()
        if not plan:
            raise ClusterError(f"the {self.info.describe()} has no node with CPUs for the sandboxes")
        self._nodes = {node for node, _ in plan}
        self.config = _SandboxCapacity(sum(w for _, w in plan), self.local_config.timeout_s)
        await self._open(SandboxNode, [self._spec(i, *p) for i, p in enumerate(plan)], self.spec.wait_s,
                         self.spec.start_wait_s)
        self._watch = asyncio.create_task(self._watch_nodes())
        return self

    async def _watch_nodes(self) -> None:
        """Every few seconds: a node that joined the cluster gets a sandbox, which takes work once up."""
        assert self.router is not None
        while True:
            await asyncio.sleep(NODE_WATCH_S)
            try:
                plan = await asyncio.to_thread(self.plan, self._nodes)
            except Exception:  # the cluster is going away: the calls will say so
                continue
            for node, workers in plan:
                self._nodes.add(node)
                self.router.add(self._spawn(*self._spec(len(self.router.replicas), node, workers)))

    async def close(self) -> None:
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await super().close()

    async def run(self, program: str, timeout: float | None = None, cpu_limit: float | None = None) -> Any:
        assert self.router is not None, "RaySandbox.run() before start()"
        return await self.router.call("run", program, timeout, cpu_limit)

    async def __aenter__(self) -> "RaySandbox":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
