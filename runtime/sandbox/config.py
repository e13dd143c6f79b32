"""Sandbox limits and pool size (commands nest this config as their `sandbox` section: --sandbox.workers)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from persd.runtime.errors import ConfigError
from persd.runtime.options import nonneg_int, opt, positive_float, positive_int


@dataclass
class SandboxConfig:
    workers: int = opt(0, help="sandbox processes", changes_results=False, type=nonneg_int,
                       shown="two per core with calibrated time limits, one with fixed")
    # Workers per core when `workers` is 0. 1 suits wall-clock limits (a busier machine stretches a
    # program's wall time); with CPU-time limits (run(cpu_limit=...)) more workers than cores cannot
    # turn a correct program into a timeout, and keep the cores busy while some programs sleep, block
    # or wait in the kernel (docs/time-limits.md, "Pool size").
    per_core: int = opt(1, help="workers per core when workers is 0 (set from the time-limit mode)",
                        changes_results=False, cli=False)
    timeout_s: float = opt(10.0, help="seconds per execution: the wall-clock limit of a task without a reference, "
                           "the most CPU time a calibrated one gets", changes_results=True, type=positive_float)
    memory_mb: int = opt(2048, help="address-space limit (MB) of the code under test", changes_results=True,
                         type=positive_int)
    max_output_bytes: int = opt(64 * 1024, help="bytes kept per output stream (the rest is drained and dropped)",
                                changes_results=True, type=positive_int)
    max_file_mb: int = opt(16, help="largest file (MB) the code under test may write", changes_results=True,
                           type=positive_int)
    max_procs: int = opt(64, help="processes the code under test may run (per sandbox uid)", changes_results=True,
                         type=positive_int)
    feedback_chars: int = opt(1000, help="bound on the execution feedback text", changes_results=True,
                              type=positive_int)
    uid_base: int = opt(61000, help="worker i runs code as uid/gid uid_base + i when started as root",
                        changes_results=False, type=positive_int)
    namespaces: bool = opt(True, help="PID/mount/network namespaces where available (a uid is dropped to "
                           "regardless)", changes_results=False)

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError("workers", f"must not be negative, got {self.workers}", "sandbox")
        if not self.timeout_s > 0:
            raise ConfigError("timeout_s", f"must be positive, got {self.timeout_s}", "sandbox")

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, self.per_core) * (os.cpu_count() or 1)
