"""`persd bench NAME [options]`: dispatch to one benchmark module (each exposes main(argv) -> int)."""
from __future__ import annotations

import importlib
import sys

from persd.runtime.errors import UsageError

BENCHES: dict[str, str] = {
    "sandbox": "persd.bench.sandbox",
    "teacher": "persd.bench.teacher",
    "student": "persd.bench.student",
    "engine": "persd.bench.engine",
    "train": "persd.bench.train",
    "eval": "persd.bench.eval",
    "timeouts": "persd.bench.timeouts",
    "report": "persd.bench.report",
    "export": "persd.bench.export",
    "vllm-startup": "persd.bench.vllm_startup",
    "cluster": "persd.bench.cluster",
}


def main(argv: list[str]) -> int:
    usage = f"usage: persd bench {{{','.join(BENCHES)}}} [options]"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not argv or argv[0] not in BENCHES:
        what = f"unknown benchmark '{argv[0]}'" if argv else "which benchmark?"
        raise UsageError(f"{what} ({usage})")
    try:
        module = importlib.import_module(BENCHES[argv[0]])
    except ModuleNotFoundError as exc:
        if exc.name == BENCHES[argv[0]]:
            print(f"persd: error: benchmark '{argv[0]}' is not part of this build yet", file=sys.stderr)
            return 2
        raise
    return int(module.main(argv[1:]) or 0)
