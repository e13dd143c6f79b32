"""The asyncio face of the sandbox: a pool of worker processes, one execution each at a time."""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
from pathlib import Path

import orjson
from persd.runtime.errors import PersdError
from persd.runtime.sandbox.config import SandboxConfig
from persd.runtime.sandbox.result import ExecResult

log = logging.getLogger("persd.sandbox")
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
GRACE_S = 10.0  # how long past its own deadline a worker may take before it is replaced
STARVED_FACTOR = 10  # worker.py: a CPU-limited program's wall backstop, stretched by time spent waiting for a CPU


def wall_backstop(cpu_limit: float) -> float:
    """The wall-clock limit that goes with a CPU limit, for a program that sleeps or blocks (and so
    spends no CPU): 3x the CPU limit, at least 5 s more than it. The worker does not count the time
    the program waits for a CPU on a loaded machine (up to STARVED_FACTOR x this in all)."""
    return max(3.0 * cpu_limit, cpu_limit + 5.0)


class WorkerDied(Exception):
    pass


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self, index: int, config: SandboxConfig):
        self.index = index
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.protections: list[str] = []
        self.caps: dict = {}
        self._next_id = 0

    async def start(self) -> None:
        cfg = self.config
        worker_cfg = {
            "uid": cfg.uid_base + self.index,
            "memory_mb": cfg.memory_mb,
            "max_file_mb": cfg.max_file_mb,
            "max_procs": cfg.max_procs,
            "max_output_bytes": cfg.max_output_bytes,
            "feedback_chars": cfg.feedback_chars,
            "tmpfs_mb": max(64, cfg.max_file_mb * 4),
            "namespaces": cfg.namespaces,
        }
        # A fresh small interpreter (vfork+exec, so the engine's size does not matter) with an
        # environment holding nothing of the engine's: no keys, no PYTHONPATH.
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-X", "frozen_modules=on", str(WORKER_SCRIPT), orjson.dumps(worker_cfg).decode(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env=env, cwd="/", close_fds=True,
        )
        hello = await self._read()
        self.caps, self.protections = hello["caps"], hello["protections"]

    async def _read(self) -> dict:
        assert self.proc and self.proc.stdout
        try:
            head = await self.proc.stdout.readexactly(4)
            (size,) = struct.unpack(">I", head)
            return orjson.loads(await self.proc.stdout.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise WorkerDied(f"sandbox worker {self.index} died") from exc

    async def execute(self, program: str, timeout: float, cpu_limit: float | None = None) -> dict:
        assert self.proc and self.proc.stdin
        self._next_id += 1
        data = orjson.dumps({"id": self._next_id, "program": program, "timeout": timeout, "cpu_limit": cpu_limit})
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            await self.proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as exc:
            raise WorkerDied(f"sandbox worker {self.index} died") from exc
        try:
            longest = timeout * (STARVED_FACTOR if cpu_limit is not None else 1)
            reply = await asyncio.wait_for(self._read(), longest + GRACE_S)
        except asyncio.TimeoutError:
            raise WorkerDied(f"sandbox worker {self.index} stopped answering") from None
        if reply.get("id") != self._next_id:
            raise WorkerDied(f"sandbox worker {self.index} answered out of turn")
        return reply

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            await asyncio.wait_for(self.proc.wait(), 5)
        except (asyncio.TimeoutError, ConnectionError):
            self.proc.kill()
            await self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()


class Sandbox:
    """Runs programs in a pool of warm workers: `await sandbox.run(program, timeout) -> ExecResult`.

    Start it before loading anything heavy is not required (workers are fresh interpreters),
    but it is cheapest to start early. The pool survives whatever the code does and
    replaces a worker that dies.
    """

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._workers: list[_Worker] = []
        self._idle: asyncio.Queue[_Worker] | None = None
        self.protections: list[str] = []
        self.executions = 0
        self.replaced_workers = 0

    async def start(self) -> "Sandbox":
        if os.name != "posix" or not hasattr(os, "pidfd_open"):
            raise PersdError("the sandbox needs Linux (pidfd_open, fork)")
        self._idle = asyncio.Queue()
        self._workers = [_Worker(i, self.config) for i in range(self.config.worker_count())]
        await asyncio.gather(*(w.start() for w in self._workers))
        for w in self._workers:
            self._idle.put_nowait(w)
        self.protections = self._workers[0].protections
        missing = [k for k in ("pidns", "netns", "mntns") if not self._workers[0].caps.get(k)]
        if self._workers[0].caps.get("uid") is None:
            missing.append("uid drop (not root)")
        message = f"sandbox: {len(self._workers)} workers; active protections: {'; '.join(self.protections)}"
        if missing and self.config.namespaces:
            log.warning("%s. Not available here: %s", message, ", ".join(missing))
        else:
            log.info(message)
        return self

    @property
    def isolated(self) -> bool:
        caps = self._workers[0].caps if self._workers else {}
        return bool(caps.get("pidns") and caps.get("netns") and caps.get("uid") is not None)

    async def run(self, program: str, timeout: float | None = None, cpu_limit: float | None = None) -> ExecResult:
        """Run `program`. `timeout`: the wall-clock limit (default: the config's, or with `cpu_limit`
        its backstop, `wall_backstop(cpu_limit)`). `cpu_limit`: CPU seconds the program may spend;
        a loaded machine slows it on the wall clock but does not use up its CPU budget."""
        if self._idle is None:
            raise RuntimeError("Sandbox.run() before start()")
        if timeout is None:
            timeout = wall_backstop(cpu_limit) if cpu_limit is not None else self.config.timeout_s
        timeout = float(timeout)
        worker = await self._idle.get()
        try:
            reply = None
            for _attempt in range(2):  # a worker that dies is replaced and the execution retried once
                try:
                    reply = await worker.execute(program, timeout, cpu_limit)
                    break
                except WorkerDied as exc:
                    worker.kill()
                    await worker.stop()
                    self.replaced_workers += 1
                    await worker.start()
                    reply = {"status": "error", "feedback": f"{exc} (twice)", "duration_s": 0.0}
        except BaseException:
            # Cancelled mid-execution: the worker is in an unknown state; replace it.
            worker.kill()
            await worker.stop()
            asyncio.get_running_loop().create_task(self._restart(worker))
            raise
        self._idle.put_nowait(worker)
        self.executions += 1
        return ExecResult(
            status=reply["status"],
            feedback=reply.get("feedback", ""),
            duration_s=float(reply.get("duration_s", 0.0)),
            stdout=reply.get("stdout", ""),
            stderr=reply.get("stderr", ""),
            exit_code=reply.get("exit_code"),
            signal=reply.get("signal"),
            cpu_s=float(reply.get("cpu_s") or 0.0),
            limit=reply.get("limit"),
            limit_s=reply.get("limit_s"),
        )

    async def _restart(self, worker: _Worker) -> None:
        await worker.start()
        self.replaced_workers += 1
        assert self._idle is not None
        self._idle.put_nowait(worker)

    async def close(self) -> None:
        await asyncio.gather(*(w.stop() for w in self._workers), return_exceptions=True)
        self._workers = []
        self._idle = None

    async def __aenter__(self) -> "Sandbox":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()
