"""`--ray [ADDRESS]`: the one place where collect and eval choose the Ray cluster's student and sandbox.

Without --ray nothing here runs and the local backends open as before. With it, the driver (this
process: manifest, journal, shards, teacher client and budget) joins the cluster first, checks that one
student replica fits before anything starts (a wrong address, a missing GPU, Ray not installed: exit 2),
then opens a RaySandbox (one actor per node) and a RayStudent (replicas spread over the nodes) in place
of the local Sandbox and student. docs/cluster.md.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator

from persd.config import nonneg_float, nonneg_int, opt, positive_float
from persd.runtime.errors import ConfigError, UsageError

log = logging.getLogger("persd.cluster")


@dataclass
class RayFields:
    """The cluster options collect and eval share (none changes results: a replica runs the same backend)."""

    ray: str | None = opt("", help="run the student replicas and the sandboxes on a Ray cluster: auto joins the "
                          "cluster this node belongs to, HOST:PORT a head node's address; given alone, it joins this "
                          "machine's cluster or starts one (docs/cluster.md)", changes_results=False, nargs="?",
                          metavar="ADDRESS", group="ray cluster", shown="off: everything on this machine")
    ray_student_replicas: int = opt(0, help="student replicas on the cluster", changes_results=False,
                                    type=nonneg_int, group="ray cluster",
                                    shown="vllm: the cluster's GPUs / GPUs per replica; else one per node")
    ray_student_gpus: float | None = opt(None, help="GPUs per student replica", changes_results=False,
                                         type=nonneg_float, group="ray cluster",
                                         shown="vllm: its tensor parallel size; else 0")
    ray_student_cpus: float = opt(1.0, help="CPUs per student replica", changes_results=False, type=nonneg_float,
                                  group="ray cluster")
    ray_replica_in_flight: int = opt(0, help="student requests in flight per replica", changes_results=False,
                                     type=nonneg_int, group="ray cluster",
                                     shown="the student concurrency / replicas")
    ray_wait: float = opt(60.0, help="seconds the run goes on with no student or sandbox replica up (Ray restarting "
                          "them) before it stops; rerun to resume", changes_results=False, type=positive_float,
                          group="ray cluster")

    def ray_address(self) -> str:
        return "local" if self.ray is None else (self.ray or "")

    def check_ray(self) -> None:
        """Before anything starts: Ray is installed when --ray is given; the Ray-only options go with --ray."""
        if not self.ray_address():
            return
        from persd.runtime.cluster import ray_installed

        if not ray_installed():
            raise ConfigError("ray", "Ray is not installed in this environment (pip install 'persd[ray]')")


@dataclass
class Cluster:
    """A joined cluster and what the run asks of it."""

    address: str
    info: Any  # runtime.cluster.ClusterInfo
    student: Any  # runtime.cluster.ReplicaSpec
    sandbox: Any  # runtime.cluster.SandboxSpec


def replica_spec(cfg: Any) -> Any:
    from persd.runtime.cluster import ReplicaSpec

    backend = cfg.resolved_student_backend()
    gpus = cfg.ray_student_gpus
    if gpus is None:
        gpus = float(cfg.student.tensor_parallel_size) if backend == "vllm" else 0.0
    return ReplicaSpec(replicas=cfg.ray_student_replicas, cpus=cfg.ray_student_cpus, gpus=gpus,
                       in_flight=cfg.ray_replica_in_flight, wait_s=cfg.ray_wait)


@contextlib.asynccontextmanager
async def open_cluster(cfg: Any) -> AsyncIterator[Cluster | None]:
    """Join the cluster --ray names (None without --ray); a cluster that cannot serve the run is a
    UsageError naming the flag, raised before any actor starts."""
    address = cfg.ray_address() if hasattr(cfg, "ray_address") else ""
    if not address:
        yield None
        return
    from persd.runtime.cluster import ClusterError, SandboxSpec, connect, disconnect

    shown = "" if cfg.ray is None else f" {cfg.ray}"
    try:
        info = connect(address)
    except ClusterError as exc:
        raise UsageError(f"--ray{shown}: {exc}") from None
    try:
        spec = replica_spec(cfg)
        try:
            spec.check(info)
        except ClusterError as exc:
            flag = "--ray-student-gpus" if spec.gpus > 0 and info.gpus < spec.gpus else "--ray-student-cpus"
            raise UsageError(f"{flag}: {exc}") from None
        cluster = Cluster(address, info, spec, SandboxSpec(workers=cfg.sandbox.workers, wait_s=cfg.ray_wait))
        print(f"persd: {info.describe()}: {spec.count(info)} student replica(s) of {spec.cpus:g} CPU and "
              f"{spec.gpus:g} GPU each", file=sys.stderr, flush=True)
        yield cluster
    finally:
        disconnect()


def sandbox_for(cluster: Cluster | None, config: Any) -> Any:
    """The local process-pool Sandbox, or its Ray twin (one actor per node) on a cluster."""
    if cluster is None:
        from persd.runtime.sandbox import Sandbox

        return Sandbox(config)
    from persd.runtime.cluster import RaySandbox

    return RaySandbox(config, cluster.sandbox, cluster.info)


def student_for(cluster: Cluster | None, config: Any, total_in_flight: int) -> Any:
    """The local student backend, or Ray replicas of it on a cluster (vLLM's log stays on its node)."""
    from persd.runtime.student import create_student

    if cluster is None:
        return create_student(config)
    from persd.runtime.cluster import RayStudent

    return RayStudent(replace(config, log_path=None), cluster.student, cluster.info, total_in_flight)


def replica_rows(backends: Any) -> dict[str, list[dict]]:
    """Per-replica figures of a Ray run (in flight, done, rate, restarts), for the snapshot; {} locally."""
    out = {}
    for kind in ("student", "sandbox"):
        rows = getattr(getattr(backends, kind, None), "rows", None)
        if callable(rows):
            out[kind] = rows()
    return {"replicas": out} if out else {}


def utilisation(replicas: dict[str, list[dict]]) -> dict[str, float]:
    """Per pool: the slots replicas kept busy over the slots they offered while up (1.0: always full)."""
    out = {}
    for kind, rows in replicas.items():
        offered = sum(r.get("bound", 0) * r.get("up_s", 0.0) for r in rows)
        busy = sum(r.get("busy_slot_s", 0.0) for r in rows)
        if offered > 0:
            out[kind] = round(min(1.0, busy / offered), 4)
    return out
