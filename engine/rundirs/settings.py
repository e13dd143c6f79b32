"""The one settings check a rerun meets: settings changed -> refuse unless --force.

Every command records the settings that alter its results (the fingerprint) in its directory: collect in
manifest*.json, eval in work/eval.json, loop in loop.json (train in its checkpoints). A rerun compares:

    diffs = check_settings(out, file, old, new, EvalConfig, force=cfg.force, what="an evaluation",
                           forced="discard the earlier results and start over")

`--force` means one thing in every command: run with the settings given now although an earlier run in
this directory was made with other (or unknown) settings. What the command keeps of the earlier run is
its own: only what is still valid under the new settings (docs/failures.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from persd.config import flag_of, renamed, with_defaults
from persd.runtime.errors import UsageError

DERIVED = {"tasks_count": "the number of tasks in --tasks", "tasks_sha256": "the content of --tasks",
           "prompt_version": "persd's prompt texts (a newer persd)"}


def describe_difference(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "",
                        renamed: Mapping[str, str] | None = None,
                        sections: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Human lines naming each changed setting, as flags (a nested section `train` as --train.KEY). A
    fingerprint key that is a renamed option's old name (`renamed`, a config class's RENAMED table) is
    named by its new flag; `sections` gives a nested section (a loop stage) its own table."""
    renamed = renamed or {}
    lines = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if isinstance(was, dict) or isinstance(now, dict):
            lines += describe_difference(was or {}, now or {}, f"{prefix}{key}.", (sections or {}).get(key, {}))
        elif key == "tasks_sha256":
            lines.append(f"{DERIVED[key]} changed")
        else:
            name = DERIVED.get(key) if not prefix else None
            lines.append(f"{name or flag_of(prefix + renamed.get(key, key))}: was {was!r}, now {now!r}")
    return lines


def check_settings(out: Path | str, file: Path | str, old: Mapping[str, Any] | None, new: Mapping[str, Any],
                   cls: type, *, force: bool, what: str, forced: str, unreadable: str = "",
                   sections: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Compare the settings recorded in `file` (`old`; None when the file cannot be read, `unreadable`
    saying why) with this run's. Returns the differences as lines (`--flag: was X, now Y`), [] when none.
    Without `force` a difference or an unreadable file is refused (exit 2) naming the file; `what` names
    the earlier run ("an evaluation") and `forced` what --force does in this command; old flat names in
    the fingerprint are named by their new flags (`cls.RENAMED`, and `sections` for nested stages)."""
    file = Path(file)
    if old is None:
        if not force:
            raise UsageError(f"{unreadable or f'{file}: unreadable'}, so the settings {what} in {out} was made "
                             f"with are unknown: restore the file, use another --out, or pass --force to {forced}")
        return [f"{unreadable or f'{file}: unreadable'}; the earlier settings are unknown"]
    diffs = describe_difference(with_defaults(old, cls), new, renamed=renamed(cls), sections=sections)
    if diffs and not force:
        raise UsageError(f"{out} holds {what} made with other settings ({file.name}); resuming would alter "
                         f"results:\n  " + "\n  ".join(diffs)
                         + f"\nrerun with the original settings, use another --out, or pass --force to {forced}")
    return diffs


__all__ = ["check_settings", "describe_difference"]
