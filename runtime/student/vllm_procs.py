"""vLLM's engine processes, owned by the vllm backend from start to close: nothing outlives persd.

vLLM spawns an engine core process, which spawns a worker; they talk through POSIX shared memory
(/dev/shm/psm_*). Three things go wrong on their own:

- Ctrl-C in a terminal reaches the whole process group: vLLM's processes shut themselves down while
  persd is still letting in-flight tasks finish, and those tasks then fail ("engine died"). So the
  engine core is spawned in a process group of its own (`spawned_apart`), and persd alone decides
  when it stops (SIGTERM on close; the kernel sends SIGTERM too if persd dies).
- The engine start blocks for a minute or more; built in a thread, persd's event loop stays free to
  see Ctrl-C, and an interrupted start terminates the half-started processes.
- vLLM's shutdown force-kills a slow engine core, whose shared-memory segments then stay in /dev/shm
  until the resource tracker notices (or forever, when it is killed too). `EngineProcesses.reap`
  kills what is left of persd's engine processes and unlinks the segments they had mapped.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

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


@contextlib.contextmanager
def spawned_apart() -> Iterator[None]:
    """For the duration, multiprocessing's spawn starts each child through a tiny shell script that puts it
    in a process group of its own (a terminal's Ctrl-C signals only the foreground group: persd) and has
    the kernel send it SIGTERM when the thread that spawned it ends (persd killed), then execs the real
    Python, same pid. (A blocked SIGINT would not do: Python's spawn unblocks signals in the child, and
    vLLM installs its own SIGINT handlers.)"""
    from multiprocessing import spawn

    old = spawn.get_executable()
    folder = Path(tempfile.mkdtemp(prefix="persd-spawn-"))
    script = folder / "python"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(os.fsdecode(old))} -S -c {shlex.quote(_APART)} \"$@\"\n")
    script.chmod(0o755)
    spawn.set_executable(str(script))
    try:
        yield
    finally:
        spawn.set_executable(old)
        shutil.rmtree(folder, ignore_errors=True)


_APART = """\
import ctypes, os, signal, sys
os.setpgid(0, 0)
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
except (AttributeError, OSError):
    pass
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


@dataclass
class EngineThread:
    """The thread that built the engine stays alive until `release()`: the engine core's parent-death
    signal is tied to it."""

    thread: threading.Thread
    done: threading.Event

    def release(self) -> None:
        self.done.set()


async def build_in_thread(build: Callable[[], Any]) -> tuple[Any, EngineProcesses, EngineThread]:
    """Run `build` (vLLM's blocking engine start) in a thread, its processes spawned apart (above), so the
    event loop stays free to see Ctrl-C. If this coroutine is cancelled (Ctrl-C reaches persd), the
    processes started so far are terminated and the thread is awaited before the cancellation goes on."""
    loop = asyncio.get_running_loop()
    built: asyncio.Future = loop.create_future()
    before = child_pids()
    done = threading.Event()

    def settle(result: Any, error: BaseException | None) -> None:
        if built.cancelled():
            return
        if error is not None:
            built.set_exception(error)
        else:
            built.set_result(result)

    def target() -> None:
        asyncio.set_event_loop(loop)  # vLLM's asyncio ZMQ sockets belong to persd's loop
        try:
            with spawned_apart():
                result, error = build(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        loop.call_soon_threadsafe(settle, result, error)
        done.wait()

    handle = EngineThread(threading.Thread(target=target, name="persd-vllm-engine", daemon=True), done)
    handle.thread.start()
    try:
        engine = await asyncio.shield(built)
    except asyncio.CancelledError:
        EngineProcesses.since(before).reap()  # the half-started engine dies; the build then fails
        while not built.done():
            await asyncio.sleep(0.05)  # the build returns once its processes are gone
        handle.release()
        if not built.cancelled() and built.exception() is None:
            with contextlib.suppress(Exception):
                built.result().shutdown()
        raise
    except BaseException:
        handle.release()
        raise
    return engine, EngineProcesses.since(before), handle


__all__ = ["EngineProcesses", "EngineThread", "build_in_thread", "child_pids", "mapped_shm", "spawned_apart"]
