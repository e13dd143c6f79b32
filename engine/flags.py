"""Command-line plumbing shared by `persd collect`, `persd eval` and `persd loop`.

    p = parser_for("collect", description="...")   # a bad flag raises UsageError naming the command
    g = add_student_flags(p, concurrency_default=64, vllm=True)
    g.add_argument("--samples", type=positive_int)   # argparse: "invalid positive int value: 'x'"
    values = toml_defaults("run.toml", p)           # a TOML file's keys, checked like flags
"""
from __future__ import annotations

import argparse
import tomllib
from typing import Any, Callable

from persd.runtime.errors import UsageError

STUDENT_BACKENDS = ("vllm", "openai", "hf")
PROGRESS_MODES = ("auto", "live", "plain", "none")


# ------------------------------------------------------------------ parser


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a bad flag names the flag: exit 2, no traceback
        raise UsageError(f"{message} ({self.prog} --help for the options)")


def parser_for(command: str, **kwargs: Any) -> argparse.ArgumentParser:
    """An argument parser for `persd COMMAND` whose errors are UsageErrors (exit 2, no traceback)."""
    return _Parser(prog=f"persd {command}", **kwargs)


# ------------------------------------------------------------------ typed values


def _checked(name: str, cast: Callable[[str], Any], ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    def convert(v: str) -> Any:
        x = cast(v)
        if not ok(x):
            raise ValueError
        return x

    convert.__name__ = name  # argparse says "invalid <name> value: 'x'"
    return convert


positive_int = _checked("positive int", int, lambda n: n >= 1)
nonneg_int = _checked("non-negative int", int, lambda n: n >= 0)
positive_float = _checked("positive number", float, lambda x: x > 0)


# ------------------------------------------------------------------ flag groups


def add_student_flags(p: argparse.ArgumentParser, *, backends: tuple[str, ...] = STUDENT_BACKENDS,
                      backend_help: str = "auto: openai with --student-url, vllm on a GPU machine, else hf",
                      model_help: str = "checkpoint path (hf, vllm) or the served model's name (openai)",
                      url: bool = True, concurrency_default: int | None = None,
                      vllm: bool = False) -> argparse._ArgumentGroup:
    """The "student" group: --student-backend/-model/-url/-chat/-concurrency and, with vllm=True, the
    engine options (--tensor-parallel-size, --gpu-memory-utilization, --kv-cache-gib, --dtype,
    --max-model-len). Returned so a command can add its own student options to the same group."""
    g = p.add_argument_group("student")
    g.add_argument("--student-backend", choices=("auto",) + tuple(backends), help=backend_help)
    g.add_argument("--student-model", help=model_help)
    if url:
        g.add_argument("--student-url", help="base URL of an OpenAI-compatible server (openai backend), "
                                             "e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--student-chat", action=argparse.BooleanOptionalAction,
                   help="an instruct model: chat template / chat messages")
    if concurrency_default is not None:
        g.add_argument("--student-concurrency", type=positive_int,
                       help=f"student requests in flight (default {concurrency_default})")
    if vllm:
        g.add_argument("--tensor-parallel-size", type=positive_int, help="vllm: GPUs per model (default 1)")
        g.add_argument("--gpu-memory-utilization", type=positive_float,
                       help="vllm: fraction of accelerator memory (on CPU: of the NUMA node's RAM) to take "
                            "(default: vLLM's 0.9 on a GPU; on CPU persd sizes the KV cache from free memory)")
        g.add_argument("--kv-cache-gib", type=positive_float,
                       help="vllm: KV cache size in GiB (wins over --gpu-memory-utilization)")
        g.add_argument("--dtype", help="model dtype: auto, bfloat16, float16, float32 (default auto)")
        g.add_argument("--max-model-len", type=positive_int, help="context length the backend allows")
        g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction,
                       help="vllm: run the model without torch.compile (default: yes on CPU, where compiling "
                            "adds minutes to every start with a new model path; no on GPU)")
    return g


# ------------------------------------------------------------------ --config FILE.toml


def toml_defaults(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """A TOML file's keys (any flag, with `-` or `_`) as parser destinations, each checked as its flag is."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"--config: no such file '{path}'") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config: {path}: not valid TOML ({exc})") from None
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in actions or dest == "config":
            raise UsageError(f"--config: {path}: unknown key '{key}'")
        action = actions[dest]
        try:
            if action.type is not None and not isinstance(value, bool):
                value = action.type(value if isinstance(value, list) else str(value))
            if action.choices and value not in action.choices:
                raise ValueError
        except (ValueError, argparse.ArgumentTypeError) as exc:
            why = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else f"invalid value {value!r}"
            raise UsageError(f"--config: {path}: key '{key}': {why}") from None
        out[dest] = value
    return out


__all__ = ["STUDENT_BACKENDS", "PROGRESS_MODES", "parser_for", "positive_int", "nonneg_int", "positive_float",
           "add_student_flags", "toml_defaults"]
