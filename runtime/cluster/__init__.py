"""The student replicas and sandboxes of a Ray cluster, behind the same async interfaces as the local ones.

    info = connect("auto")                                   # or "local", "HOST:PORT"
    student = RayStudent(StudentConfig(...), ReplicaSpec(replicas=2, cpus=1))
    sandbox = RaySandbox(SandboxConfig(...), SandboxSpec())  # one actor per node, sized to its CPUs
    async with sandbox, student:
        out = await student.generate(request)                # sent to the replica with the fewest in flight
        result = await sandbox.run(program, cpu_limit=1.0)

The caller stays the one driver: it awaits Ray's object refs in its own event loop (no thread per
request). A replica that dies mid-request has its requests sent again to a surviving one; Ray restarts
it where the cluster has room and it takes work again once it answers. Importing this package does not
import Ray: `connect` does, and says so in one sentence where Ray is not installed.
"""
from persd.runtime.cluster.connect import ClusterError, ClusterInfo, connect, disconnect, ray_installed
from persd.runtime.cluster.pools import RaySandbox, RayStudent, ReplicaSpec, SandboxSpec
from persd.runtime.cluster.router import NoReplicaLeft, ReplicaStats

__all__ = ["ClusterError", "ClusterInfo", "connect", "disconnect", "ray_installed", "RaySandbox", "RayStudent",
           "ReplicaSpec", "SandboxSpec", "NoReplicaLeft", "ReplicaStats"]
