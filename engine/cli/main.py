"""The `persd` command line: a thin dispatcher to one module per sub-command.

Sub-command modules are imported only when called, so `persd check` never pays
for torch, and a command's heavy imports stay out of the others.

What a user reads (progress, summaries, errors) is printed; diagnostics go through `logging`
(logger names under `persd.`), silent unless `--log-level debug|info|warning` (anywhere on the
command line, every command) or `PERSD_LOG_LEVEL` asks for them. The level reaches the stages
`persd loop` runs through the environment.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

from persd.runtime.errors import PersdError, UsageError

# name -> (module exposing main(argv) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("persd.engine.cli.commands.collect",
                "run the personalised-distillation collection job (rerun to resume)"),
    "status": ("persd.engine.cli.commands.status", "summarise the progress of one or many collect directories"),
    "check": ("persd.engine.cli.commands.check", "check samples (or reference solutions) against the tasks' tests"),
    "eval": ("persd.engine.cli.commands.eval", "pass@k of a student, with optional refine-inference"),
    "loop": ("persd.engine.cli.commands.loop", "multi-round collect -> train -> eval"),
    "train": ("persd.trainers.cli", "DeepSpeed ZeRO fine-tuning on collected shards"),
    "report": ("persd.engine.cli.commands.report",
               "one self-contained HTML page of collect, train, eval and loop directories"),
    "export": ("persd.engine.cli.commands.export",
               "collect runs' records as a dataset (parquet, datasets, JSONL) with a card; --push-to-hub"),
    "tiny-model": ("persd.engine.cli.commands.tiny_model", "write a tiny random-weight causal LM for tests and demos"),
    "bench": ("persd.bench.cli", "throughput benchmarks: sandbox, teacher, student, engine, train, eval"),
}


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_ENV = "PERSD_LOG_LEVEL"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: persd COMMAND [options] [--log-level debug|info|warning|error]",
             "       (persd COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def take_log_level(argv: list[str]) -> tuple[list[str], str | None]:
    """Remove `--log-level X` / `--log-level=X` from argv (any position); returns (argv, level or None)."""
    out, level, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out += argv[i:]
            break
        if arg == "--log-level":
            if i + 1 >= len(argv):
                raise UsageError("--log-level needs a value: " + ", ".join(LOG_LEVELS))
            level, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--log-level="):
            level, i = arg.split("=", 1)[1], i + 1
            continue
        out.append(arg)
        i += 1
    return out, level


def setup_logging(level: str | None) -> None:
    level = (level or os.environ.get(LOG_ENV) or "").lower()
    if not level:
        return
    if level not in LOG_LEVELS:
        raise UsageError(f"--log-level: '{level}' is not one of " + ", ".join(LOG_LEVELS))
    os.environ[LOG_ENV] = level  # stages run by `persd loop` inherit it
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("persd").setLevel(level.upper())


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
    try:
        argv, level = take_log_level(argv)
        setup_logging(level)
    except UsageError as exc:
        print(f"persd: error: {exc}", file=sys.stderr)
        return 2
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
