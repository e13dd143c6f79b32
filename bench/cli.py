"""`persd bench NAME [options]`: dispatch to one benchmark module (each exposes main(argv) -> int)."""
from __future__ import annotations

import importlib
import sys

BENCHES: dict[str, str] = {
    "sandbox": "persd.bench.sandbox",
    "teacher": "persd.bench.teacher",
    "student": "persd.bench.student",
    "engine": "persd.bench.engine",
    "train": "persd.bench.train",
    "eval": "persd.bench.eval",
    "vllm-startup": "persd.bench.vllm_startup",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        print(f"usage: persd bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    try:
        module = importlib.import_module(BENCHES[argv[0]])
    except ModuleNotFoundError as exc:
        if exc.name == BENCHES[argv[0]]:
            print(f"persd: error: benchmark '{argv[0]}' is not part of this build yet", file=sys.stderr)
            return 2
        raise
    return int(module.main(argv[1:]) or 0)
