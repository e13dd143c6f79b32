"""The HTML page: one file, inline CSS, figures as base64 PNG, one small script (filter and search of the
example browser) that reads only data-* attributes and sets `hidden`.

Everything that comes from a run (task text, completions, feedback, task ids, model names, paths) goes through
`esc` (html.escape with quotes); a Content-Security-Policy allows only this page's own script (by nonce), no
network and images from data: URIs only, so even a mistake in escaping could not run a completion's script.
"""
from __future__ import annotations

import base64
import html
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable

from persd.engine.collect.cluster import utilisation
from persd.engine.failures import CAUSES
from persd.engine.report.collect import OUTCOME_ORDER, CollectSummary, error_kind
from persd.engine.report.evalrun import EvalSummary
from persd.engine.report.examples import Example, clip, diff_lines
from persd.engine.report.loop import LoopSummary
from persd.engine.report.train import TrainSummary


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


@dataclass
class Figure:
    name: str  # file name stem
    title: str
    data: bytes


@dataclass
class Section:
    anchor: str
    kind: str
    title: str
    body: str
    figures: list[Figure] = field(default_factory=list)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2327;background:#f6f7f9}
header{background:#263238;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cfd8dc;font-size:12px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #dde1e6;padding:6px 24px;z-index:2}
nav a{margin-right:14px;color:#1565c0;text-decoration:none;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
td,th{border:1px solid #e0e3e7;padding:3px 9px;text-align:right}th{background:#f1f3f5}
td:first-child,th:first-child{text-align:left}
.kv td:first-child{color:#546e7a}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.note{color:#8d6e63;font-size:12px;margin:2px 0}
pre{background:#f8f9fb;border:1px solid #e3e6ea;border-radius:4px;padding:6px 8px;overflow:auto;max-height:360px;
font:12px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}
.diff .add{background:#e6f4ea;color:#1b5e20;display:block}.diff .del{background:#fdecea;color:#b71c1c;display:block}
.diff .hunk{color:#6a1b9a;display:block}.diff .ctx{display:block;color:#455a64}
details.ex{border:1px solid #e0e3e7;border-radius:4px;margin:6px 0;padding:4px 10px;background:#fff}
details.ex>summary{cursor:pointer;font-size:13px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:11px;color:#fff;margin:0 6px}
.b-student_passed{background:#2e7d32}.b-refined{background:#1565c0}.b-unresolved{background:#e65100}.b-error{background:#757575}
.controls{display:flex;gap:10px;align-items:center;margin:6px 0}
.controls input{padding:4px 8px;width:260px}.controls select{padding:3px}
.count{color:#546e7a;font-size:12px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.cols>div{min-width:0}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:8px 16px;align-items:start}
.top{display:grid;grid-template-columns:minmax(320px,420px) 1fr;gap:16px;align-items:start}
"""

SCRIPT = """
document.querySelectorAll('.browser').forEach(function (root) {
  var q = root.querySelector('input'), sel = root.querySelector('select'), count = root.querySelector('.count');
  var items = root.querySelectorAll('details.ex');
  function apply() {
    var text = q.value.trim().toLowerCase(), want = sel.value, shown = 0;
    items.forEach(function (d) {
      var ok = (!want || d.dataset.outcome === want) && (!text || d.dataset.task.toLowerCase().indexOf(text) >= 0);
      d.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + ' of ' + items.length + ' shown';
  }
  q.addEventListener('input', apply);
  sel.addEventListener('change', apply);
  apply();
});
"""


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.4g}"
    if isinstance(x, int):
        return f"{x:,}"
    return esc(x)


def kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{esc(k)}</td><td>{v if isinstance(v, Raw) else num(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


class Raw(str):
    """Already-escaped HTML."""


def table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else num(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def img(fig: Figure) -> str:
    data = base64.b64encode(fig.data).decode("ascii")
    return f'<img alt="{esc(fig.title)}" title="{esc(fig.title)}" src="data:image/png;base64,{data}">'


def notes(lines: list[str]) -> str:
    return "".join(f'<p class="note">{esc(n)}</p>' for n in lines)


def settings_block(title: str, settings: dict[str, Any]) -> str:
    if not settings:
        return ""
    rows = [(k, Raw(esc(v if not isinstance(v, (dict, list)) else str(v)))) for k, v in sorted(settings.items())]
    return f"<details><summary>{esc(title)}</summary>{kv_table(rows)}</details>"


# ------------------------------------------------------------------ collect


def collect_body(s: CollectSummary, figs: dict[str, Figure]) -> str:
    tried = s.outcomes["student_passed"] + s.failed
    t = s.metrics.get("teacher") or {}
    cost = t.get("cost_usd")
    n_records = sum(s.records.values())
    rows: list[tuple[str, Any]] = [
        ("state", s.state), ("student", s.student), ("teacher", s.teacher), ("tasks", s.source),
        ("tasks finished", Raw(f"{s.tasks_done:,} of {s.tasks_total:,}")),
        ("  sealed / journaled", Raw(f"{s.sealed_tasks:,} / {s.journaled_tasks:,}")),
        ("shards sealed", Raw(f"{s.shards_sealed:,} of {s.shards_total:,}")),
        ("student pass rate", Raw(pct(s.outcomes["student_passed"] / tried if tried else None))),
        ("refined + verified (of the failures)", Raw(pct(s.outcomes["refined"] / s.failed if s.failed else None))),
        ("records", n_records),
        ("teacher calls", s.teacher_calls),
        ("teacher tokens in / out", Raw(f"{s.teacher_tokens_in:,} / {s.teacher_tokens_out:,}")),
        ("teacher tokens per refined task", (s.teacher_tokens_in + s.teacher_tokens_out) / s.outcomes["refined"]
         if s.outcomes["refined"] else None),
        ("teacher cost (USD)", cost),
        *([("  sync / through the Batch API (USD)", Raw(f"{t.get('cost_usd_sync', 0):.4f} / "
                                                         f"{t.get('cost_usd_batch', 0):.4f}"))]
          if t.get("batch_submitted") else []),
        ("cost per record (USD)", cost / n_records if cost is not None and n_records else None),
        ("HTTP 429 / retries", Raw(f"{t.get('http_429', '-')} / {t.get('retries', '-')}")),
        ("retries by cause", Raw(esc(_pairs(t.get("retries_by_cause"))))),
        ("teacher finish reasons", Raw(esc(_pairs(t.get("finish_reasons"))))),
        ("wall time (s, last run)", s.metrics.get("wall_s")),
    ]
    if s.metrics.get("replicas"):  # --ray: how full the cluster's replicas were kept
        use = utilisation(s.metrics["replicas"])
        rows.append(("Ray replica utilisation", Raw(esc(", ".join(f"{k} {pct(v)}" for k, v in use.items())))))
    side = "".join(img(figs[k]) for k in ("share", "funnel") if k in figs)
    out = [f'<div class="top"><div>{kv_table(rows)}</div><div>{side}</div></div>', notes(s.notes)]
    out.append('<div class="figs">' + "".join(img(figs[k]) for k in ("turns", "errors") if k in figs) + "</div>")
    if "time" in figs:
        out.append(img(figs["time"]))
    if "replicas" in figs:
        out.append(img(figs["replicas"]))
    if s.error_kinds:
        out.append(table(["error kind (student attempts)", "tasks"],
                         [[k, v] for k, v in s.error_kinds.most_common(20)]))
    if s.failures:  # tasks failed by one request's own fault (persd.engine.failures): see docs/failures.md
        out.append(table(["failed request's cause", "tasks", "what it means"],
                         [[k, v, CAUSES.get(k, "")] for k, v in s.failures.most_common()]))
    if s.repaired:
        out.append(f'<p class="note">{s.repaired:,} student answer(s) carried bad text (NUL, lone surrogate, bytes '
                   f'that are not UTF-8, control characters), replaced by U+FFFD and kept.</p>')
    out.append(settings_block("collect settings", s.config))
    return "".join(out)


def _pairs(d: Any) -> str:
    return (", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in d.items())
            if isinstance(d, dict) and d else "-")


def example_browser(anchor: str, examples: list[Example], total: dict[str, int]) -> str:
    if not examples:
        return "<p>No examples: no finished task yet, or --examples 0.</p>"
    shown = {o: sum(1 for e in examples if e.outcome == o) for o in OUTCOME_ORDER}
    options = '<option value="">all outcomes</option>' + "".join(
        f'<option value="{o}">{o} ({shown[o]} of {total.get(o, 0):,})</option>' for o in OUTCOME_ORDER if shown[o])
    items = "".join(example_item(e) for e in examples)
    return (f'<div class="browser" id="{esc(anchor)}-browser"><p class="note">A seeded sample of tasks per outcome '
            f'(the counts above cover every task). Every text here is model or task output, shown escaped.</p>'
            f'<div class="controls"><select aria-label="outcome">{options}</select>'
            f'<input type="search" placeholder="search task id" aria-label="search task id">'
            f'<span class="count"></span></div>{items}</div>')


def pre(text: str | None) -> str:
    return f"<pre>{esc(clip(text))}</pre>"


def diff_block(before: str | None, after: str | None) -> str:
    lines = diff_lines(before, after)
    if not lines:
        return "<pre>(no difference)</pre>"
    return '<pre class="diff">' + "".join(f'<span class="{k}">{esc(line)}</span>' for k, line in lines) + "</pre>"


def example_item(e: Example) -> str:
    kind = error_kind(e.error or e.feedback, e.status) if e.outcome != "student_passed" else ""
    if e.failure:
        kind = f"{e.failure.get('by', '')} request failed: {e.failure.get('cause', '')}"
    head = (f'<summary><b>{esc(e.task_id)}</b><span class="badge b-{esc(e.outcome)}">{esc(e.outcome)}</span>'
            f'{esc(kind)}' + (f" · {e.refine_turns} teacher turn(s)" if e.refine_turns else "")
            + (f" · {e.teacher_tokens:,} teacher tokens" if e.teacher_tokens else "") + "</summary>")
    parts = []
    if e.prompt:
        parts.append(f"<h3>task</h3>{pre(e.prompt)}")
    if e.failure:
        parts.append(f"<h3>failed request: {esc(e.failure.get('cause'))} ({esc(e.failure.get('by'))})</h3>"
                     f'<p class="note">{esc(CAUSES.get(str(e.failure.get("cause")), ""))}; the provider said:</p>'
                     f"{pre(e.failure.get('message'))}")
    if e.outcome == "error":
        parts.append(f"<h3>error</h3>{pre(e.error or e.feedback)}")
    elif e.outcome == "student_passed":
        parts.append('<p class="note">The student passed the tests: no lesson needed, no teacher call.</p>')
    else:
        attempt = e.attempt if e.attempt is not None else "(not recorded: this run predates attempts in result lines)"
        parts.append(f'<div class="cols"><div><h3>student\'s attempt ({esc(e.status)})</h3>{pre(attempt)}</div>'
                     f"<div><h3>execution feedback</h3>{pre(e.feedback)}</div></div>")
        if e.outcome == "refined" and e.solution is not None:
            parts.append("<h3>teacher's verified fix, as a diff against the attempt</h3>"
                         f"{diff_block(e.attempt, e.solution)}")
        elif e.outcome == "unresolved":
            if e.refinement is not None:
                parts.append(f"<h3>teacher's last program (failed), as a diff against the attempt</h3>"
                             f"{diff_block(e.attempt, e.refinement)}")
            parts.append(f"<h3>why the teacher's program failed</h3>{pre(e.refine_feedback)}")
    return (f'<details class="ex" data-outcome="{esc(e.outcome)}" data-task="{esc(e.task_id)}">{head}'
            f'{"".join(parts)}</details>')


# ------------------------------------------------------------------ train, eval, loop


def train_body(s: TrainSummary, figs: dict[str, Figure]) -> str:
    last = s.steps[-1] if s.steps else {}
    rows = [("finished (final/ written)", "yes" if s.finished else "no"), ("steps logged", len(s.steps)),
            ("last step", last.get("step")), ("last loss", last.get("loss")),
            ("held-out loss (last)", s.eval_losses[-1][1] if s.eval_losses else None),
            ("tokens/s (last)", last.get("tokens_per_s"))]
    rows += [(k, v) for k, v in s.result.items() if k in ("examples", "padding", "zero_stage", "precision",
                                                            "world_size", "params", "final_loss", "steps")]
    out = [kv_table(rows), notes(s.notes)]
    if "curves" in figs:
        out.append(img(figs["curves"]))
    out.append(settings_block("training settings", s.settings))
    return "".join(out)


def eval_body(s: EvalSummary, figs: dict[str, Figure]) -> str:
    ks = sorted({k for d in s.pass_at.values() for k in d})
    rows = [["0 (direct)" if st == 0 else f"{st} (refine)"] + [Raw(pct(s.pass_at[st].get(k))) for k in ks]
            + [len(s.solved[st])] + [s.statuses[st].get(x, 0) for x in ("passed", "failed", "timeout", "error")]
            for st in s.steps]
    out = [kv_table([("student", s.model), ("tasks", s.task_set), ("tasks evaluated", s.tasks),
                     ("samples per task", s.n)]), notes(s.notes),
           table(["step"] + [f"pass@{k}" for k in ks] + ["tasks solved", "passed", "failed", "timeout", "error"], rows)]
    if "passk" in figs:
        out.append(img(figs["passk"]))
    if s.failures:  # samples whose request failed for its own content (persd.engine.failures)
        out.append(table(["failed request's cause", "samples", "what it means"],
                         [[k, v, CAUSES.get(k, "")] for k, v in s.failures.most_common()]))
        for f in s.failure_examples:
            out.append(f'<details class="ex"><summary><b>{esc(f["task_id"])}</b> sample {esc(f.get("sample"))} step '
                       f'{esc(f["step"])}: {esc(f.get("cause"))}</summary><h3>the provider said</h3>'
                       f'{pre(f.get("message"))}</details>')
    if len(s.steps) > 1:
        out.append(f"<h3>per task: {len(s.flips_up)} solved only after refinement, {len(s.flips_down)} solved "
                   f"directly but not after</h3>")
        if s.flips_up:
            out.append(f"<pre>{esc(', '.join(s.flips_up[:500]))}</pre>")
        if s.flips_down:
            out.append(f"<p>lost after refinement:</p><pre>{esc(', '.join(s.flips_down[:500]))}</pre>")
        for f in s.flip_examples:
            out.append(f'<details class="ex"><summary><b>{esc(f.task_id)}</b> fixed by refinement</summary>'
                       f"<h3>direct sample's feedback</h3>{pre(f.feedback)}"
                       "<h3>refined sample, as a diff against the direct one</h3>"
                       f"{diff_block(f.before, f.after)}</details>")
    out.append(settings_block("protocol", s.summary.get("protocol") or {}))
    return "".join(out)


def comparison_table(evals: list[EvalSummary]) -> str:
    """The paper's table: model x task set, pass@1 directly and after refinement."""
    sets = sorted({task_set_label(e) for e in evals})
    models = sorted({e.model for e in evals})
    best: dict[tuple[str, str], EvalSummary] = {(e.model, task_set_label(e)): e for e in evals}
    head = ["model"] + [f"{ts} {w}" for ts in sets for w in ("pass@1", "after refine")]
    rows = []
    for m in models:
        row: list[Any] = [m]
        for ts in sets:
            e = best.get((m, ts))
            if e is None:
                row += ["-", "-"]
                continue
            last = e.steps[-1] if e.steps else 0
            row += [Raw(pct(e.pass1(0))), Raw(pct(e.pass1(last)) if last else "-")]
        rows.append(row)
    return table(head, rows)


def task_set_label(e: EvalSummary) -> str:
    name = e.task_set.lower()
    if "humaneval" in name:
        return "HumanEval"
    if "mbpp" in name:
        return "MBPP"
    return e.task_set.rsplit("/", 1)[-1]


def loop_body(s: LoopSummary, figs: dict[str, Figure]) -> str:
    rows = [["base" if r.round == 0 else r.round, r.tasks, r.student_passed, r.refined, r.unresolved, r.records,
             r.train_records, r.cost_usd, Raw(pct(r.pass1)), Raw(pct(r.pass1_refined))] for r in s.rounds]
    out = [table(["round", "tasks", "student passed", "refined", "unresolved", "records", "trained on",
                  "cost (USD)", "pass@1", "pass@1 after refine"], rows), notes(s.notes)]
    if "rounds" in figs:
        out.append(img(figs["rounds"]))
    out.append(settings_block("loop settings", s.settings))
    return "".join(out)


# ------------------------------------------------------------------ the page


def page(title: str, subtitle: str, sections: list[Section]) -> str:
    nonce = secrets.token_urlsafe(16)
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
           "base-uri 'none'; form-action 'none'")
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.anchor)}" class="kind-{esc(s.kind)}"><h2>{esc(s.title)}</h2>{s.body}</section>'
                   for s in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav><main>{body}</main>"
            f'<script nonce="{nonce}">{SCRIPT}</script></body></html>\n')
