"""A bench's server in a child process, spoken to over the child's stdin and stdout.

Why a child: the client under test then has the event loop and the process to itself, so its wall
time and RSS are its own. The child prints its URL on the first line, then answers each line written
to its stdin with one JSON line (its counters); closing stdin stops it.
"""
from __future__ import annotations

import asyncio
import json
import sys
from typing import AsyncIterator

from persd.runtime.errors import PersdError


class ServedChild:
    """`python -m MODULE ARGS...` as a server: `url` to send to, `ask(line)` for its JSON answer."""

    def __init__(self, module: str, *args: str):
        self.argv = [sys.executable, "-m", module, *args]
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def __aenter__(self) -> "ServedChild":
        self.proc = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.PIPE,
                                                         stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode().strip()
        if not line.startswith("http"):
            raise PersdError(f"the bench server did not start: {line!r}")
        self.url = line
        return self

    async def ask(self, line: str) -> dict:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return json.loads(await self.proc.stdout.readline())

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            await self.proc.wait()


async def stdin_lines() -> AsyncIterator[str]:
    """Child side: the lines the parent writes (stripped), until it closes our stdin."""
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode().strip()
