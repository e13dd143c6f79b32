"""The `persd` command line: a thin dispatcher to one module per sub-command.

Sub-command modules are imported only when called, so `persd check` never pays
for torch, and a command's heavy imports stay out of the others.
"""
from __future__ import annotations

import importlib
import sys

from persd.runtime.errors import PersdError

# name -> (module exposing main(argv) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("persd.engine.cli.commands.collect", "run the personalised-distillation collection job (rerun to resume)"),
    "status": ("persd.engine.cli.commands.status", "summarise the progress of one or many collect directories"),
    "check": ("persd.engine.cli.commands.check", "check samples (or reference solutions) against the tasks' tests"),
    "eval": ("persd.engine.cli.commands.eval", "pass@k of a student, with optional refine-inference"),
    "loop": ("persd.engine.cli.commands.loop", "multi-round collect -> train -> eval"),
    "train": ("persd.trainers.cli", "DeepSpeed ZeRO fine-tuning on collected shards"),
    "tiny-model": ("persd.runtime.student.tiny_model", "write a tiny random-weight causal LM for tests and demos"),
    "bench": ("persd.bench.cli", "throughput benchmarks: sandbox, teacher, student, engine, train, eval"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: persd COMMAND [options]   (persd COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def run_guarded(fn, argv: list[str]) -> int:
    """Run a command's main: user mistakes and known failures become one line, not a traceback."""
    try:
        return int(fn(argv) or 0)
    except PersdError as exc:
        print(f"persd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("persd: interrupted; nothing finished is lost: rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"persd: error: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"persd: error: '{name}' is not part of this build yet", file=sys.stderr)
            return 2
        raise
    return run_guarded(module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
