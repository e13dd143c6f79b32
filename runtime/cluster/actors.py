"""What runs inside the cluster's actors: one student backend, or one process-pool sandbox, per actor.

Both start their backend on the first call (the router's ping), so an actor Ray restarts after its
node died loads its model again before it is sent work. Plain classes: pools.py makes them Ray actors,
so importing this module does not import Ray.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable


def _where() -> str:
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


class _Lazy:
    """Starts `make()`'s backend once, on the first call that needs it."""

    def __init__(self, make: Callable[[], Any]):
        self._make = make
        self._backend: Any = None
        self._lock = asyncio.Lock()

    async def backend(self) -> Any:
        if self._backend is None:
            async with self._lock:
                if self._backend is None:
                    backend = self._make()
                    await backend.start()
                    self._backend = backend
        return self._backend


class StudentReplica(_Lazy):
    """One student backend (vLLM's engine with its GPUs, hf, or an OpenAI-compatible client)."""

    async def ping(self) -> str:
        await self.backend()
        return _where()

    async def generate(self, request):
        return await (await self.backend()).generate(request)


class SandboxNode(_Lazy):
    """persd's process-pool sandbox on this actor's node."""

    async def ping(self) -> str:
        await self.backend()
        return _where()

    async def run(self, program: str, timeout: float | None = None, cpu_limit: float | None = None):
        return await (await self.backend()).run(program, timeout=timeout, cpu_limit=cpu_limit)
