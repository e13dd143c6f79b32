"""The sandbox: runs untrusted programs and says whether their tests ran to the end.

    async with Sandbox(SandboxConfig()) as sandbox:
        result = await sandbox.run(program, timeout=5.0)   # -> ExecResult (5 s of wall clock)
        result = await sandbox.run(program, cpu_limit=0.5)  # 0.5 s of CPU, wall backstop 5.5 s
"""
from persd.runtime.sandbox.config import SandboxConfig
from persd.runtime.sandbox.pool import Sandbox, wall_backstop
from persd.runtime.sandbox.result import STATUSES, ExecResult

__all__ = ["Sandbox", "SandboxConfig", "ExecResult", "STATUSES", "wall_backstop"]
