"""The manifest: configuration (no secrets), the shards and their state, totals.

One partition writes one manifest: `DIR/manifest.json` for a single machine, or
`DIR/manifest.part-000I-of-000N.json` when --num-shards splits the work, so machines
sharing DIR never write the same file. Writes are atomic (temp file, fsync, rename).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
from persd.config import with_defaults
from persd.engine.collect.config import CollectConfig, describe_difference
from persd.engine.collect.layout import CollectLayout
from persd.runtime.errors import PersdError, UsageError

VERSION = 1


def manifest_path(out_dir: Path, cfg: CollectConfig) -> Path:
    return CollectLayout(out_dir).manifest_path(cfg.partition)


def find_manifests(out_dir: Path) -> list[Path]:
    return CollectLayout(out_dir).manifests()


def read_manifest(path: Path) -> dict:
    try:
        data = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise UsageError(f"no manifest at {path}") from None
    except orjson.JSONDecodeError as exc:
        raise PersdError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(data, dict) or "fingerprint" not in data:
        raise PersdError(f"{path}: not a persd collect manifest")
    return data


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    from persd.engine.collect.shards import disk_error

    data = dict(data, updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise disk_error(exc, str(path)) from None


def check_compatible(out_dir: Path, fingerprint: dict[str, Any], force: bool) -> list[str]:
    """Refuse a rerun whose settings would alter results; returns warnings when --force overrides."""
    warnings: list[str] = []
    for path in find_manifests(out_dir):
        try:
            old = read_manifest(path)
        except PersdError as exc:
            if not force:  # its settings are unknown: a rerun could relabel the records under other ones
                raise UsageError(f"{exc}: the settings this directory was collected with are unknown; restore the "
                                 f"file, use another --out, or pass --force to continue with these settings") from None
            warnings.append(f"--force: {exc}; continuing with these settings")
            continue
        diff = describe_difference(with_defaults(old.get("fingerprint", {}), CollectConfig), fingerprint)
        if not diff:
            continue
        if not force:
            raise UsageError(
                f"{out_dir} was collected with other settings ({path.name}); resuming would alter results:\n  "
                + "\n  ".join(diff)
                + "\nrerun with the original settings, use another --out, or pass --force to continue anyway"
            )
        warnings += [f"--force: {line}" for line in diff]
    return warnings


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def scrub(value: Any, secrets: list[str]) -> Any:
    """Remove any secret text that might have slipped into a structure written to disk: the
    known secrets, and credentials written into a URL (`https://user:key@host`)."""
    if isinstance(value, str):
        for s in secrets:
            if s and s in value:
                value = value.replace(s, "***")
        return _URL_CREDENTIALS.sub(r"\1***@", value)
    if isinstance(value, dict):
        return {k: scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    return value
