"""`persd bench export`: seconds and peak memory of `persd export` on a synthetic collect directory of about
100k records (bench/report_synth.py), per output format, against the conversion script a user writes without
it (read every record into a list, `datasets.Dataset.from_list(...).to_parquet(...)`), in the same run.

Each measurement is its own process (`python -m persd export ...`), so its peak resident memory
(ru_maxrss from wait4) is its own.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from persd.bench.report_synth import write_collect
from persd.config import parser_for

NAIVE = """
import sys, orjson, datasets
from pathlib import Path
rows = []
for p in sorted(Path(sys.argv[1], "shards").glob("shard-*.jsonl")):
    if p.name.endswith(".results.jsonl"):
        continue
    for line in p.read_bytes().splitlines():
        r = orjson.loads(line)
        r["meta"] = orjson.dumps(r["meta"]).decode()
        rows.append(r)
datasets.disable_progress_bars()
datasets.Dataset.from_list(rows).to_parquet(sys.argv[2])
"""


def timed(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """(seconds, peak RSS in MiB, exit status) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, proc.returncode


def main(argv: list[str]) -> int:
    p = parser_for("bench export", description=__doc__)
    p.add_argument("--tasks", type=int, default=91_000, help="synthetic tasks (default 91000: about 100k records)")
    p.add_argument("--json", default="runs/bench/export.json")
    p.add_argument("--keep", default=None, help="write the synthetic directory and the exports here")
    args = p.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="persd-bench-export-"))
    env = {**os.environ, "HF_DATASETS_CACHE": str(root / "hf-cache")}
    try:
        src = write_collect(root / "collect", args.tasks)
        n_records = sum(1 for f in (src / "shards").glob("shard-*.jsonl") if not f.name.endswith(".results.jsonl")
                        for _ in open(f, "rb"))
        size_mb = sum(f.stat().st_size for f in (src / "shards").glob("*.jsonl")) / 2**20
        rows = []
        for fmt in ("parquet", "hf", "jsonl"):
            out = root / f"export-{fmt}"
            shutil.rmtree(out, ignore_errors=True)
            s, rss, _ = timed([sys.executable, "-m", "persd", "export", str(src), "--out", str(out),
                               "--format", fmt], env)
            rows.append({"method": f"persd export --format {fmt}", "seconds": s, "peak_rss_mib": rss})
        out = root / "naive.parquet"
        s, rss, _ = timed([sys.executable, "-c", NAIVE, str(src), str(out)], env)
        rows.append({"method": "naive: all records in a list, Dataset.from_list().to_parquet()", "seconds": s,
                     "peak_rss_mib": rss})
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"export of {n_records} records ({size_mb:.0f} MiB of shards), load "
                        f"{os.getloadavg()[0]:.1f}, {os.cpu_count()} cores")
    for col in ("method", "seconds", "peak RSS MiB"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['seconds']:.1f}", f"{r['peak_rss_mib']:.0f}")
    Console(width=120).print(table)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"records": n_records, "shards_mib": size_mb, "rows": rows,
                                   "load": os.getloadavg(), "cores": os.cpu_count()}, option=orjson.OPT_INDENT_2))
    print(f"written: {path}")
    return 0
