"""The example browser's content: the diff of the teacher's program against the student's attempt, and the
caps that keep one huge completion from making the page heavy."""
from __future__ import annotations

import difflib

MAX_TEXT = 12_000  # characters of one shown text (a prompt, an attempt, a program, a feedback)
MAX_DIFF_LINES = 400


def clip(text: str | None, limit: int = MAX_TEXT) -> str:
    text = text or ""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit:,} more characters not shown)"


def diff_lines(before: str | None, after: str | None) -> list[tuple[str, str]]:
    """(kind, line) of a unified diff from `before` to `after`; kind is add, del, hunk or ctx."""
    a = clip(before).splitlines()
    b = clip(after).splitlines()
    out: list[tuple[str, str]] = []
    for line in difflib.unified_diff(a, b, "student's attempt", "teacher's program", n=3, lineterm=""):
        if line.startswith(("---", "+++")):
            continue
        kind = "hunk" if line.startswith("@@") else "add" if line.startswith("+") else "del" if line.startswith("-") else "ctx"
        out.append((kind, line))
        if len(out) >= MAX_DIFF_LINES:
            out.append(("hunk", f"... diff cut at {MAX_DIFF_LINES} lines"))
            break
    return out
