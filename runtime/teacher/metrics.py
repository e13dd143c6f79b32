"""Counters for the progress display: what was sent, retried, refused, spent, and the pace now."""
from __future__ import annotations

import time
from collections import Counter, deque


class TeacherMetrics:
    """`snapshot()` is cheap and JSON-ready; rpm_now / tpm_now cover the last `window_s` seconds."""

    def __init__(self, rpm_limit: float, tpm_limit: float | None, window_s: float = 60.0):
        self.window_s = window_s
        self.requests = 0          # answers received from the server (not cached)
        self.attempts = 0          # sends, including retries
        self.retries_by_cause: Counter[str] = Counter()
        self.http_429 = 0
        self.http_429_own = 0      # of which said this client was over its budget (paused everyone)
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost_usd = 0.0
        self.cost_unconfirmed_usd = 0.0
        self.cached_hits = 0
        self.in_flight = 0
        self.failures = 0
        self.budget_refusals = 0
        self.finish_reasons: Counter[str] = Counter()
        self.mode = "sync"  # "batch": answers through the Batch API, at batch prices
        self.batch_submitted = 0  # batch mode: request lines in uploaded batch files (each resubmission counted)
        self.batch_files = 0
        self.batches_open = 0  # batches submitted (or re-attached) and not yet ended
        self.rpm_limit, self.tpm_limit = rpm_limit, tpm_limit
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) per answered request
        self.started = time.monotonic()

    def record_answer(self, prompt_tokens: int, completion_tokens: int, cost: float,
                      finish_reasons: list[str]) -> None:
        self.requests += 1
        self.tokens_in += prompt_tokens
        self.tokens_out += completion_tokens
        self.cost_usd += cost
        self.finish_reasons.update(finish_reasons)
        self._recent.append((time.monotonic(), prompt_tokens + completion_tokens))

    def record_retry(self, cause: str) -> None:
        self.retries_by_cause[cause] += 1

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()

    def snapshot(self) -> dict:
        now = time.monotonic()
        self._trim(now)
        span = min(self.window_s, max(now - self.started, 1e-9))
        scale = 60.0 / span
        return {
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": sum(self.retries_by_cause.values()),
            "retries_by_cause": dict(self.retries_by_cause),
            "http_429": self.http_429,
            "http_429_own": self.http_429_own,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": round(self.cost_usd, 6),
            "mode": self.mode,
            # spend apart by how it was bought (one of them is 0 in a run; partitions and runs add up)
            "cost_usd_sync": round(self.cost_usd, 6) if self.mode == "sync" else 0.0,
            "cost_usd_batch": round(self.cost_usd, 6) if self.mode == "batch" else 0.0,
            "cost_unconfirmed_usd": round(self.cost_unconfirmed_usd, 6),
            "rpm_now": round(len(self._recent) * scale, 1),
            "rpm_limit": self.rpm_limit,
            "tpm_now": round(sum(t for _, t in self._recent) * scale, 1),
            "tpm_limit": self.tpm_limit,
            "cached_hits": self.cached_hits,
            "in_flight": self.in_flight,
            "failures": self.failures,
            "budget_refusals": self.budget_refusals,
            "finish_reasons": dict(self.finish_reasons),
            **({"batch_submitted": self.batch_submitted, "batch_files": self.batch_files,
                "batches_open": self.batches_open} if self.mode == "batch" else {}),
        }
