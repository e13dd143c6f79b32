"""Durable teacher answers: an append-only orjson-lines file, fsync'd in small groups.

`append` returns only once the record's line is on disk, so an answer handed to the engine
survives `kill -9`. Concurrent appends share one write + fsync (group commit), run in a
worker thread so the event loop keeps pacing. On open, a torn last line (a crash mid-write)
is cut off; any other unreadable line is skipped and counted. Last record for a key wins.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson


class Journal:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.index: dict[str, dict] = {}
        self.skipped_lines = 0
        self.torn_tail = False
        self._fd: int | None = None
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self.groups = 0

    def open(self) -> "Journal":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return self

    def _load(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:  # no newline: a torn last line; drop it so the next append starts clean
                self.torn_tail = True
                break
            line = data[pos:nl]
            pos = nl + 1
            good_end = pos
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                self.index[record["key"]] = record["response"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.skipped_lines += 1
        if good_end < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good_end)
                fh.flush()
                os.fsync(fh.fileno())

    def get(self, key: str) -> dict | None:
        return self.index.get(key)

    def __len__(self) -> int:
        return len(self.index)

    async def append(self, key: str, response: dict) -> None:
        """Write one record; returns once it is fsync'd."""
        if self._fd is None:
            raise RuntimeError("journal is not open")
        line = orjson.dumps({"key": key, "response": response}) + b"\n"
        future = asyncio.get_running_loop().create_future()
        self._pending.append((line, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await asyncio.shield(future)
        self.index[key] = response

    async def _drain(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, b"".join(line for line, _ in group))
            except BaseException as exc:  # report the failure to every writer of the group
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else OSError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            self.groups += 1
            for _, future in group:
                if not future.done():
                    future.set_result(None)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
