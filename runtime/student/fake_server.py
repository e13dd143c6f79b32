"""A scripted OpenAI-compatible server on 127.0.0.1, for tests and the client benchmark.

Answers `/v1/completions` and `/v1/chat/completions` at once with `n` choices from a
reply function; can fail the first requests with a given status (to exercise retries)
and can hold requests until `barrier` of them are in flight together (to prove a client
really sends concurrently, with no timing involved). Run standalone for benchmarks:
`python -m persd.runtime.student.fake_server --port 0` prints `READY <base url>` once it listens.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

Reply = Callable[[dict[str, Any], int], str]  # (request payload, choice index) -> text


def default_reply(payload: dict[str, Any], index: int) -> str:
    return "    return 0\n" if "prompt" in payload else "```python\ndef f():\n    return 0\n```"


@dataclass
class FakeOpenAIServer:
    reply: Reply = default_reply
    model: str = "fake-model"
    fail_first: int = 0  # answer the first k POSTs with fail_status
    fail_status: int = 503
    barrier: int | None = None  # hold each POST until this many are in flight at once
    barrier_timeout_s: float = 30.0
    record: bool = True
    requests: list[dict[str, Any]] = field(default_factory=list)
    posts: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    url: str = ""

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.url = f"http://{host}:{sock.getsockname()[1]}/v1"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "FakeOpenAIServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _completions(self, request: web.Request) -> web.Response:
        return await self._answer(request, chat=False)

    async def _chat(self, request: web.Request) -> web.Response:
        return await self._answer(request, chat=True)

    async def _answer(self, request: web.Request, chat: bool) -> web.Response:
        self.posts += 1
        if self.posts <= self.fail_first:
            return web.Response(status=self.fail_status, text='{"error": "scripted failure"}')
        payload = orjson.loads(await request.read())
        if self.record:
            self.requests.append(payload)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.barrier is not None:
                if self.in_flight >= self.barrier:
                    self._released.set()
                try:
                    await asyncio.wait_for(self._released.wait(), self.barrier_timeout_s)
                except asyncio.TimeoutError:
                    return web.Response(status=400, text=f'{{"error": "barrier of {self.barrier} never reached"}}')
            n = int(payload.get("n", 1))
            texts = [self.reply(payload, i) for i in range(n)]
            prompt = payload.get("prompt") if not chat else " ".join(m["content"] for m in payload["messages"])
            if chat:
                choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                           for i, t in enumerate(texts)]
            else:
                choices = [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]
            usage = {"prompt_tokens": len(str(prompt).split()),
                     "completion_tokens": sum(len(t.split()) for t in texts)}
            return _json({"id": f"cmpl-{self.posts}", "object": "chat.completion" if chat else "text_completion",
                          "model": payload.get("model", self.model), "choices": choices, "usage": usage})
        finally:
            self.in_flight -= 1


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


async def _serve(port: int) -> None:
    server = FakeOpenAIServer(record=False)
    url = await server.start(port=port)
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
