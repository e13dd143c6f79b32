"""The option tables in docs/*.md, generated from the commands' config dataclasses.

A docs page holds a table between `<!-- options:NAME -->` and `<!-- /options -->`; this module writes it
from the fields (flag, default, whether it changes results, help), so a default is written once, in the
field. `tests/test_docs.py` fails when a page is out of date; `python -m persd.engine.cli.docgen` rewrites
the tables.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from persd.config import flag_of, leaves, renamed, shown_default

REPO = Path(__file__).resolve().parents[2]


def _configs() -> dict[str, tuple[type, str]]:
    from persd.engine.cli.commands.export import ExportConfig
    from persd.engine.collect.config import CollectConfig
    from persd.engine.evaluation.config import EvalConfig
    from persd.engine.rounds import LoopConfig
    from persd.trainers.config import TrainConfig

    return {"collect": (CollectConfig, "docs/collect.md"), "eval": (EvalConfig, "docs/eval.md"),
            "train": (TrainConfig, "docs/train.md"), "loop": (LoopConfig, "docs/loop.md"),
            "export": (ExportConfig, "docs/export.md")}


def options_table(cls: type) -> str:
    """One row per option, a section's as `--teacher.rpm`; a renamed option names its old flag."""
    old = {path: flag_of(name) for name, path in renamed(cls).items()}
    rows = ["| option | default | changes results | what |", "| --- | --- | --- | --- |"]
    for path, _, f, default in leaves(cls):
        if not f.metadata["cli"] or f.metadata["nested"] is not None:
            continue
        name = f.name if f.metadata["positional"] else ("--" + path.rpartition(".")[0] + "." + flag_of(f)[2:]
                                                          if "." in path else flag_of(f))
        what = f.metadata["help"].replace("|", "\\|").replace("\n", " ")
        if path in old:
            what += f" (was `{old[path]}`)"
        shown = shown_default(f, default).replace("|", "\\|")
        rows.append(f"| `{name}` | {shown} | {'yes' if f.metadata['changes_results'] else ''} | {what} |")
    return "\n".join(rows)



def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- options:{re.escape(name)} -->\n)(?:.*?\n)??(<!-- /options -->)", re.S)


def render(page_text: str, name: str, cls: type) -> str:
    return _block(name).sub(lambda m: m.group(1) + options_table(cls) + "\n" + m.group(2), page_text)


def stale_pages(root: Path = REPO) -> list[str]:
    """Pages whose table differs from the dataclass (or that lack the table)."""
    out = []
    for name, (cls, page) in _configs().items():
        text = (root / page).read_text()
        if not _block(name).search(text) or render(text, name, cls) != text:
            out.append(f"{page} (options:{name})")
    return out


def main() -> int:
    for name, (cls, page) in _configs().items():
        path = REPO / page
        text = path.read_text()
        if not _block(name).search(text):
            print(f"{page}: no <!-- options:{name} --> block", file=sys.stderr)
            return 1
        path.write_text(render(text, name, cls))
    print("option tables written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
