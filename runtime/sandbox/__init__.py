"""The sandbox: runs untrusted programs and says whether their tests ran to the end.

    async with Sandbox(SandboxConfig()) as sandbox:
        result = await sandbox.run(program, timeout=5.0)   # -> ExecResult
"""
from persd.runtime.sandbox.config import SandboxConfig
from persd.runtime.sandbox.result import STATUSES, ExecResult
from persd.runtime.sandbox.pool import Sandbox

__all__ = ["Sandbox", "SandboxConfig", "ExecResult", "STATUSES"]
