"""`persd export`: the sealed records of one or many collect runs as a dataset others load directly.

    OUT/README.md                         the dataset card (run settings, counts, models, licences, persd version)
    OUT/data/train-00000-of-00001.parquet  --format parquet (one file; row groups of BATCH records)
    OUT/data/train.jsonl                  --format jsonl
    OUT/data-00000-of-0000N.arrow, ...    --format hf: `datasets.save_to_disk` (load with `load_from_disk(OUT)`)

Rows: id, task_id, format, then prompt + completion (--style prompt-completion, TRL's prompt-completion
layout) or messages (--style messages: a user and an assistant turn, TRL's conversational layout, what
SFTTrainer takes as is), then meta as JSON text (its keys vary per record). Records are streamed from
the shards a batch at a time, so memory does not grow with the number of records.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import orjson
from persd.engine.collect.layout import FORMAT_ALIASES, CollectLayout, iter_lines
from persd.runtime.errors import PersdError, UsageError

EXPORT_FORMATS = ("parquet", "hf", "jsonl")
STYLES = ("prompt-completion", "messages")
BATCH = 10_000


@dataclass
class ExportStats:
    records: int = 0
    per_format: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    tasks: int = 0
    runs: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def expand_formats(formats: tuple[str, ...] | list[str] | None) -> set[str] | None:
    if not formats:
        return None
    out: set[str] = set()
    for f in formats:
        out.update(FORMAT_ALIASES.get(f, (f,)))
    return out


def check_dirs(dirs: list[str]) -> list[CollectLayout]:
    layouts = []
    for d in dirs:
        lay = CollectLayout(Path(d))
        if not Path(d).is_dir() or not lay.is_collect_dir():
            raise UsageError(f"{d}: not a persd collect directory (no manifest.json or shards/)")
        if not lay.sealed_record_files():
            raise UsageError(f"{d}: no sealed shard yet: nothing to export")
        for k in sorted({int(p.name.split(".")[0].split("-")[1]) for p in lay.sealed_record_files()}):
            problem = lay.seal_problem(k)
            if problem:
                raise PersdError(f"{d}: a damaged shard: {problem} (rerun persd collect on it to rebuild it)")
        layouts.append(lay)
    return layouts


def run_info(lay: CollectLayout) -> dict:
    """What the card says of one run: from its manifest(s) (secrets were scrubbed when it was written)."""
    info: dict[str, Any] = {"dir": str(lay.out)}
    for path in lay.manifests():
        try:
            m = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        cfg = m.get("config") or {}
        info.setdefault("tasks", (m.get("tasks") or {}).get("source"))
        info.setdefault("tasks_sha256", (m.get("tasks") or {}).get("sha256"))
        info.setdefault("student", (m.get("student") or {}).get("model"))
        info.setdefault("teacher", (m.get("teacher") or {}).get("model"))
        info.setdefault("state", m.get("state"))
        info.setdefault("settings", {k: cfg.get(k) for k in (
            "formats", "refine_turns", "temperature", "n", "max_tokens", "teacher_temperature", "teacher_max_tokens",
            "exec_timeout", "time_limits", "seed", "task_fields", "compare", "limit") if k in cfg})
    return info


def records(layouts: list[CollectLayout], formats: set[str] | None, stats: ExportStats) -> Iterator[dict]:
    for lay in layouts:
        for path in lay.sealed_record_files():
            for rec in iter_lines(path):
                if formats is not None and rec.get("format") not in formats:
                    continue
                stats.records += 1
                stats.per_format[rec.get("format")] += 1
                yield rec
        for path in lay.results_files():
            for res in iter_lines(path):
                stats.tasks += 1
                stats.outcomes[res.get("outcome")] += 1


def row(rec: dict, style: str) -> dict:
    out = {"id": rec["id"], "task_id": rec["task_id"], "format": rec["format"]}
    if style == "messages":
        out["messages"] = [{"role": "user", "content": rec["prompt"]},
                           {"role": "assistant", "content": rec["completion"]}]
    else:
        out["prompt"], out["completion"] = rec["prompt"], rec["completion"]
    out["meta"] = orjson.dumps(rec.get("meta") or {}).decode()
    return out


def _schema(style: str):
    import pyarrow as pa

    cols = [("id", pa.string()), ("task_id", pa.string()), ("format", pa.string())]
    if style == "messages":
        cols.append(("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))))
    else:
        cols += [("prompt", pa.string()), ("completion", pa.string())]
    cols.append(("meta", pa.string()))
    return pa.schema(cols)


def write_parquet(rows: Iterator[dict], path: Path, style: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(style)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        batch: list[dict] = []
        for r in rows:
            batch.append(r)
            if len(batch) >= BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def write_jsonl(rows: Iterator[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for r in rows:
            fh.write(orjson.dumps(r) + b"\n")


def write_hf(rows: Iterator[dict], out: Path, style: str, split: str) -> None:
    """`save_to_disk` layout, built from a parquet file through datasets' own (disk-backed) Arrow cache."""
    import datasets

    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        pq_path = staging / "records.parquet"
        write_parquet(rows, pq_path, style)
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        ds = datasets.Dataset.from_parquet(str(pq_path), cache_dir=str(staging / "cache"), split=split)
        ds.save_to_disk(str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise UsageError(f"--out {out}: exists and is not empty (--force replaces it)")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()


def export(dirs: list[str], out: Path, fmt: str, style: str, formats: tuple[str, ...] | None, split: str,
           card_fields: dict[str, str], force: bool = False) -> ExportStats:
    """Write the dataset and its card; returns the counts (the card holds them too)."""
    from persd.engine.export_card import card

    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"--format: '{fmt}' is not one of {', '.join(EXPORT_FORMATS)}")
    if style not in STYLES:
        raise UsageError(f"--style: '{style}' is not one of {', '.join(STYLES)}")
    layouts = check_dirs(dirs)
    prepare_out(out, force)
    stats = ExportStats(runs=[run_info(lay) for lay in layouts])
    rows = (row(r, style) for r in records(layouts, expand_formats(formats), stats))
    if fmt == "parquet":
        rel = f"data/{split}-00000-of-00001.parquet"
        write_parquet(rows, out / rel, style)
    elif fmt == "jsonl":
        rel = f"data/{split}.jsonl"
        write_jsonl(rows, out / rel)
    else:
        rel = ""
        write_hf(rows, out, style, split)
    if rel:
        stats.files.append(rel)
    (out / "README.md").write_text(card(stats, fmt, style, split, card_fields), encoding="utf-8")
    return stats


def push_to_hub(out: Path, repo: str, fmt: str, split: str, token_env: str = "HF_TOKEN", private: bool = False) -> str:
    """Upload OUT to the hub as a dataset repository (HF_ENDPOINT names another hub). Returns the commit URL."""
    from huggingface_hub import HfApi

    token = os.environ.get(token_env) or None
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo, repo_type="dataset", exist_ok=True, private=private)
        if fmt == "hf":  # the hub serves parquet: push the saved dataset as such, then the card
            import datasets

            ds = datasets.load_from_disk(str(out))
            ds.push_to_hub(repo, split=split, token=token)
            info = api.upload_file(path_or_fileobj=str(out / "README.md"), path_in_repo="README.md", repo_id=repo,
                                   repo_type="dataset", commit_message="persd export: dataset card")
        else:
            info = api.upload_folder(folder_path=str(out), repo_id=repo, repo_type="dataset",
                                     commit_message="persd export")
    except Exception as exc:  # HfHubHTTPError (status and body), connection errors
        text = str(exc).strip().splitlines()
        raise PersdError(f"--push-to-hub {repo}: {type(exc).__name__}: {text[0] if text else ''}"[:600]) from None
    return str(getattr(info, "commit_url", info))
