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

A component's config (the runtime's TeacherConfig, StudentConfig, SandboxConfig) is a typed `section()`
of a command's config: its options are `--teacher.rpm` flags and `[teacher]` TOML keys, and under
`persd loop` `--collect.teacher.rpm` / `[collect.teacher]`. An option that was renamed (the flat
`--rpm` of earlier releases) is listed in the config class's `RENAMED` table: the old flag and TOML key
still work for one release, each printing one deprecation line.

`opt()` and the field machinery live in persd.runtime.options (a leaf the runtime imports); this module
uses only the stdlib and persd.runtime: engine, trainers and bench all use it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import sys
import types
import typing
from dataclasses import MISSING, Field, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import tomllib
from persd.runtime.errors import ConfigError, UsageError
from persd.runtime.options import (
    BadValue,
    comma_list,
    config_fields,
    key_values,
    nonneg_float,
    nonneg_int,
    opt,
    positive_float,
    positive_int,
    positive_number,
    section,
)

# ------------------------------------------------------------------ the one parser class


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are UsageErrors: one sentence naming the flag, exit 2, no traceback."""

    def error(self, message: str):
        raise UsageError(f"{message} ({self.prog} --help for the options)")


def parser_for(command: str, **kwargs: Any) -> Parser:
    """A parser for `persd COMMAND` (also for hand-written parsers: bench, servers)."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return Parser(prog=command if command.startswith(("persd", "python")) else f"persd {command}", **kwargs)


# ------------------------------------------------------------------ fields (persd.runtime.options: a leaf)


def flag_of(f: Field | str) -> str:
    """The flag of a field or of a path ("teacher.max_in_flight" -> --teacher.max-in-flight)."""
    name = f if isinstance(f, str) else (f.metadata.get("flag") or f.name)
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def renamed(cls: type) -> dict[str, str]:
    """A command's renamed options: {old flat name: new path} (`RENAMED` on its config class). The old
    names stay accepted, as flags and TOML keys, with a deprecation line; fingerprints keep them as keys."""
    return dict(getattr(cls, "RENAMED", {}))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def leaves(cls: type, prefix: str = "", defaults: Mapping[str, Any] | None = None
           ) -> Iterator[tuple[str, type, Field, Any]]:
    """(path, owner class, field, this command's default) of every option, through typed sections."""
    for f in config_fields(cls):
        section = f.metadata["section"]
        if section is not None:
            yield from leaves(section, f"{prefix}{f.name}.", f.metadata["defaults"])
            continue
        default = (defaults or {}).get(f.name, MISSING)
        yield prefix + f.name, cls, f, (_default(f) if default is MISSING else default)


def field_at(cls: type, path: str) -> tuple[type, Field] | None:
    """The owner class and field of an option's path ("teacher.retry.max_attempts"), or None."""
    head, _, rest = path.partition(".")
    f = next((f for f in config_fields(cls) if f.name == head), None)
    if f is None:
        return None
    if rest:
        inner = f.metadata["section"] or f.metadata["nested"]
        return field_at(inner, rest) if inner is not None else None
    return cls, f


def value_at(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part)
    return obj


def set_path(values: dict[str, Any], path: str, value: Any) -> None:
    head, _, rest = path.partition(".")
    if rest:
        set_path(values.setdefault(head, {}), rest, value)
    else:
        values[head] = value


def deep_merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win, a section (a dict) merged key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
                else value
    return out


def _flat_results(cls: type, values: Any) -> Iterator[tuple[str, Any]]:
    """(fingerprint key, value) of each result-changing option in `values` (a config, or a dict of the
    options given). A renamed option keeps its old flat name as its key, so earlier fingerprints compare."""
    old_name = {path: old for old, path in renamed(cls).items()}
    for path, _, f, _ in leaves(cls):
        if not f.metadata["changes_results"] or f.metadata["nested"] is not None:
            continue
        try:
            value = value_at(values, path)
        except (AttributeError, KeyError):
            continue
        if isinstance(values, dict) and value is None and not _given(values, path):
            continue
        yield old_name.get(path, path), value


