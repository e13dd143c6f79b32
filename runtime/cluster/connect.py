"""Joining (or starting) a Ray cluster, with one sentence for each way it can fail.

`address`: "local" joins the cluster this machine already runs (RAY_ADDRESS, or the latest one started
here) or starts a small one in this process's session; "auto" joins the one this node belongs to and
fails where there is none; "HOST:PORT" (a head node's GCS address) is checked for a listener first, so a
wrong address fails in seconds rather than after Ray's own long retries.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import socket
from dataclasses import dataclass, field

from persd.runtime.errors import PersdError

log = logging.getLogger("persd.cluster")
CONNECT_TIMEOUT_S = 5.0


class ClusterError(PersdError):
    """The cluster cannot be used as asked (not installed, unreachable, lacking resources): a setting to fix."""


@dataclass
class NodeInfo:
    node_id: str
    host: str
    cpus: float
    gpus: float
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class ClusterInfo:
    address: str
    nodes: list[NodeInfo]

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    def describe(self) -> str:
        return (f"Ray cluster {self.address}: {len(self.nodes)} node(s), {self.cpus:g} CPU(s), "
                f"{self.gpus:g} GPU(s)")


def ray_installed() -> bool:
    """Whether Ray can be imported here (imported, not only found: a broken install counts as none)."""
    if importlib.util.find_spec("ray") is None:
        return False
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _check_listener(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"{address!r} is not a Ray address (expected HOST:PORT, 'auto' or 'local')")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} ({exc.strerror or exc})") from None


def connect(address: str, object_store_mb: int | None = None) -> ClusterInfo:
    """Join the cluster at `address` (see the module's docstring); returns its live nodes."""
    if not ray_installed():
        raise ClusterError("Ray is not installed (pip install 'persd[ray]')")
    import ray

    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": False, "ignore_reinit_error": True,
                    "configure_logging": False}
    if address == "local":
        if not os.environ.get("RAY_ADDRESS"):
            kwargs.update(include_dashboard=False)
            if object_store_mb:
                kwargs["object_store_memory"] = object_store_mb * 2**20
    elif address == "auto":
        kwargs["address"] = "auto"
    elif address.startswith("ray://"):
        kwargs["address"] = address
    else:
        _check_listener(address)
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"cannot join the Ray cluster ({first})") from None
    return ClusterInfo(address=ray.get_runtime_context().gcs_address, nodes=live_nodes())


def live_nodes() -> list[NodeInfo]:
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = dict(n.get("Resources") or {})
        nodes.append(NodeInfo(node_id=n["NodeID"], host=n.get("NodeManagerAddress", ""), cpus=res.get("CPU", 0.0),
                              gpus=res.get("GPU", 0.0), resources=res))
    return nodes


def disconnect() -> None:
    if ray_installed():
        import ray

        if ray.is_initialized():
            ray.shutdown()
