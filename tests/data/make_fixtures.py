"""Rebuild the test fixtures in this folder from the full data sets (run by hand; the tests never call it).

    python tests/data/make_fixtures.py /path/to/shared/data

Takes the first MBPP_TASKS problems of mbpp.jsonl (file order: task ids 1, 2, ...) and the first
RECORDS_PER_FILE records of each PersDistill file, byte for byte, and copies the 307-id list whole.
Where each comes from and its licence: README.md beside this script.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

MBPP_TASKS = 40
RECORDS_PER_FILE = 100
PERSDISTILL_FILES = ("persd.jsonl", "inpd.jsonl", "refine-gold.jsonl")


def head(src: Path, dst: Path, n: int) -> None:
    with src.open("rb") as fh:
        lines = [next(fh) for _ in range(n)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join(line.rstrip(b"\r\n") + b"\n" for line in lines))


def main(data_dir: str) -> None:
    src, here = Path(data_dir), Path(__file__).resolve().parent
    head(src / "mbpp.jsonl", here / "mbpp.jsonl", MBPP_TASKS)
    shutil.copyfile(src / "mbpp-eval-ids-307.json", here / "mbpp-eval-ids-307.json")
    for name in PERSDISTILL_FILES:
        head(src / "persdistill-codegen6b" / name, here / "persdistill-codegen6b" / name, RECORDS_PER_FILE)


if __name__ == "__main__":
    main(sys.argv[1])
