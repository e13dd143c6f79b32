"""build_report(dirs, out): read each directory, draw its figures, write OUT.html and OUT-figures/*.png.

A loop directory brings its rounds' collect, train and eval sections with it; two or more eval directories
(given directly) add the comparison table of the paper (model x task set, direct and after refinement).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from persd.engine.report import page
from persd.engine.report.collect import OUTCOME_ORDER, read_collect
from persd.engine.report.detect import detect
from persd.engine.report.evalrun import read_eval
from persd.engine.report.loop import read_loop
from persd.engine.report.page import Figure, Section
from persd.engine.report.train import read_train
from persd.engine.rundirs.files import atomic_write
from persd.runtime.errors import PersdError


@dataclass
class ReportConfig:
    dirs: list[Path]
    out: Path
    examples_per_outcome: int = 30
    """tasks sampled per outcome for the example browser (seeded: the same directory, the same sample)"""
    seed: int = 0


@dataclass
class Report:
    html: Path
    figures: list[Path] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Builder:
    def __init__(self, cfg: ReportConfig):
        self.cfg = cfg
        self.sections: list[Section] = []
        self.evals = []
        self._anchors: set[str] = set()

    def anchor(self, kind: str) -> str:
        n = 1
        while f"{kind}-{n}" in self._anchors:
            n += 1
        self._anchors.add(f"{kind}-{n}")
        return f"{kind}-{n}"

    def figs(self, anchor: str, made: dict[str, tuple[str, bytes | None]]) -> dict[str, Figure]:
        return {key: Figure(f"{anchor}-{key}", title, data) for key, (title, data) in made.items() if data}

    def add(self, path: Path, label: str | None = None) -> None:
        kind = detect(path)
        getattr(self, f"add_{kind}")(Path(path), label or str(path))

    def add_collect(self, path: Path, label: str) -> None:
        from persd.engine.report import plots

        s = read_collect(path, self.cfg.examples_per_outcome, self.cfg.seed)
        a = self.anchor("collect")
        figs = self.figs(a, {"share": ("outcomes", plots.outcome_share(s)), "funnel": ("funnel", plots.funnel(s)),
                             "turns": ("outcome per teacher turn", plots.turns(s)),
                             "errors": ("error kinds", plots.error_kinds(s)),
                             "time": ("tokens, cost, rate limits and throughput over time", plots.over_time(s)),
                             "replicas": ("Ray replicas", plots.replicas(s))})
        self.sections.append(Section(a, "collect", f"collect: {label}", page.collect_body(s, figs),
                                     list(figs.values())))
        total = {o: s.outcomes[o] for o in OUTCOME_ORDER}
        self.sections.append(Section(f"{a}-examples", "examples", f"examples: {label}",
                                     page.example_browser(a, s.examples, total)))

    def add_train(self, path: Path, label: str) -> None:
        from persd.engine.report import plots

        s = read_train(path)
        a = self.anchor("train")
        figs = self.figs(a, {"curves": ("loss, learning rate, tokens/s, padding", plots.train_curves(s))})
        self.sections.append(Section(a, "train", f"train: {label}", page.train_body(s, figs), list(figs.values())))

    def add_eval(self, path: Path, label: str, compare: bool = True) -> None:
        from persd.engine.report import plots

        s = read_eval(path)
        if compare:
            self.evals.append(s)
        a = self.anchor("eval")
        figs = self.figs(a, {"passk": ("pass@k per refine step, against k; statuses", plots.eval_passk(s))})
        self.sections.append(Section(a, "eval", f"eval: {label}", page.eval_body(s, figs), list(figs.values())))

    def add_loop(self, path: Path, label: str) -> None:
        from persd.engine.report import plots

        s = read_loop(path)
        a = self.anchor("loop")
        figs = self.figs(a, {"rounds": ("per round: tasks, passes, records, cost, pass@1", plots.loop_rounds(s))})
        self.sections.append(Section(a, "loop", f"loop: {label}", page.loop_body(s, figs), list(figs.values())))
        for r in s.rounds:
            d = path / f"round-{r.round}"
            name = "base" if r.round == 0 else f"round {r.round}"
            if (d / "collect").is_dir():
                self.add_collect(d / "collect", f"{label} {name}")
            if (d / "train").is_dir():
                self.add_train(d / "train", f"{label} {name}")
            if (d / "eval").is_dir():
                self.add_eval(d / "eval", f"{label} {name}", compare=False)

    def comparison(self) -> None:
        if len(self.evals) < 2:
            return
        self.sections.insert(0, Section("comparison", "comparison", "comparison: pass@1 by model and task set",
                                     page.comparison_table(self.evals)))


def build_report(cfg: ReportConfig) -> Report:
    t0 = time.perf_counter()
    b = Builder(cfg)
    for d in cfg.dirs:
        detect(d)  # every directory checked before any work
    for d in cfg.dirs:
        b.add(d)
    b.comparison()
    out = Path(cfg.out)
    fig_dir = out.with_name(f"{out.stem}-figures")
    written: list[Path] = []
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if any(s.figures for s in b.sections):
            fig_dir.mkdir(exist_ok=True)
        for s in b.sections:
            for f in s.figures:
                p = fig_dir / f"{f.name}.png"
                p.write_bytes(f.data)
                written.append(p)
        subtitle = ("  ·  ".join(f"{detect(d)}: {d}" for d in cfg.dirs)
                    + time.strftime("  ·  written %Y-%m-%d %H:%M UTC", time.gmtime()))
        html = page.page("persd report", subtitle, b.sections)
        atomic_write(out, html)
    except OSError as exc:
        raise PersdError(f"cannot write the report {out}: {exc.strerror or exc}") from None
    return Report(out, written, [s.anchor for s in b.sections], time.perf_counter() - t0)
