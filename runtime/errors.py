"""Errors that end a command with a message instead of a traceback.

`PersdError` is a failure with a known cause (exit 1); `UsageError` is the user's
mistake: a bad flag, a bad file, a bad line (exit 2). Both print one clear message.
"""
from __future__ import annotations

import re
from typing import Callable


class PersdError(Exception):
    exit_code = 1


class UsageError(PersdError):
    exit_code = 2


class InputError(UsageError):
    """A bad record in an input file: names the file, the line and the field."""

    def __init__(self, path: str, line: int, message: str, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = f"{path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")


class ConfigError(UsageError):
    """A configuration value that cannot work. It names the FIELD (runtime knows nothing of flags);
    the command line renames it to the flag or the file and key the user wrote. The message may name
    other fields of the same section as `{field}`: they are renamed the same way."""

    def __init__(self, field: str, message: str, section: str = ""):
        self.field, self.template, self.section = field, message, section
        super().__init__(f"{section} {field}: {self.message}" if section else f"{field}: {self.message}")

    def text(self, name_of: Callable[[str], str] = str) -> str:
        return re.sub(r"\{([a-z_.]+)\}", lambda m: name_of(m.group(1)), self.template)

    @property
    def message(self) -> str:
        return self.text()

    def renamed(self, name: str, name_of: Callable[[str], str] = str) -> "UsageError":
        return UsageError(f"{name}: {self.text(name_of)}")
