"""Sandbox limits and pool size."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class SandboxConfig:
    workers: int = 0  # 0: one per core
    timeout_s: float = 10.0  # default wall-clock limit per execution
    memory_mb: int = 2048  # RLIMIT_AS of the code under test
    max_output_bytes: int = 64 * 1024  # per stream; the rest is drained and dropped
    max_file_mb: int = 16  # RLIMIT_FSIZE
    max_procs: int = 64  # RLIMIT_NPROC (per sandbox uid)
    feedback_chars: int = 1000  # bound on the feedback text
    uid_base: int = 61000  # worker i runs code as uid/gid uid_base + i when started as root
    namespaces: bool = True  # PID/mount/network namespaces where available (a uid is dropped to regardless)

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else (os.cpu_count() or 1)
