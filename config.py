"""One configuration pattern for every `persd` command (in the spirit of torchtitan's config dataclasses).

A command's options are one dataclass. Each field says, in its metadata, what it means and whether it
changes results; everything else is generated from that:

    @dataclass
    class CollectConfig:
        temperature: float = opt(0.3, help="student sampling temperature", changes_results=True)

- the command line: `--temperature` (help text + "(default: 0.3)"), typed from the annotation;
- `--config FILE.toml` on every command: any field as a key (`-` or `_`); an unknown key is an error
  naming the file and the key;
- presets (`persd train --preset`, `persd eval --protocol`): TOML files of the same format, shipped as
  package data or given as a path;
- `fingerprint(cfg)`: the fields that change results, which a rerun in the same directory must keep.

Precedence: flag > key in `--config` > preset > the field's default. A value that cannot work raises
`ConfigError(field, message)`; `load()` names it the way the user gave it (the flag, or file: key).

This module is a leaf (stdlib and persd.runtime.errors only): engine, trainers and bench all use it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import types
import typing
from dataclasses import MISSING, Field, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import tomllib
from persd.runtime.errors import ConfigError, UsageError

# ------------------------------------------------------------------ the one parser class


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are UsageErrors: one sentence naming the flag, exit 2, no traceback."""

    def error(self, message: str):
        raise UsageError(f"{message} ({self.prog} --help for the options)")


