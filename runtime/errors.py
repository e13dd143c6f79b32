"""Errors that end a command with a message instead of a traceback.

`PersdError` is a failure with a known cause (exit 1); `UsageError` is the user's
mistake: a bad flag, a bad file, a bad line (exit 2). Both print one clear message.
"""
from __future__ import annotations


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
    the command line renames it to the flag or the file and key the user wrote."""

    def __init__(self, field: str, message: str, section: str = ""):
        self.field, self.message, self.section = field, message, section
        super().__init__(f"{section} {field}: {message}" if section else f"{field}: {message}")

    def renamed(self, name: str) -> "UsageError":
        return UsageError(f"{name}: {self.message}")