def _given(values: dict, path: str) -> bool:
    head, _, rest = path.partition(".")
    return head in values and (not rest or (isinstance(values[head], dict) and _given(values[head], rest)))


def fingerprint(cfg: Any) -> dict[str, Any]:
    """{field: value} of every field whose metadata says it changes results (JSON-ready): a typed section's
    options as keys of their own (their old flat names where they were renamed, else `section.field`); of
    an untyped section (a loop stage's dict), the values given for its result-changing options."""
    out: dict[str, Any] = {}
    for key, value in _flat_results(type(cfg), cfg):
        out[key] = _plain(value)
    for f in config_fields(cfg):
        if f.metadata["nested"] is not None and f.metadata["changes_results"]:
            given = getattr(cfg, f.name)
            out[f.name] = {k: _plain(v) for k, v in sorted(_flat_results(f.metadata["nested"], given))}
    return out


def with_defaults(old: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """A fingerprint saved before a result-changing field was added, read as if it had the field at its
    default: adding an option leaves earlier runs resumable while the option keeps its default."""
    return {**fingerprint(cls()), **old}


def result_fields(cls: Any) -> tuple[str, ...]:
    return tuple(path for path, _, f, _ in leaves(cls) if f.metadata["changes_results"])


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


def shown_default(f: Field, value: Any = MISSING) -> str:
    """The default as --help writes it (`value`: a section's own default for the field)."""
    if value is MISSING or value == _default(f):
        if f.metadata.get("shown") is not None:
            return f.metadata["shown"]
        value = _default(f)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    if value == "":
        return "unset"
    return str(value)


def help_text(f: Field, default: Any = MISSING) -> str:
    return f"{f.metadata['help']} (default: {shown_default(f, default)})".replace("%", "%%")


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


def _under(paths: Sequence[str], name: str) -> tuple[str, ...]:
    """The paths inside section `name`, relative to it ("student.model" -> "model")."""
    return tuple(p[len(name) + 1:] for p in paths if p.startswith(name + "."))


def add_fields(p: argparse.ArgumentParser, cls: type, *, prefix: str = "", group_title: str | None = None,
               skip: Sequence[str] = (), groups_order: Sequence[str] = (), defaults: Mapping[str, Any] | None = None,
               groups: dict[str | None, Any] | None = None) -> None:
    """One flag per field; defaults are not filled in (SUPPRESS), so only given flags reach the namespace.
    `prefix` ("collect.") gives nested flags (--collect.temperature, dest collect.temperature); a typed
    section adds its own fields the same way (--teacher.rpm, --collect.teacher.rpm)."""
    groups = groups if groups is not None else {t: p.add_argument_group(t) for t in groups_order}
    for f in config_fields(cls):
        if not f.metadata["cli"] or f.name in skip:
            continue
        if f.metadata["nested"] is not None:
            add_fields(p, f.metadata["nested"], prefix=f"{prefix}{f.name}.", skip=f.metadata["owned"],
                       group_title=f"[{prefix}{f.name}] {f.metadata['help']}", groups=groups)
            continue
        if f.metadata["section"] is not None:  # its own defaults for some fields: section(..., max_concurrency=64)
            add_fields(p, f.metadata["section"], prefix=f"{prefix}{f.name}.", skip=_under(skip, f.name),
                       group_title=f"[{prefix}{f.name}] {f.metadata['help']}", defaults=f.metadata["defaults"],
                       groups=groups)
            continue
        title = group_title or f.metadata["group"]
        if title not in groups:
            groups[title] = p.add_argument_group(title) if title else p
        g = groups[title]
        dest = prefix + f.name
        default = (defaults or {}).get(f.name, MISSING)
        kw: dict[str, Any] = {"help": help_text(f, default), "default": argparse.SUPPRESS}
        if f.metadata["positional"]:
            nargs = "*" if f.metadata["nargs"] in ("+", "*") else "?"  # may come from --config instead
            g.add_argument(dest, nargs=nargs, metavar=f.metadata["metavar"] or f.name.upper(),
                           type=_converter(cls, f), help=kw["help"], default=argparse.SUPPRESS)
            continue
        flag = flag_of(f) if not prefix else "--" + prefix + flag_of(f)[2:]
        if _is_bool(cls, f):
            g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, **kw)
            continue
        g.add_argument(flag, dest=dest, type=_converter(cls, f), **_arg_details(cls, f), **kw)
    _add_renamed(p, cls, prefix, skip)


