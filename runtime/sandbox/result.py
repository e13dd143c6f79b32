"""What one sandboxed execution returns."""
from __future__ import annotations

from dataclasses import asdict, dataclass

STATUSES = ("passed", "failed", "timeout", "error")


@dataclass(frozen=True)
class ExecResult:
    status: str  # passed | failed | timeout | error
    feedback: str  # what a teacher sees: the failing assert with INPUT/OUTPUT/EXPECTED, or the last error line
    duration_s: float
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None  # the process's exit status, when it exited
    signal: int | None = None  # the signal that ended it, when one did
    cpu_s: float = 0.0  # CPU seconds the program (and the children it reaped) spent
    limit: str | None = None  # on a timeout, the limit that stopped it: "cpu" or "wall"
    limit_s: float | None = None  # ... and that limit's value in seconds

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)
