"""The docs stay true to the code: option tables generated from the config dataclasses, links that resolve."""
from __future__ import annotations

import re
from pathlib import Path

from persd.engine.cli.docgen import stale_pages

REPO = Path(__file__).resolve().parents[1]


def test_option_tables_match_the_config_dataclasses():
    assert stale_pages() == [], "run `python -m persd.engine.cli.docgen` to rewrite the option tables"


def test_relative_links_resolve():
    broken = []
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "benchmarks").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []
