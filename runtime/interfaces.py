"""The three resources the engine drives, as the engine sees them: one method each.

Any object with these methods is a backend (the real ones in runtime/student, runtime/sandbox and
runtime/teacher; the in-process ones of bench/instant.py and the tests). Opening and closing them is
the opener's business (`async with`), not the pipeline's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from persd.runtime.sandbox.result import ExecResult
    from persd.runtime.student.base import StudentOutput, StudentRequest
    from persd.runtime.teacher.types import ChatRequest, ChatResponse


@runtime_checkable
class Student(Protocol):
    """`n` completions of one prompt or chat. Raises `RequestRejected` for a request that can never be served."""

    async def generate(self, request: StudentRequest) -> StudentOutput: ...


@runtime_checkable
class Sandbox(Protocol):
    """Runs one untrusted program: `timeout` wall-clock seconds, or `cpu_limit` CPU seconds (with a backstop)."""

    async def run(self, program: str, timeout: float | None = None,
                  cpu_limit: float | None = None) -> ExecResult: ...


@runtime_checkable
class Teacher(Protocol):
    """One chat completion, rate-limited, journaled and paid for by the client."""

    async def chat(self, request: ChatRequest) -> ChatResponse: ...
