"""The request and answer the engine exchanges with the teacher."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

INCOMPLETE_REASONS = ("length", "content_filter")


@dataclass
class ChatRequest:
    """One chat completion. `sample_index` keeps independent samples of one prompt distinct
    in the journal (temperature > 0 still caches); `extra` is merged into the payload as is."""

    messages: list[dict]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    sample_index: int = 0
    model: str | None = None  # overrides TeacherConfig.model for this request
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self, model: str) -> dict:
        body: dict[str, Any] = {"model": model, "messages": self.messages}
        for name in ("temperature", "top_p", "max_tokens", "stop", "seed"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.n != 1:
            body["n"] = self.n
        body.update(self.extra)
        return body

    def key(self, model: str) -> str:
        """Journal key: a hash of model, messages, sampling parameters and sample index."""
        material = {"payload": self.payload(model), "sample_index": self.sample_index}
        return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class ChatResponse:
    """The teacher's answer. `finish_reasons` is reported as is: `length` and `content_filter`
    mean the text is incomplete (see `incomplete`). `cached` is True when answered from the
    journal or from an identical request already in flight, i.e. no call was paid for."""

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cached: bool = False
    model: str = ""
    key: str = ""
    repaired: list[str] = field(default_factory=list)  # kinds of bad text replaced by U+FFFD (http.decode_json)

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def incomplete(self) -> bool:
        return any(r in INCOMPLETE_REASONS for r in self.finish_reasons)

    @property
    def filtered(self) -> bool:
        """Every choice was stopped by the provider's content filter: nothing usable came back."""
        return bool(self.finish_reasons) and all(r == "content_filter" for r in self.finish_reasons)

    def to_record(self) -> dict:
        record = {"texts": self.texts, "finish_reasons": self.finish_reasons, "model": self.model,
                  "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                  "cost_usd": self.cost_usd}
        if self.repaired:
            record["repaired"] = self.repaired
        return record

    @classmethod
    def from_record(cls, key: str, record: dict, cached: bool) -> "ChatResponse":
        return cls(texts=list(record["texts"]), finish_reasons=list(record["finish_reasons"]),
                   prompt_tokens=int(record["prompt_tokens"]), completion_tokens=int(record["completion_tokens"]),
                   cost_usd=float(record["cost_usd"]), cached=cached, model=record.get("model", ""), key=key,
                   repaired=list(record.get("repaired") or []))
