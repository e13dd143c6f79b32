"""`persd report DIR [DIR ...] [--out FILE.html]`: one self-contained HTML page (and its figures as PNG files
beside it) of collect, train, eval and loop directories; a collect or eval still running is read as it stands."""
from __future__ import annotations

import argparse
from pathlib import Path

from persd.runtime.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="persd report", description=__doc__)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="collect, train, eval or loop directories (detected)")
    p.add_argument("--out", default=None,
                   help="the HTML file (default: DIR/report.html for one directory, ./report.html for several); "
                        "figures go to OUT-figures/ beside it")
    p.add_argument("--examples", type=int, default=30,
                   help="tasks sampled per outcome for the example browser (default 30)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.examples < 0:
        raise UsageError("--examples must be 0 or more")
    dirs = [Path(d) for d in args.dirs]
    out = Path(args.out) if args.out else (dirs[0] / "report.html" if len(dirs) == 1 else Path("report.html"))
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out: {out} should end in .html")
    if out.is_dir():
        raise UsageError(f"--out: {out} is a directory")
    from persd.engine.report.build import ReportConfig, build_report

    rep = build_report(ReportConfig(dirs, out, examples_per_outcome=args.examples))
    print(f"report: {rep.html}  ({len(rep.sections)} sections, {len(rep.figures)} figures in "
          f"{rep.html.with_name(rep.html.stem + '-figures')}/, {rep.seconds:.1f}s)")
    return 0
