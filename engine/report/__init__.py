"""`persd report`: one self-contained HTML page (plus PNG figures) from collect, train, eval and loop directories.

    detect.py    which kind of directory a path is
    collect.py   a collect directory (sealed shards, journals, manifests, timeline) -> CollectSummary
    train.py     a train directory (metrics.jsonl, train.json) -> TrainSummary
    evalrun.py   an eval directory (summary.json, results.jsonl or its journal) -> EvalSummary
    loop.py      a loop directory (loop.json, round-N/) -> LoopSummary
    examples.py  the example browser: a seeded sample per outcome, its texts, the attempt -> fix diff
    plots.py     matplotlib (Agg) figures, saved as PNG
    page.py      the HTML page: every text from a model or a task is escaped
    build.py     all of it together: build_report(dirs, out)
"""
from __future__ import annotations

from persd.engine.rundirs.kinds import hint  # its older home: the line lives with the run directories

__all__ = ["hint"]