def parser_for(command: str, **kwargs: Any) -> Parser:
    """A parser for `persd COMMAND` (also for hand-written parsers: bench, servers)."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return Parser(prog=command if command.startswith(("persd", "python")) else f"persd {command}", **kwargs)


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
nonneg_float = _checked("non-negative number", float, lambda x: x >= 0)


def comma_list(item: Callable[[str], Any] = str, name: str = "comma list") -> Callable[[Any], tuple]:
    """'a,b' (a flag) or ["a", "b"] (TOML) -> a tuple of items."""
    def convert(v: Any) -> tuple:
        items = v if isinstance(v, (list, tuple)) else [s.strip() for s in str(v).split(",")]
        return tuple(item(s) if isinstance(s, str) else s for s in items if s != "")

    convert.__name__ = name
    return convert


# ------------------------------------------------------------------ fields


def opt(default: Any = MISSING, *, help: str, changes_results: bool, default_factory: Any = MISSING,
        flag: str | None = None, type: Callable[[Any], Any] | None = None, choices: Sequence[Any] | None = None,
        group: str | None = None, metavar: str | None = None, shown: str | None = None, nargs: str | None = None,
        positional: bool = False, cli: bool = True, nested: type | None = None, owned: Sequence[str] = ()) -> Any:
    """A config field. `changes_results` is required: True puts the field in the fingerprint a rerun must
    keep. `flag` overrides the generated `--field-name`; `type` converts a flag's string (or a TOML
    value) and checks it; `shown` is how the default is written in --help; `cli=False` keeps the field
    out of the command line (set by code, or in TOML only).

    `nested=StageConfig` makes a section: a dict of that config's fields (`[name]` in TOML, `--name.field`
    on the command line), minus the `owned` fields, which the outer command sets itself."""
    meta = {"help": help, "changes_results": changes_results, "flag": flag, "type": type, "choices": choices,
            "group": group, "metavar": metavar, "shown": shown, "nargs": nargs, "positional": positional,
            "cli": cli, "nested": nested, "owned": tuple(owned)}
    if nested is not None:
        default_factory = dict
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def config_fields(cls_or_cfg: Any) -> list[Field]:
    """The fields declared with opt() (in declaration order)."""
    return [f for f in dataclasses.fields(cls_or_cfg) if "changes_results" in f.metadata]


def flag_of(f: Field | str) -> str:
    name = f if isinstance(f, str) else (f.metadata.get("flag") or f.name)
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def fingerprint(cfg: Any) -> dict[str, Any]:
    """{field: value} of every field whose metadata says it changes results (JSON-ready); of a section
    (nested config), the values given for its own result-changing fields."""
    out: dict[str, Any] = {}
    for f in config_fields(cfg):
        if not f.metadata["changes_results"]:
            continue
        value = getattr(cfg, f.name)
        if f.metadata["nested"] is not None:
            keep = set(result_fields(f.metadata["nested"]))
            value = {k: v for k, v in sorted(value.items()) if k in keep}
        out[f.name] = _plain(value)
    return out


def with_defaults(old: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """A fingerprint saved before a result-changing field was added, read as if it had the field at its
    default: adding an option leaves earlier runs resumable while the option keeps its default."""
    return {**fingerprint(cls()), **old}


def result_fields(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in config_fields(cls) if f.metadata["changes_results"])


# ------------------------------------------------------------------ types from annotations


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # each base class's annotations in its own module


def _hint(cls: type, name: str) -> Any:
    hint = _hints(cls)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    return hint


def _converter(cls: type, f: Field) -> Callable[[Any], Any] | None:
    """How a flag's string (or a TOML value) becomes the field's value; None for a bool."""
    if f.metadata.get("type") is not None:
        return f.metadata["type"]
    hint = _hint(cls, f.name)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return None
    if hint in (int, float, str):
        return hint
    if origin in (tuple, list) and args and f.metadata["nargs"]:
        return args[0]  # argparse collects the list, one converted item a word
    if origin in (tuple, list) and args:
        item = args[0]
        convert = comma_list(item, f"comma list of {item.__name__}")
        return convert if origin is tuple else (lambda v, c=convert: list(c(v)))
    return str


def _is_bool(cls: type, f: Field) -> bool:
    return f.metadata.get("type") is None and _hint(cls, f.name) is bool


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def shown_default(f: Field) -> str:
    """The default as --help writes it."""
    if f.metadata.get("shown") is not None:
        return f.metadata["shown"]
    value = _default(f)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    if value == "":
        return "unset"
    return str(value)


def help_text(f: Field) -> str:
    return f"{f.metadata['help']} (default: {shown_default(f)})".replace("%", "%%")


# ------------------------------------------------------------------ the command line


@dataclass
class Command:
    """How one dataclass becomes a command: `prog` for messages, a preset field (shipped TOML files in
    `preset_package`, or a path), and `extra(parser)` for flags that are not settings (aliases)."""

    cls: type
    prog: str
    description: str = ""
    epilog: str | None = None
    preset_field: str | None = None
    preset_package: str | None = None
    extra: Callable[[argparse.ArgumentParser], None] | None = None
    groups: tuple[str, ...] = ()  # the order of the --help sections (others follow)


def add_fields(p: argparse.ArgumentParser, cls: type, *, prefix: str = "", group_title: str | None = None,
               skip: Sequence[str] = (), groups_order: Sequence[str] = ()) -> None:
    """One flag per field; defaults are not filled in (SUPPRESS), so only given flags reach the namespace.
    `prefix` ("collect.") gives nested flags (--collect.temperature, dest collect.temperature)."""
    groups: dict[str | None, Any] = {t: p.add_argument_group(t) for t in groups_order}
    for f in config_fields(cls):
        if not f.metadata["cli"] or f.name in skip:
            continue
        if f.metadata["nested"] is not None:
            add_fields(p, f.metadata["nested"], prefix=f"{prefix}{f.name}.", skip=f.metadata["owned"],
                       group_title=f"[{f.name}] {f.metadata['help']}")
            continue
        title = group_title or f.metadata["group"]
        if title not in groups:
            groups[title] = p.add_argument_group(title) if title else p
        g = groups[title]
        dest = prefix + f.name
        kw: dict[str, Any] = {"help": help_text(f), "default": argparse.SUPPRESS}
        if f.metadata["positional"]:
            nargs = "*" if f.metadata["nargs"] in ("+", "*") else "?"  # may come from --config instead
            g.add_argument(dest, nargs=nargs, metavar=f.metadata["metavar"] or f.name.upper(),
                           type=_converter(cls, f), help=help_text(f), default=argparse.SUPPRESS)
            continue
        flag = flag_of(f) if not prefix else "--" + prefix + flag_of(f)[2:]
        if _is_bool(cls, f):
            g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, **kw)
            continue
        for key in ("choices", "metavar", "nargs"):
            if f.metadata[key] is not None:
                kw[key] = tuple(f.metadata[key]) if key == "choices" else f.metadata[key]
        if "metavar" not in kw and "choices" not in kw:
            kw["metavar"] = _METAVARS.get(_hint(cls, f.name), f.name.rsplit("_", 1)[-1].upper())
        g.add_argument(flag, dest=dest, type=_converter(cls, f), **kw)


_METAVARS = {int: "N", float: "X"}


def build_parser(cmd: Command) -> Parser:
    p = parser_for(cmd.prog, description=cmd.description, epilog=cmd.epilog)
    p.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS,
                   help="TOML file: any option below as a key (`-` or `_`); a flag on the command line wins")
    add_fields(p, cmd.cls, groups_order=cmd.groups)
    if cmd.extra:
        cmd.extra(p)
    return p


# ------------------------------------------------------------------ TOML files


def read_toml(path: str | Path, what: str = "--config") -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"{what}: no such file '{path}'") from None
    except IsADirectoryError:
        raise UsageError(f"{what}: '{path}' is a directory, not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what}: {path}: not valid TOML ({exc})") from None


def check_values(cls: type, data: Mapping[str, Any], where: str, *, forbid: Sequence[str] = ()) -> dict[str, Any]:
    """A TOML table's keys as field values, each converted and checked as its flag is; an unknown key,
    a table where a value belongs, or a bad value is a UsageError naming `where` (file) and the key."""
    known = {f.name: f for f in config_fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name in forbid:
            raise UsageError(f"{where}: key '{key}' cannot be set here (the command sets it itself)")
        if name not in known:
            raise UsageError(f"{where}: unknown key '{key}'")
        if known[name].metadata["nested"] is not None:
            if not isinstance(value, dict):
                raise UsageError(f"{where}: '{key}' must be a table ([{key}])")
            out[name] = check_values(known[name].metadata["nested"], value, f"{where}: [{key}]",
                                     forbid=known[name].metadata["owned"])
        else:
            out[name] = convert_value(cls, known[name], value, f"{where}: key '{key}'")
    return out


def convert_value(cls: type, f: Field, value: Any, where: str) -> Any:
    try:
        if _is_bool(cls, f):
            if not isinstance(value, bool):
                raise ValueError
        else:
            convert = _converter(cls, f)
            if isinstance(value, bool) or (isinstance(value, dict) and f.metadata["type"] is None):
                raise ValueError  # a table only where the field's own type reads one (e.g. collect's prices)
            if f.metadata["nargs"] and isinstance(value, list):  # one value a list item, as on the command line
                value = [convert(str(x)) for x in value]
            else:
                value = convert(value if isinstance(value, (list, tuple, dict)) else str(value))
        if f.metadata["choices"] is not None and value not in f.metadata["choices"]:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(map(str, f.metadata['choices']))}")
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        why = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else f"invalid value {value!r}"
        raise UsageError(f"{where}: {why}") from None
    return value


def preset_values(cmd: Command, name: str) -> dict[str, Any]:
    """A preset: a shipped NAME (package data NAME.toml) or a path to a TOML file, same format as --config."""
    where = f"{flag_of(cmd.preset_field)} {name}"
    if cmd.preset_package and not name.endswith(".toml") and "/" not in name:
        shipped = resources.files(cmd.preset_package).joinpath(f"{name}.toml")
        if not shipped.is_file():
            raise UsageError(f"{where}: no such preset (shipped: {', '.join(shipped_presets(cmd))}; "
                             f"or give a FILE.toml)")
        data = tomllib.loads(shipped.read_text())
    else:
        data = read_toml(name, where)
    return check_values(cmd.cls, data, where, forbid=(cmd.preset_field,))


def shipped_presets(cmd: Command) -> list[str]:
    if not cmd.preset_package:
        return []
    return sorted(p.name[:-5] for p in resources.files(cmd.preset_package).iterdir() if p.name.endswith(".toml"))


# ------------------------------------------------------------------ flag > TOML > preset > default


@dataclass
class Sources:
    """Where each value came from, to name it in a message: the flag, or the file and key."""

    flags: set[str] = field(default_factory=set)
    files: dict[str, str] = field(default_factory=dict)  # field -> "FILE: key 'x'"

    def name(self, field_name: str) -> str:
        if field_name in self.flags or field_name not in self.files:
            return flag_of(field_name.replace("_", "-"))
        return self.files[field_name]


def gather(cmd: Command, argv: Sequence[str]) -> tuple[dict[str, Any], argparse.Namespace, Sources]:
    """The values given (flags, --config, preset), merged by precedence; the namespace holds extras."""
    ns = build_parser(cmd).parse_args(list(argv))
    known = {f.name for f in config_fields(cmd.cls)}
    flags: dict[str, Any] = {}
    for key, value in vars(ns).items():
        section, _, name = key.rpartition(".")
        if section in known:
            flags.setdefault(section, {})[name] = value
        elif key in known:
            flags[key] = value
    src = Sources(flags={k if not isinstance(v, dict) else f"{k}.{n}" for k, v in flags.items()
                         for n in (v if isinstance(v, dict) else [None])})
    file_values: dict[str, Any] = {}
    config_path = getattr(ns, "config", None)
    if config_path:
        file_values = check_values(cmd.cls, read_toml(config_path), f"--config: {config_path}")
        src.files.update({k: f"{config_path}: key '{k}'" for k in file_values})
        src.files.update({f"{k}.{n}": f"{config_path}: [{k}] key '{n}'" for k, v in file_values.items()
                          if isinstance(v, dict) for n in v})
    values: dict[str, Any] = {}
    preset = flags.get(cmd.preset_field) or file_values.get(cmd.preset_field) if cmd.preset_field else None
    if preset:
        pv = preset_values(cmd, preset)
        values.update(pv)
        src.files.update({k: f"{flag_of(cmd.preset_field)} {preset}: key '{k}'" for k in pv})
    for layer in (file_values, flags):
        for key, value in layer.items():  # a section merges key by key
            values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return values, ns, src


def build(cls: type, values: Mapping[str, Any], src: Sources | None = None) -> Any:
    """cls(**values), a ConfigError named as the user gave the value."""
    try:
        cfg = cls(**values)
        check = getattr(cfg, "validate", None)
        if check:
            check()
    except ConfigError as exc:
        f = next((f for f in config_fields(cls) if f.name == exc.field), None)
        name = f.metadata["metavar"] if f and f.metadata["positional"] else (src or Sources()).name(exc.field)
        raise UsageError(f"{name}: {exc.message}") from None
    return cfg


def load(cmd: Command, argv: Sequence[str]) -> Any:
    values, _, src = gather(cmd, argv)
    return build(cmd.cls, values, src)


@contextlib.contextmanager
def runtime_fields_as_flags(names: Mapping[tuple[str, str], str]) -> Iterator[None]:
    """A runtime ConfigError (section, field) re-raised naming the command's flag: `names` maps
    ("teacher", "max_in_flight") to the command field "teacher_max_in_flight" (--teacher-max-in-flight)."""
    try:
        yield
    except ConfigError as exc:
        name = names.get((exc.section, exc.field))
        if name is None:
            raise

        section = exc.section

        def name_of(field_name: str) -> str:
            other = names.get((section, field_name))
            return flag_of(other) if other else field_name

        raise exc.renamed(flag_of(name), name_of) from None


# ------------------------------------------------------------------ writing a config file


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_toml(values: Mapping[str, Any]) -> str:
    """Flat {key: value} as TOML (None left out: the field's default)."""
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if v is not None)


__all__ = ["Parser", "parser_for", "opt", "Command", "config_fields", "fingerprint", "result_fields", "flag_of",
           "add_fields", "build_parser", "gather", "build", "load", "check_values", "read_toml", "to_toml",
           "positive_int", "nonneg_int", "positive_float", "nonneg_float", "comma_list", "shown_default",
           "ConfigError", "Sources", "runtime_fields_as_flags", "with_defaults"]
