"""A Ray cluster of several nodes on this one machine, for tests and benchmarks (ray.cluster_utils.Cluster).

    with LocalCluster(workers=[{"num_cpus": 1}, {"num_cpus": 1}]) as cluster:
        run(["persd", "collect", "--ray", cluster.address, ...])
        cluster.remove_worker(1)                    # a node dies mid-run
        cluster.add_worker({"num_cpus": 1})         # a node joins

Ray binds to the machine's primary address; run the whole thing (cluster, driver, local servers) in a
network namespace of its own with only loopback, where Ray finds 127.0.0.1 and nothing leaves the
machine: `loopback_argv([...])` wraps a command so (root, or unprivileged user namespaces, needed).
Each node gets a small object store: these clusters pass requests and results, not tensors.
"""
from __future__ import annotations

import shlex
from typing import Any

NODE_STORE_MB = 80


def loopback_argv(argv: list[str]) -> list[str]:
    """`argv` run in a new network namespace holding only an up loopback interface."""
    inner = "ip link set lo up && exec " + " ".join(shlex.quote(a) for a in argv)
    return ["unshare", "-n", "sh", "-c", inner]


class LocalCluster:
    """A head node (no CPUs by default: it schedules, it does not work) and worker nodes."""

    def __init__(self, workers: list[dict[str, Any]], head_cpus: int = 0, store_mb: int = NODE_STORE_MB):
        self.workers_args = workers
        self.head_cpus = head_cpus
        self.store_mb = store_mb
        self.cluster: Any = None
        self.nodes: list[Any] = []
        self.removed: set[int] = set()

    @property
    def address(self) -> str:
        return self.cluster.address

    def _node_args(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"object_store_memory": self.store_mb * 2**20, **args}

    def start(self) -> "LocalCluster":
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args=self._node_args(
            {"num_cpus": self.head_cpus, "include_dashboard": False}))
        for args in self.workers_args:
            self.add_worker(args)
        self.cluster.wait_for_nodes()
        return self

    def add_worker(self, args: dict[str, Any]) -> Any:
        node = self.cluster.add_node(**self._node_args(args))
        self.nodes.append(node)
        return node

    def remove_worker(self, index: int) -> None:
        """Kill worker `index`'s raylet and everything on it (a node lost mid-run)."""
        self.cluster.remove_node(self.nodes[index], allow_graceful=False)
        self.removed.add(index)

    def wait_for_nodes(self, timeout_s: float = 120.0) -> None:
        """Until Ray's node table lists exactly the nodes not removed (a removed node is declared dead once
        it misses its health checks)."""
        self.cluster.wait_for_nodes(timeout_s)

    def live_workers(self) -> list[int]:
        """The indices of the worker nodes not removed."""
        return [i for i in range(len(self.nodes)) if i not in self.removed]

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