def _arg_details(cls: type, f: Field) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for key in ("choices", "metavar", "nargs"):
        if f.metadata[key] is not None:
            kw[key] = tuple(f.metadata[key]) if key == "choices" else f.metadata[key]
    if "metavar" not in kw and "choices" not in kw:
        kw["metavar"] = _METAVARS.get(_hint(cls, f.name), f.name.rsplit("_", 1)[-1].upper())
    return kw


_METAVARS = {int: "N", float: "X"}


class _Renamed(argparse.Action):
    """An old flag of a renamed option: sets the new option and notes the old name (for the deprecation
    line, and to name the option in a message the way it was given)."""

    def __init__(self, option_strings, dest, new_flag: str, **kwargs):
        self.new_flag = new_flag
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        namespace.__dict__.setdefault("_renamed", []).append((option_string, self.new_flag, self.dest))


def _add_renamed(p: argparse.ArgumentParser, cls: type, prefix: str, skip: Sequence[str]) -> None:
    for old, path in renamed(cls).items():
        at = field_at(cls, path)
        if at is None or path in skip or old in skip:
            continue
        owner, f = at
        flag, new = "--" + prefix + old.replace("_", "-"), "--" + prefix + flag_of(path)[2:]
        kw: dict[str, Any] = {"dest": prefix + path, "new_flag": new, "default": argparse.SUPPRESS,
                              "help": argparse.SUPPRESS}
        if _is_bool(owner, f):
            p.add_argument(flag, action=_Renamed, nargs=0, const=True, **kw)
            no = "--" + prefix + "no-" + old.replace("_", "-")
            p.add_argument(no, action=_Renamed, nargs=0, const=False,
                           **{**kw, "new_flag": "--" + prefix + "no-" + flag_of(path)[2:]})
            continue
        p.add_argument(flag, action=_Renamed, type=_converter(owner, f), **_arg_details(owner, f), **kw)


def build_parser(cmd: Command) -> Parser:
    p = parser_for(cmd.prog, description=cmd.description, epilog=cmd.epilog)
    p.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS,
                   help="TOML file: any option below as a key (`-` or `_`; a section's as [section] keys); "
                        "a flag on the command line wins")
    add_fields(p, cmd.cls, groups_order=cmd.groups)
    if cmd.extra:
        cmd.extra(p)
    return p


def deprecated(message: str) -> None:
    """One line on stderr for an option given by its old name (kept for one release)."""
    print(f"persd: deprecated: {message}", file=sys.stderr, flush=True)


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


