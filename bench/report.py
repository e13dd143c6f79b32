"""`persd bench report`: seconds for `persd report` on a synthetic collect directory of N tasks (100k by default),
against a plain full read of the same files (every result and record line parsed) measured in the same run;
the page's size and element count; and, where Chromium is installed, how long a headless browser takes to
load and render the page, against the same browser on a 20-task report (its start-up cost)."""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import orjson
from persd.bench.report_synth import write_collect


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="persd bench report", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=100_000,
                   help="tasks in the synthetic collect directory (default 100000)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement (default 3)")
    p.add_argument("--examples", type=int, default=30, help="examples per outcome (default 30, the command's default)")
    p.add_argument("--json", default="runs/bench/report.json", help="where to write the figures")
    p.add_argument("--keep", default=None, help="write the synthetic directory and the report here (kept)")
    return p


def full_read(d: Path) -> int:
    """The baseline: every line of every results and records file parsed."""
    n = 0
    for f in sorted((d / "shards").glob("shard-*.jsonl")):
        with open(f, "rb") as fh:
            for raw in fh:
                orjson.loads(raw)
                n += 1
    return n


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def browser_load_s(html: Path, repeats: int) -> float | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        return None
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as prof:
            t = time.perf_counter()
            subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={prof}",
                            "--window-size=1280,1800", f"--screenshot={prof}/s.png", html.as_uri()],
                           capture_output=True, timeout=300, check=True)
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from persd.engine.report.build import ReportConfig, build_report
    from persd.engine.report.collect import read_collect

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="persd-bench-report-"))
    try:
        big = write_collect(root / "collect", args.tasks)
        small = write_collect(root / "small", 20)
        size = sum(f.stat().st_size for f in (big / "shards").iterdir())
        load = os.getloadavg()
        t_full, lines = timed(lambda: full_read(big), args.repeats)
        t_read, _ = timed(lambda: read_collect(big, args.examples), args.repeats)
        t_report, rep = timed(lambda: build_report(ReportConfig([big], root / "report.html", args.examples)),
                              args.repeats)
        build_report(ReportConfig([small], root / "small.html", args.examples))
        html = (root / "report.html").read_text()
        elements = html.count("<") - html.count("&lt;")
        b_big = browser_load_s(root / "report.html", args.repeats)
        b_small = browser_load_s(root / "small.html", args.repeats)
        rows = {
            "tasks": args.tasks, "shard_bytes": size, "lines": lines, "loadavg_1m_at_start": round(load[0], 2),
            "baseline_full_parse_s": round(t_full, 3), "read_collect_s": round(t_read, 3),
            "report_total_s": round(t_report, 3), "page_bytes": len(html.encode()), "page_elements": elements,
            "figures": len(rep.figures), "examples": html.count('<details class="ex"'),
            "browser_screenshot_s": None if b_big is None else round(b_big, 2),
            "browser_screenshot_20_tasks_s": None if b_small is None else round(b_small, 2),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    width = max(map(len, rows))
    print(f"persd bench report: {args.tasks:,} tasks, median of {args.repeats}")
    for k, v in rows.items():
        print(f"  {k:<{width}}  {v:,}" if isinstance(v, (int, float)) else f"  {k:<{width}}  {v}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    print(f"figures: {out}")
    return 0
