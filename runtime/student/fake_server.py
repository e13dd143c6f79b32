"""The local OpenAI-compatible server (runtime/teacher/local_server.py) set up as a scripted student.

Answers `/v1/completions` and `/v1/chat/completions` at once with `n` choices from a reply function
`reply(payload, choice_index) -> text`; can fail the first requests with a given status (the fault plan's
script, to exercise retries) and can hold requests until `barrier` of them are in flight together (to prove
a client really sends concurrently, with no timing involved). One server implementation serves the
tests, the benchmarks and collect's offline stand-in teacher; this module only fixes its settings.
Run standalone for benchmarks: `python -m persd.runtime.student.fake_server --port 0` prints
`READY <base url>` once it listens.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web
from persd.runtime.teacher.local_server import FaultPlan, LocalOpenAIServer, _json

Reply = Callable[[dict[str, Any], int], str]  # (request payload, choice index) -> text


def default_reply(payload: dict[str, Any], index: int) -> str:
    return "    return 0\n" if "prompt" in payload else "```python\ndef f():\n    return 0\n```"


def _words(text: str) -> int:
    return len(str(text).split())


class FakeOpenAIServer(LocalOpenAIServer):
    """A scripted student server: no rate limits, no headers, answers never cut, usage counted in words."""

    def __init__(self, reply: Reply = default_reply, model: str = "fake-model", fail_first: int = 0,
                 fail_status: int = 503, barrier: int | None = None, barrier_timeout_s: float = 30.0,
                 record: bool = True, port: int = 0):
        super().__init__(reply, faults=FaultPlan(script=[str(fail_status)] * fail_first), ratelimit_headers=False,
                         count_tokens=_words, reply_per_choice=True, truncate=False, barrier=barrier,
                         barrier_timeout_s=barrier_timeout_s, record=record, port=port)
        self.model = model

    @property
    def requests(self) -> list[dict]:
        """The payloads of the requests it answered or is answering (not those its script failed)."""
        return [a.body for a in self.log if a.body and a.fault in ("ok", "slow")]

    @property
    def in_flight(self) -> int:
        return self.busy

    @property
    def peak_in_flight(self) -> int:
        return self.peak_busy

    async def close(self) -> None:
        await self.stop()

    async def _models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{"id": self.model, "object": "model"}]})


async def _serve(port: int) -> None:
    server = FakeOpenAIServer(record=False, port=port)
    url = await server.start()
    print(f"READY {url}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="an instant OpenAI-compatible server for benchmarks")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(_serve(args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
