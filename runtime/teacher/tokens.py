"""Token estimates made before a request is sent, for the TPM limiter and the budget.

tiktoken is used where its encoding can be loaded (it downloads on first use, so offline
machines without a cache fall back); otherwise a length heuristic. Both are only estimates:
the limiter reconciles them with the server's `usage` afterwards.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

_ENCODERS: dict[str, Callable[[str], int] | None] = {}

PER_MESSAGE = 4  # role and separators, per the OpenAI cookbook
PER_REPLY = 3


def heuristic_tokens(text: str) -> int:
    """About 4 characters a token for English and code (never 0 for non-empty text)."""
    return math.ceil(len(text) / 4) if text else 0


def load_encoder(model: str) -> Callable[[str], int] | None:
    """A tiktoken counter for `model`, or None when tiktoken or its files are unavailable.

    Blocking (may touch the network once): call it from a thread. Cached per model.
    """
    if model in _ENCODERS:
        return _ENCODERS[model]
    counter = None
    if os.environ.get("PERSD_TIKTOKEN", "1") != "0":
        try:
            import tiktoken

            try:
                enc = tiktoken.encoding_for_model(model)
            except KeyError:
                enc = tiktoken.get_encoding("o200k_base")
            counter = lambda text, _enc=enc: len(_enc.encode(text, disallowed_special=()))  # noqa: E731
        except Exception:  # no tiktoken, no network, no cache: use the heuristic
            counter = None
    _ENCODERS[model] = counter
    return counter


class TokenEstimator:
    """Counts a chat request's prompt tokens; `count` is tiktoken's when loaded, else the heuristic."""

    def __init__(self, count: Callable[[str], int] | None = None):
        self.count = count or heuristic_tokens
        self.exact = count is not None

    def text_of(self, content) -> str:
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):  # content parts: [{"type": "text", "text": ...}, ...]
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return "" if content is None else str(content)

    def prompt_tokens(self, messages: Sequence[dict]) -> int:
        total = PER_REPLY
        for message in messages:
            total += PER_MESSAGE + self.count(self.text_of(message.get("content")))
            if message.get("name"):
                total += 1
        return total


async def load_encoder_async(model: str, timeout_s: float = 5.0) -> Callable[[str], int] | None:
    """`load_encoder` in a daemon thread, given up after `timeout_s` (tiktoken's download has no
    timeout of its own; a daemon thread cannot hold the process open at exit)."""
    if model in _ENCODERS:
        return _ENCODERS[model]
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def work() -> None:
        result = load_encoder(model)
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

    threading.Thread(target=work, name="persd-tiktoken", daemon=True).start()
    try:
        return await asyncio.wait_for(done, timeout_s)
    except asyncio.TimeoutError:
        return None