def check_values(cls: type, data: Mapping[str, Any], where: str, *, forbid: Sequence[str] = (),
                 names: dict[str, str] | None = None, label: str | None = None, table: str = "") -> dict[str, Any]:
    """A TOML table's keys as field values, each converted and checked as its flag is; an unknown key,
    a table where a value belongs, or a bad value is a UsageError naming `where` (file) and the key.
    A section's table ([teacher], [collect.teacher]) is checked by its own class. `names` receives, per
    option path, how to name it in a message (`label: [table] key 'x'`)."""
    known = {f.name: f for f in config_fields(cls)}
    old_names = renamed(cls)
    out: dict[str, Any] = {}
    label = label or where

    def name_key(path: str, key: str) -> None:
        if names is not None:
            names[path] = f"{label}: [{table}] key '{key}'" if table else f"{label}: key '{key}'"

    for key, value in data.items():
        name = key.replace("-", "_")
        if name in forbid:
            raise UsageError(f"{where}: key '{key}' cannot be set here (the command sets it itself)")
        if name not in known and name in old_names:
            path = old_names[name]
            if path in forbid:
                raise UsageError(f"{where}: key '{key}' cannot be set here (the command sets it itself)")
            owner, f = field_at(cls, path)  # type: ignore[misc]
            sect, _, leaf = path.rpartition(".")
            deprecated(f"{where}: key '{key}' is now '{leaf.replace('_', '-')}' under "
                       f"[{table + '.' if table else ''}{sect}]")
            set_path(out, path, convert_value(owner, f, value, f"{where}: key '{key}'"))
            name_key(path, key)
            continue
        if name not in known:
            raise UsageError(f"{where}: unknown key '{key}'")
        f = known[name]
        inner = f.metadata["nested"] or f.metadata["section"]
        if inner is not None:
            if not isinstance(value, dict):
                raise UsageError(f"{where}: '{key}' must be a table ([{table + '.' if table else ''}{key}])")
            owned = f.metadata["owned"] if f.metadata["nested"] is not None else _under(forbid, name)
            sub: dict[str, str] = {}
            out[name] = deep_merge(out.get(name, {}), check_values(
                inner, value, f"{where}: [{key}]", forbid=owned, names=sub, label=label,
                table=f"{table}.{key}" if table else key))
            if names is not None:
                names.update({f"{name}.{k}": v for k, v in sub.items()})
        else:
            out[name] = convert_value(cls, f, value, f"{where}: key '{key}'")
            name_key(name, key)
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


def preset_values(cmd: Command, name: str, names: dict[str, str] | None = None) -> dict[str, Any]:
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
    return check_values(cmd.cls, data, where, forbid=(cmd.preset_field,), names=names,
                        label=f"{flag_of(cmd.preset_field)} {name}")


def shipped_presets(cmd: Command) -> list[str]:
    if not cmd.preset_package:
        return []
    return sorted(p.name[:-5] for p in resources.files(cmd.preset_package).iterdir() if p.name.endswith(".toml"))


# ------------------------------------------------------------------ flag > TOML > preset > default


@dataclass
class Sources:
    """Where each value came from, to name it in a message: the flag, the old flag (a renamed option), or
    the file and key. Once the user writes old flags, options not given are named by their old flags too."""

    flags: set[str] = field(default_factory=set)  # option paths given as flags
    files: dict[str, str] = field(default_factory=dict)  # path -> "FILE: key 'x'"
    old_flags: dict[str, str] = field(default_factory=dict)  # path -> the old flag given (--rpm)
    old_names: dict[str, str] = field(default_factory=dict)  # path -> its old flag, for every renamed option

    def name(self, path: str) -> str:
        if path in self.old_flags:
            return self.old_flags[path]
        if path in self.flags or path not in self.files:
            if path not in self.flags and self.old_flags and path in self.old_names:
                return self.old_names[path]
            return flag_of(path)
        return self.files[path]


def _flag_values(cls: type, ns: argparse.Namespace) -> dict[str, Any]:
    known = {f.name for f in config_fields(cls)}
    flags: dict[str, Any] = {}
    for key, value in vars(ns).items():
        if key.split(".", 1)[0] in known:
            set_path(flags, key, value)
    return flags


def _paths(values: Mapping[str, Any], cls: type, prefix: str = "") -> Iterator[str]:
    """The option paths in a (nested) dict of values: a section's dict is walked, a dict value is not."""
    for key, value in values.items():
        at = field_at(cls, prefix + key)
        inner = at and (at[1].metadata["section"] or at[1].metadata["nested"])
        if isinstance(value, dict) and inner:
            yield from _paths(value, cls, f"{prefix}{key}.")
        else:
            yield prefix + key


