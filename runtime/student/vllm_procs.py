"""vLLM's engine processes, owned by the vllm backend from start to close: nothing outlives persd.

vLLM spawns an engine core process, which spawns a worker; they talk through POSIX shared memory
(/dev/shm/psm_*). Three things go wrong on their own:

- Ctrl-C in a terminal reaches the whole process group: vLLM's processes shut themselves down while
  persd is still letting in-flight tasks finish, and those tasks then fail ("engine died"). So the
  engine is built in a thread that blocks SIGINT: the processes it spawns inherit the blocked signal,
  and persd alone decides when they stop (it still stops them with SIGTERM on close).
- The engine start blocks for a minute or more; built in a thread, persd's event loop stays free to
  see Ctrl-C, and an interrupted start terminates the half-started processes.
- vLLM's shutdown force-kills a slow engine core, whose shared-memory segments then stay in /dev/shm
  until the resource tracker notices (or forever, when it is killed too). `EngineProcesses.reap`
  kills what is left of persd's engine processes and unlinks the segments they had mapped.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

SHM_DIR = Path("/dev/shm")


def child_pids() -> set[int]:
    """This process's descendants that are vLLM's (multiprocessing-spawned, titled VLLM::...), not the
    sandbox's workers nor multiprocessing's resource tracker (which cleans up after them)."""
    import psutil

    pids = set()
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(p.cmdline())
                if "VLLM::" in cmd or "multiprocessing.spawn" in cmd or p.name().startswith("VLLM"):
                    pids.add(p.pid)
    return pids


def mapped_shm(pids: set[int]) -> set[str]:
    """Names of /dev/shm files these processes have mapped (from /proc/PID/maps)."""
    names: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                if path.startswith(f"{SHM_DIR}/"):
                    names.add(path[len(str(SHM_DIR)) + 1:].removesuffix(" (deleted)"))
    return names


@dataclass
class EngineProcesses:
    """The processes one engine start spawned, and the shared memory they mapped."""

    pids: set[int] = field(default_factory=set)
    shm: set[str] = field(default_factory=set)

    @classmethod
    def since(cls, before: set[int]) -> "EngineProcesses":
        pids = child_pids() - before
        return cls(pids, mapped_shm(pids))

    def reap(self, grace_s: float = 10.0) -> None:
        """Terminate (then kill) whichever of the processes still run; unlink their leftover segments."""
        import psutil

        procs = []
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=grace_s)
        for name in self.shm:
            with contextlib.suppress(OSError):
                (SHM_DIR / name).unlink()


async def build_in_thread(build: Callable[[], Any]) -> tuple[Any, EngineProcesses]:
    """Run `build` (vLLM's blocking engine start) in a thread with SIGINT blocked, so the processes it
    spawns ignore a terminal's Ctrl-C. If this coroutine is cancelled (Ctrl-C reaches persd), the
    processes started so far are terminated and the thread is awaited before the cancellation goes on."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    before = child_pids()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def target() -> None:
        asyncio.set_event_loop(loop)  # vLLM's asyncio ZMQ sockets belong to persd's loop
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            result, error = build(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        loop.call_soon_threadsafe(settle, result, error)

    thread = threading.Thread(target=target, name="persd-vllm-start", daemon=True)
    thread.start()
    try:
        engine = await asyncio.shield(done)
    except asyncio.CancelledError:
        EngineProcesses.since(before).reap()  # the half-started engine dies; the thread then returns
        await asyncio.to_thread(thread.join)
        if done.done() and not done.cancelled() and done.exception() is None:
            with contextlib.suppress(Exception):
                done.result().shutdown()
        raise
    return engine, EngineProcesses.since(before)


__all__ = ["EngineProcesses", "build_in_thread", "child_pids", "mapped_shm"]
