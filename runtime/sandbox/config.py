"""Sandbox limits and pool size."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class SandboxConfig:
    workers: int = 0  # 0: `per_core` per core
    # Workers per core when `workers` is 0. 1 suits wall-clock limits (a busier machine stretches a
    # program's wall time); with CPU-time limits (run(cpu_limit=...)) more workers than cores cannot
    # turn a correct program into a timeout, and keep the cores busy while some programs sleep, block
    # or wait in the kernel (docs/time-limits.md, "Pool size").
    per_core: int = 1
    timeout_s: float = 10.0  # default wall-clock limit per execution
    memory_mb: int = 2048  # RLIMIT_AS of the code under test
    max_output_bytes: int = 64 * 1024  # per stream; the rest is drained and dropped
    max_file_mb: int = 16  # RLIMIT_FSIZE
    max_procs: int = 64  # RLIMIT_NPROC (per sandbox uid)
    feedback_chars: int = 1000  # bound on the feedback text
    uid_base: int = 61000  # worker i runs code as uid/gid uid_base + i when started as root
    namespaces: bool = True  # PID/mount/network namespaces where available (a uid is dropped to regardless)

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, self.per_core) * (os.cpu_count() or 1)