def gather(cmd: Command, argv: Sequence[str]) -> tuple[dict[str, Any], argparse.Namespace, Sources]:
    """The values given (flags, --config, preset), merged by precedence; the namespace holds extras."""
    ns = build_parser(cmd).parse_args(list(argv))
    flags = _flag_values(cmd.cls, ns)
    src = Sources(flags=set(_paths(flags, cmd.cls)),
                  old_names={path: flag_of(old) for old, path in renamed(cmd.cls).items()})
    for old, new, dest in getattr(ns, "_renamed", []):
        deprecated(f"{old} is now {new}")
        src.old_flags[dest] = old
    file_values: dict[str, Any] = {}
    config_path = getattr(ns, "config", None)
    if config_path:
        file_values = check_values(cmd.cls, read_toml(config_path), f"--config: {config_path}", names=src.files,
                                   label=str(config_path))
    preset = flags.get(cmd.preset_field) or file_values.get(cmd.preset_field) if cmd.preset_field else None
    preset_names: dict[str, str] = {}
    pv = preset_values(cmd, preset, preset_names) if preset else {}
    src.files = {**preset_names, **src.files}
    return deep_merge(pv, file_values, flags), ns, src


def build(cls: type, values: Mapping[str, Any], src: Sources | None = None, prefix: str = "") -> Any:
    """cls(**values), each typed section built from its dict first; a ConfigError named as the user gave
    the value. The result remembers the sources (`sources_of`), to name a later runtime error likewise."""
    src = src or Sources()
    kwargs = dict(values)
    for f in config_fields(cls):
        if f.metadata["section"] is not None and not dataclasses.is_dataclass(kwargs.get(f.name)):
            given = {**f.metadata["defaults"], **(kwargs.get(f.name) or {})}
            kwargs[f.name] = build(f.metadata["section"], given, src, f"{prefix}{f.name}.")
    try:
        cfg = cls(**kwargs)
        check = getattr(cfg, "validate", None)
        if check:
            check()
    except ConfigError as exc:
        at = field_at(cls, exc.field)
        if at and at[1].metadata["positional"]:
            raise UsageError(f"{at[1].metadata['metavar']}: {exc.message}") from None
        raise _named(exc, prefix + exc.field, src, prefix) from None
    if not prefix:
        cfg.__dict__["_sources"] = src
    return cfg


def _named(exc: ConfigError, path: str, src: Sources, prefix: str) -> UsageError:
    return exc.renamed(src.name(path), lambda other: src.name(prefix + other))


def sources_of(cfg: Any) -> Sources:
    return cfg.__dict__.get("_sources") or Sources(
        old_names={path: flag_of(old) for old, path in renamed(type(cfg)).items()})


def load(cmd: Command, argv: Sequence[str]) -> Any:
    values, _, src = gather(cmd, argv)
    return build(cmd.cls, values, src)


@contextlib.contextmanager
def runtime_errors_named(cfg: Any) -> Iterator[None]:
    """A runtime ConfigError (section "teacher", field "max_in_flight": the runtime knows nothing of flags)
    re-raised naming the option as the user gave it: --teacher.max-in-flight, the old flag, or the file
    and key. A section the command does not have ("sampling") is looked up as a field of its own."""
    try:
        yield
    except ConfigError as exc:
        for path in (f"{exc.section}.{exc.field}" if exc.section else "", exc.field):
            if path and field_at(type(cfg), path):
                prefix = path.rpartition(".")[0]
                raise _named(exc, path, sources_of(cfg), prefix + "." if prefix else "") from None
        raise


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


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "-_" for c in k) else _toml_value(k)


def to_toml(values: Mapping[str, Any], table: str = "") -> str:
    """{key: value} as TOML, a dict as a [table] (None left out: the field's default)."""
    out = "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in values.items()
                  if v is not None and not isinstance(v, dict))
    for k, v in values.items():
        if isinstance(v, dict) and v:
            name = f"{table}.{_toml_key(k)}" if table else _toml_key(k)
            out += f"\n[{name}]\n" + to_toml(v, name)
    return out


__all__ = ["Parser", "parser_for", "opt", "section", "Command", "config_fields", "fingerprint", "result_fields",
           "flag_of", "add_fields", "build_parser", "gather", "build", "load", "check_values", "read_toml",
           "to_toml", "positive_int", "nonneg_int", "positive_float", "nonneg_float", "positive_number",
           "comma_list", "key_values", "BadValue", "shown_default", "ConfigError", "Sources", "sources_of",
           "runtime_errors_named", "with_defaults", "renamed", "leaves", "field_at", "value_at", "deep_merge"]
