"""Option fields: what a config field means and whether it changes results (a leaf: stdlib only).

Every configuration dataclass, from the runtime's `TeacherConfig` to a command's `CollectConfig`, declares
its fields with `opt()`, so each field carries its help text, its type check and whether it changes
results, next to its default. `persd.config` turns such dataclasses into a command line, TOML keys and
fingerprints; a command nests a component's config as a typed `section()`:

    @dataclass
    class TeacherConfig:                       # runtime/teacher/config.py
        rpm: float = opt(3500, help="requests per minute", changes_results=False, type=positive_number)

    @dataclass
    class CollectConfig:                       # engine/collect/config.py
        teacher: TeacherConfig = section(TeacherConfig, help="the teacher API")   # --teacher.rpm, [teacher]

This module knows nothing of flags or commands: the runtime may import it.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
from dataclasses import MISSING, Field, field
from typing import Any, Callable, Sequence

# A converter raising BadValue("why") has its message shown as is (argparse's ArgumentTypeError); a plain
# ValueError is shown as "invalid value".
BadValue = argparse.ArgumentTypeError


def _checked(name: str, cast: Callable[[str], Any], ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    def convert(v: str) -> Any:
        x = cast(v)
        if not ok(x):
            raise ValueError
        return x

    convert.__name__ = name  # argparse says "invalid <name> value: 'x'"
    return convert


def _number(v: Any) -> int | float:
    """'90' -> 90, '1.5' -> 1.5 (an integral value stays an int, as the flag was given)."""
    try:
        return int(v)
    except ValueError:
        return float(v)


positive_int = _checked("positive int", int, lambda n: n >= 1)
nonneg_int = _checked("non-negative int", int, lambda n: n >= 0)
positive_float = _checked("positive number", float, lambda x: x > 0)
nonneg_float = _checked("non-negative number", float, lambda x: x >= 0)
positive_number = _checked("positive number", _number, lambda x: x > 0)


def comma_list(item: Callable[[str], Any] = str, name: str = "comma list") -> Callable[[Any], tuple]:
    """'a,b' (a flag) or ["a", "b"] (TOML) -> a tuple of items."""
    def convert(v: Any) -> tuple:
        items = v if isinstance(v, (list, tuple)) else [s.strip() for s in str(v).split(",")]
        return tuple(item(s) if isinstance(s, str) else s for s in items if s != "")

    convert.__name__ = name
    return convert


def key_values(value: Callable[[str], Any] = str, name: str = "KEY=VALUE list") -> Callable[[Any], dict]:
    """'a=1,b=2' (a flag) or {a = 1, b = 2} (a TOML table) -> a dict (values converted by `value`)."""
    def convert(v: Any) -> dict:
        if isinstance(v, dict):
            return {str(k): value(x) if isinstance(x, str) else x for k, x in v.items()}
        out = {}
        for part in (p.strip() for p in str(v).split(",") if p.strip()):
            k, eq, x = part.partition("=")
            if not eq or not k.strip():
                raise BadValue(f"expected KEY=VALUE[,KEY=VALUE...], got {part!r}")
            out[k.strip()] = value(x.strip())
        return out

    convert.__name__ = name
    return convert


def opt(default: Any = MISSING, *, help: str, changes_results: bool, default_factory: Any = MISSING,
        flag: str | None = None, type: Callable[[Any], Any] | None = None, choices: Sequence[Any] | None = None,
        group: str | None = None, metavar: str | None = None, shown: str | None = None, nargs: str | None = None,
        positional: bool = False, cli: bool = True, nested: type | None = None, owned: Sequence[str] = ()) -> Any:
    """A config field. `changes_results` is required: True puts the field in the fingerprint a rerun must
    keep. `flag` overrides the generated `--field-name`; `type` converts a flag's string (or a TOML
    value) and checks it; `shown` is how the default is written in --help; `cli=False` keeps the field
    out of the command line (set by code).

    `nested=StageConfig` makes an untyped section: a dict of that command's options (`[name]` in TOML,
    `--name.field` on the command line), minus the `owned` fields (paths such as "student.model"), which
    the outer command sets itself (how `persd loop` nests its stages)."""
    meta = {"help": help, "changes_results": changes_results, "flag": flag, "type": type, "choices": choices,
            "group": group, "metavar": metavar, "shown": shown, "nargs": nargs, "positional": positional,
            "cli": cli, "nested": nested, "owned": tuple(owned), "section": None, "defaults": {}}
    if nested is not None:
        default_factory = dict
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, *, help: str, group: str | None = None, **defaults: Any) -> Any:
    """A typed section: the field holds a `cls` instance (a component's own config); its fields are
    `--NAME.FIELD` flags and `[NAME]` TOML keys. `defaults` are this command's defaults for some of them
    (collect runs 64 student requests at once where the runtime's default is 256)."""
    meta = {"help": help, "changes_results": True, "flag": None, "type": None, "choices": None, "group": group,
            "metavar": None, "shown": None, "nargs": None, "positional": False, "cli": True, "nested": None,
            "owned": (), "section": cls, "defaults": dict(defaults)}
    return field(default_factory=functools.partial(cls, **defaults), metadata=meta)


def config_fields(cls_or_cfg: Any) -> list[Field]:
    """The fields declared with opt() or section() (in declaration order)."""
    return [f for f in dataclasses.fields(cls_or_cfg) if "changes_results" in f.metadata]


__all__ = ["opt", "section", "config_fields", "BadValue", "positive_int", "nonneg_int", "positive_float",
           "nonneg_float", "positive_number", "comma_list", "key_values"]
