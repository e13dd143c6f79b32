"""Fit a teacher prompt into the teacher's context instead of letting the provider refuse it.

The student's attempt and the error text are the parts that grow without bound (a long attempt, a
traceback of a deep recursion, a test printing megabytes); the task and the instructions do not.
`fit` builds the messages with the cuttable texts cut to fit `budget` tokens, each keeping its head
and its tail (where the signature and the last frame of a traceback are) around a marker that says
how much was cut. Tokens are counted with the teacher client's own estimator (tiktoken where it
loads, the same count as the TPM limiter's), over the whole messages, so the result is checked, not
guessed. A prompt whose fixed part alone is over the budget raises `TaskFailed("prompt_too_long")`
before anything is sent.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from persd.engine.failures import TaskFailed

CountMessages = Callable[[list[dict]], int]
MARKER = "\n... [{n} characters cut by persd to fit the teacher's context] ...\n"


def budget_for(context_tokens: int | None, max_tokens: int | None, default_reply: int = 1024) -> int | None:
    """Prompt tokens allowed: the context less the tokens asked for the answer (`default_reply` where no
    max_tokens is sent, as the client assumes for its limiter). None: no limit known."""
    if not context_tokens:
        return None
    return context_tokens - (max_tokens or min(default_reply, context_tokens // 4))


def cut(text: str, keep_chars: int) -> str:
    """`text` with its middle replaced by the marker, keeping `keep_chars` characters (60% head, 40% tail)."""
    if keep_chars >= len(text):
        return text
    keep_chars = max(0, keep_chars)
    head = keep_chars * 3 // 5
    tail = keep_chars - head
    return text[:head] + MARKER.format(n=len(text) - keep_chars) + (text[len(text) - tail:] if tail else "")


def fit(build: Callable[..., list[dict]], texts: Sequence[str], budget: int | None, count: CountMessages,
        what: str = "the teacher's prompt") -> tuple[list[dict], int]:
    """(messages built from `texts` cut as needed to fit `budget` tokens, characters cut in all)."""
    messages = build(*texts)
    if budget is None or count(messages) <= budget:
        return messages, 0
    fixed = count(build(*("" for _ in texts)))
    if fixed > budget:
        raise TaskFailed("prompt_too_long", f"{what} needs {fixed} tokens without the student's attempt and the "
                         f"error text, over the {budget} the teacher's context leaves for it", "teacher")
    # keep a share of characters per text, shrunk until the count fits (each step is one exact count)
    total = sum(len(t) for t in texts)
    lo, hi = 0, total  # characters kept in all: lo fits (nothing kept fits, as fixed <= budget)
    best = [cut(t, 0) for t in texts]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = [cut(t, keep) for t, keep in zip(texts, _shares(texts, mid))]
        if count(build(*trial)) <= budget:
            lo, best = mid, trial
        else:
            hi = mid - 1
    if count(build(*best)) > budget:  # the markers themselves do not fit
        raise TaskFailed("prompt_too_long", f"{what} cannot fit the {budget} tokens the teacher's context leaves "
                         f"for it, even with the attempt and the error cut", "teacher")
    return build(*best), total - lo


def _shares(texts: Sequence[str], keep: int) -> list[int]:
    """Split `keep` characters over the texts: short ones whole, the rest evenly (water filling)."""
    left = list(range(len(texts)))
    out = [0] * len(texts)
    for i in sorted(left, key=lambda i: len(texts[i])):
        share = keep // len(left)
        out[i] = min(len(texts[i]), share)
        keep -= out[i]
        left.remove(i)
    return out
