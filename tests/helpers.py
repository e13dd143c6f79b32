"""Small helpers shared by the collect, eval and loop test modules (import: `from helpers import ...`)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import orjson

# The repository's own data fixtures (see tests/data/README.md): every test can use them.
FIXTURES = Path(__file__).resolve().parent / "data"
MBPP_FIXTURE = FIXTURES / "mbpp.jsonl"  # MBPP task ids 1-40, unchanged
PERSDISTILL_FIXTURE = FIXTURES / "persdistill-codegen6b"  # the first 100 records of each format


def doubling_task(i: int, name: str = "f", task_id: str | None = None, variant: str | None = None) -> dict:
    """Task i: `{name}_{i}(x)` returns twice its argument; tests at x = 1 (the visible one) and x = 5."""
    fn = f"{name}_{i}"
    return {
        "task_id": task_id or f"double/{i}",
        "instruction": f"Return twice the argument ({variant or f'variant {i}'}).",
        "header": f"def {fn}(x):\n",
        "entry_point": fn,
        "tests": [f"assert {fn}(1) == 2", f"assert {fn}(5) == 10"],
        "reference": f"def {fn}(x):\n    return x * 2\n",
    }


def write_jsonl(path: Path, rows: Iterable[dict | bytes]) -> Path:
    """One JSON line per row; a bytes row is written as it is (to plant a malformed line)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for row in rows:
            fh.write((row if isinstance(row, bytes) else orjson.dumps(row)) + b"\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines() if line.strip()]


def write_doubling_tasks(path: Path, n: int) -> Path:
    """Tasks double/0 .. double/{n-1}: f_i(x) = 2x."""
    return write_jsonl(path, (doubling_task(i) for i in range(n)))
