"""The manifest: configuration (no secrets), the shards and their state, totals.

One partition writes one manifest: `DIR/manifest.json` for a single machine, or
`DIR/manifest.part-000I-of-000N.json` when --num-shards splits the work, so machines
sharing DIR never write the same file. Writes are atomic (temp file, fsync, rename).
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from persd.engine.collect.config import CollectConfig
from persd.engine.collect.layout import MANIFEST_VERSION, CollectLayout, CollectManifest, ManifestError
from persd.engine.rundirs.files import atomic_write_json
from persd.engine.rundirs.settings import check_settings
from persd.runtime.errors import PersdError, UsageError

VERSION = MANIFEST_VERSION


def manifest_path(out_dir: Path, cfg: CollectConfig) -> Path:
    return CollectLayout(out_dir).manifest_path(cfg.partition)


def find_manifests(out_dir: Path) -> list[Path]:
    return CollectLayout(out_dir).manifests()


def read_manifest(path: Path) -> CollectManifest:
    """One partition's manifest: UsageError when there is none, PersdError when it cannot be read."""
    if not Path(path).exists():
        raise UsageError(f"no manifest at {path}")
    try:
        return CollectManifest.read(path)
    except ManifestError as exc:
        raise PersdError(str(exc)) from None


def write_manifest(path: Path, manifest: CollectManifest) -> None:
    from persd.engine.collect.shards import disk_error

    manifest.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        atomic_write_json(path, manifest.to_json(), mkdir=False)
    except OSError as exc:
        raise disk_error(exc, str(path)) from None


def check_compatible(out_dir: Path, fingerprint: dict[str, Any], force: bool) -> list[str]:
    """Refuse a rerun whose settings would alter results; returns warnings when --force overrides
    (collect keeps what its sealed shards hold, and every teacher answer paid for)."""
    warnings: list[str] = []
    for path in find_manifests(out_dir):
        try:
            old, why = read_manifest(path).fingerprint, ""
        except PersdError as exc:
            old, why = None, str(exc)
        diffs = check_settings(out_dir, path, old, fingerprint, CollectConfig, force=force, what="a collect run",
                               forced="continue with these settings", unreadable=why)
        warnings += [f"--force: {line}" for line in diffs]
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
