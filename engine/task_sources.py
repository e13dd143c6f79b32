"""Where `--tasks` rows come from: JSONL (optionally .gz), parquet files or folders, datasets saved with
`datasets.save_to_disk`, and `hf:NAME[:CONFIG][@SPLIT]` through `datasets.load_dataset`.

Every kind is read lazily: JSONL line by line, parquet a record batch at a time, saved and Hugging Face
datasets from their memory-mapped Arrow files (load_dataset prepares them once in the cache; offline,
HF_DATASETS_OFFLINE=1, it reads that cache). So a million-row set costs the memory of one batch.

A row is named in errors as `WHERE:INDEX`: the JSONL file and its line (from 1), or the parquet file /
the dataset and split and the row's index (from 0, as `dataset[i]` counts).
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson
from persd.runtime.errors import UsageError

BATCH = 512
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class Row:
    where: str  # the file, or the dataset and split
    index: int  # the JSONL line (from 1) or the row (from 0)
    raw: bytes  # what the source's digest covers (the line; the row as canonical JSON)
    obj: dict | None  # the parsed row (None for JSONL: the line is parsed by engine.tasks)


def is_dataset_source(src: str) -> bool:
    """True when `src` is read with pyarrow / datasets rather than as JSONL."""
    name = str(src)
    if name.startswith(HF_PREFIX):
        return True
    path, _split = _split_suffix(name)
    return path.is_dir() or path.suffix == ".parquet"


def _split_suffix(name: str) -> tuple[Path, str | None]:
    """`DIR@split` -> (DIR, split) when DIR exists and `DIR@split` does not."""
    path = Path(name).expanduser()
    if "@" in name and not path.exists():
        base, _, split = name.rpartition("@")
        if Path(base).expanduser().exists():
            return Path(base).expanduser(), split
    return path, None


def _canonical(row: dict) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY, default=str)


class DatasetSource:
    """Rows of a parquet file or folder, a saved dataset, or a Hugging Face dataset."""

    def __init__(self, src: str):
        self.src = str(src)
        self._dataset = None
        self._display = self.src
        if self.src.startswith(HF_PREFIX):
            self.kind = "hf"
            return
        path, self.split = _split_suffix(self.src)
        self.path = path
        if not path.exists():
            raise UsageError(f"--tasks: no such file or folder: {self.src}")
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                              or (path / "state.json").exists()):
            self.kind = "saved"
        elif path.is_file() and path.suffix == ".parquet":
            self.kind = "parquet"
            self.files = [path]
        elif path.is_dir():
            self.files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            if not self.files:
                raise UsageError(f"--tasks: {self.src} holds no parquet files and is not a saved dataset "
                                 "(datasets.save_to_disk)")
            self.kind = "parquet"
        else:
            raise UsageError(f"--tasks: {self.src} is not a parquet file")

    # ---------------------------------------------------------------- datasets (saved, hub)

    def dataset(self):
        """The `datasets.Dataset` (memory-mapped Arrow), loaded once."""
        if self._dataset is not None:
            return self._dataset
        import datasets

        if self.kind == "saved":
            try:
                ds = datasets.load_from_disk(str(self.path))
            except (FileNotFoundError, ValueError) as exc:
                raise UsageError(f"--tasks {self.src}: not a readable saved dataset: {exc}") from None
            ds, split = _pick_split(ds, self.split, self.src)
            self._display = f"{self.path}/{split}" if split else str(self.path)
        else:
            name, config, split = parse_hf(self.src)
            datasets.logging.set_verbosity_error()
            try:
                ds = datasets.load_dataset(name, config, split=split)
            except Exception as exc:  # offline without a cache, unknown name, no such config or split
                hint = " (offline: HF_DATASETS_OFFLINE=1 reads only what the cache holds)" \
                    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1" \
                    else ""
                raise UsageError(f"--tasks {self.src}: cannot load the dataset: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}") from None
            ds, split = _pick_split(ds, split, self.src)
            self._display = f"{HF_PREFIX}{name}" + (f":{config}" if config else "") + f"/{split}"
        self._dataset = ds
        return ds

    @property
    def display(self) -> str:
        if self.kind in ("saved", "hf"):
            self.dataset()
        return self._display

    def rows(self) -> Iterator[Row]:
        if self.kind == "parquet":
            yield from self._parquet_rows()
            return
        ds = self.dataset()
        where = self._display
        index = 0
        for batch in ds.iter(batch_size=BATCH):
            cols = list(batch)
            n = len(batch[cols[0]]) if cols else 0
            for i in range(n):
                row = {c: batch[c][i] for c in cols}
                yield Row(where, index, _canonical(row), row)
                index += 1

    def _parquet_rows(self) -> Iterator[Row]:
        import pyarrow.parquet as pq

        for path in self.files:
            try:
                pf = pq.ParquetFile(path)
            except Exception as exc:  # pyarrow.ArrowInvalid: not a parquet file
                raise UsageError(f"--tasks: {path}: not a readable parquet file: {exc}") from None
            index = 0
            for batch in pf.iter_batches(batch_size=BATCH):
                for row in batch.to_pylist():
                    yield Row(str(path), index, _canonical(row), row)
                    index += 1

    def count(self) -> int:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return sum(pq.ParquetFile(p).metadata.num_rows for p in self.files)
        return len(self.dataset())


def parse_hf(src: str) -> tuple[str, str | None, str | None]:
    """`hf:NAME[:CONFIG][@SPLIT]` -> (NAME, CONFIG, SPLIT)."""
    spec = src[len(HF_PREFIX):]
    spec, _, split = spec.partition("@")
    name, _, config = spec.partition(":")
    if not name:
        raise UsageError(f"--tasks: '{src}' names no dataset (hf:NAME[:CONFIG][@SPLIT])")
    return name, config or None, split or None


def _pick_split(ds, split: str | None, src: str):
    """A Dataset from a DatasetDict: the named split, else its only one."""
    if not hasattr(ds, "keys"):  # already one split
        return ds, split or ""
    names = list(ds.keys())
    if split is None:
        if len(names) == 1:
            return ds[names[0]], names[0]
        raise UsageError(f"--tasks {src}: name a split with @SPLIT (it has {', '.join(names)})")
    if split not in ds:
        raise UsageError(f"--tasks {src}: no split '{split}' (it has {', '.join(names)})")
    return ds[split], split


def jsonl_rows(path: Path, display: str) -> Iterator[Row]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                yield Row(display, lineno, raw.rstrip(b"\r\n"), None)
