"""The report's figures, drawn with matplotlib on the Agg backend (no display, no network) and saved as PNG.

Each function takes a summary and returns PNG bytes, or None where the data for that figure is absent.
Figures stay small (a few tens of kB) whatever the size of the run: series are thinned before plotting.
"""
from __future__ import annotations

import io
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from persd.engine.report.collect import OUTCOME_ORDER, CollectSummary  # noqa: E402
from persd.engine.report.evalrun import EvalSummary  # noqa: E402
from persd.engine.report.loop import LoopSummary  # noqa: E402
from persd.engine.report.train import TrainSummary  # noqa: E402

COLORS = {"student_passed": "#2e7d32", "refined": "#1565c0", "unresolved": "#e65100", "error": "#757575"}
DPI = 100
plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
                     "grid.alpha": 0.3, "figure.dpi": DPI, "savefig.dpi": DPI})


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _thin(xs: list, ys: list, points: int = 1500) -> tuple[list, list]:
    step = max(1, len(xs) // points)
    return xs[::step], ys[::step]


def _barh(ax, labels: list[str], values: list[float], colors: list[str] | None = None) -> None:
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=colors or "#1565c0")
    ax.set_yticks(y, labels)
    top = max(values, default=0) or 1
    for yi, v in zip(y, values):
        ax.text(v + top * 0.01, yi, f"{v:,.0f}", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.15)
    ax.grid(axis="y", visible=False)


# ------------------------------------------------------------------ collect


def funnel(s: CollectSummary) -> bytes | None:
    if not s.tasks_done and not s.tasks_total:
        return None
    stages = [("tasks", s.tasks_total or s.tasks_done, "#455a64"), ("finished", s.tasks_done, "#607d8b"),
              ("student passed", s.outcomes["student_passed"], COLORS["student_passed"]),
              ("student failed", s.failed, "#c62828"),
              ("refined + verified", s.outcomes["refined"], COLORS["refined"]),
              ("unresolved", s.outcomes["unresolved"], COLORS["unresolved"]),
              ("error", s.outcomes["error"], COLORS["error"])]
    stages += [(f"records: {fmt}", n, "#6a1b9a") for fmt, n in sorted(s.records.items())]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(stages) + 0.9))
    _barh(ax, [a for a, _, _ in stages], [b for _, b, _ in stages], [c for _, _, c in stages])
    ax.set_title("funnel: tasks -> student -> teacher -> verified records")
    return png(fig)


def replicas(s: CollectSummary) -> bytes | None:
    """--ray: each replica's utilisation (request slots kept busy over slots offered while up), in percent."""
    rows = [r for pool in (s.metrics.get("replicas") or {}).values() for r in pool]
    if not rows:
        return None
    labels = [f"{r['name']} ({r['done']:,} done, {r['restarts']} restarts)" for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 0.9))
    _barh(ax, labels, [100 * r.get("utilisation", 0.0) for r in rows],
          ["#1565c0" if r["name"].startswith("student") else "#2e7d32" for r in rows])
    ax.set_title("Ray replicas: utilisation (% of their request slots busy while up)")
    return png(fig)


def turns(s: CollectSummary) -> bytes | None:
    if not s.turns:
        return None
    n = max((t for c in s.turns.values() for t in c), default=1)
    xs = list(range(1, max(1, n) + 1))
    fig, ax = plt.subplots(figsize=(5.5, 3))
    ref = s.turns.get("refined", Counter())
    ax.bar([x - 0.2 for x in xs], [ref.get(x, 0) for x in xs], width=0.4, color=COLORS["refined"],
           label="verified on this turn")
    unres = sum(s.turns.get("unresolved", Counter()).values())
    ax.bar([n + 0.2], [unres], width=0.4, color=COLORS["unresolved"], label="unresolved after all turns")
    ax.set_xticks(xs)
    ax.set_xlabel("teacher turn")
    ax.set_ylabel("tasks")
    ax.set_title("outcome per teacher turn")
    ax.legend(fontsize=8)
    return png(fig)


def error_kinds(s: CollectSummary, top: int = 12) -> bytes | None:
    if not s.error_kinds and not s.refine_error_kinds:
        return None
    panels = [(c, t) for c, t in ((s.error_kinds, "student's failing attempts"),
                                  (s.refine_error_kinds, "teacher's last failing program (unresolved)")) if c]
    heights = [0.28 * min(top + 1, len(c)) + 0.7 for c, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(5.5, sum(heights) + 0.3), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (counts, title) in zip(axes[:, 0], panels):
        items = counts.most_common(top)
        rest = sum(counts.values()) - sum(v for _, v in items)
        if rest:
            items.append(("(other kinds)", rest))
        _barh(ax, [k for k, _ in items], [v for _, v in items], "#c62828")
        ax.set_title(title)
    return png(fig)


def over_time(s: CollectSummary) -> bytes | None:
    rows = s.timeline
    if len(rows) < 2:
        if len(s.cum_teacher_tokens) < 2:
            return None
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot(range(1, len(s.cum_teacher_tokens) + 1), s.cum_teacher_tokens, color="#1565c0")
        ax.set_xlabel("finished task (shard order; thinned)")
        ax.set_ylabel("teacher tokens, cumulative")
        ax.set_title("teacher tokens by task (no timeline.jsonl in this directory)")
        return png(fig)
    t0 = rows[0]["t"]
    minutes = rows[-1]["t"] - t0 >= 120
    unit = "minutes" if minutes else "seconds"
    t = [(r["t"] - t0) / (60 if minutes else 1) for r in rows]
    done = [r.get("tasks_done", 0) for r in rows]
    teacher = [r.get("teacher") or {} for r in rows]
    scale = 60 if minutes else 1
    w = max(1, len(t) // 50)  # tasks/s over a sliding window of about 2% of the run
    rate = [0.0] + [max(0.0, (done[i] - done[max(0, i - w)]) / max(1e-9, (t[i] - t[max(0, i - w)]) * scale))
                    for i in range(1, len(t))]
    fig, axes = plt.subplots(2, 2, figsize=(10, 5.5), sharex=True)
    a = axes[0][0]
    a.plot(t, done, color="#455a64")
    a.set_ylabel("tasks finished")
    b = a.twinx()
    b.plot(t, rate, color="#2e7d32", alpha=0.6)
    b.set_ylabel("tasks/s", color="#2e7d32")
    b.grid(False)
    a.set_title("progress and throughput")
    a = axes[0][1]
    a.plot(t, [x.get("tokens_in", 0) for x in teacher], label="prompt")
    a.plot(t, [x.get("tokens_out", 0) for x in teacher], label="completion")
    a.set_title("teacher tokens (cumulative)")
    a.legend(fontsize=8)
    a = axes[1][0]
    a.plot(t, [x.get("cost_usd", 0) for x in teacher], color="#6a1b9a")
    a.set_title("teacher cost, USD (cumulative)")
    a.set_xlabel(unit)
    a = axes[1][1]
    if any(x.get("batch_submitted") for x in teacher):  # --teacher.mode batch: what waits on the provider
        a.plot(t, [x.get("batch_submitted", 0) for x in teacher], color="#1565c0", label="lines submitted")
        a.plot(t, [x.get("requests", 0) for x in teacher], color="#2e7d32", label="answered")
        a.plot(t, [x.get("failures", 0) for x in teacher], color="#757575", label="failures")
        a.set_title("Batch API requests (cumulative)")
    else:
        a.plot(t, [x.get("http_429", 0) for x in teacher], color="#c62828", label="HTTP 429")
        a.plot(t, [x.get("retries", 0) for x in teacher], color="#e65100", label="retries")
        a.plot(t, [x.get("failures", 0) for x in teacher], color="#757575", label="failures")
        a.set_title("rate limits and retries (cumulative)")
    a.set_xlabel(unit)
    a.legend(fontsize=8)
    for a in (axes[0][0], axes[0][1], axes[1][0], axes[1][1], b):
        a.set_ylim(bottom=0)
        a.yaxis.get_major_locator().set_params(integer=a is not axes[1][0])
    return png(fig)


# ------------------------------------------------------------------ train


def train_curves(s: TrainSummary) -> bytes | None:
    if not s.steps:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(10, 5.5), sharex=True)
    x, y = _thin(*s.series("loss"))
    axes[0][0].plot(x, y, label="training", color="#1565c0")
    if s.eval_losses:
        axes[0][0].plot(*zip(*s.eval_losses), "o-", label="held-out", color="#e65100")
    axes[0][0].set_title("loss")
    axes[0][0].legend(fontsize=8)
    for ax, key, title in ((axes[0][1], "lr", "learning rate"), (axes[1][0], "tokens_per_s", "tokens/s"),
                           (axes[1][1], "padding", "padding share")):
        x, y = _thin(*s.series(key))
        if x:
            ax.plot(x, y, color="#455a64")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
    axes[1][0].set_xlabel("step")
    axes[1][1].set_xlabel("step")
    axes[1][0].set_ylim(bottom=0)
    _, pad = s.series("padding")
    if pad:
        axes[1][1].set_ylim(0, max(0.05, max(pad) * 1.3))
    axes[1][1].xaxis.get_major_locator().set_params(integer=True)
    return png(fig)


# ------------------------------------------------------------------ eval


def eval_passk(s: EvalSummary) -> bytes | None:
    if not s.pass_at:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    steps = s.steps
    p1 = [100 * (s.pass1(st) or 0) for st in steps]
    axes[0].bar([str(st) for st in steps], p1, color=["#455a64"] + ["#1565c0"] * (len(steps) - 1))
    for i, v in enumerate(p1):
        axes[0].text(i, v, f"{v:.1f}%", ha="center", va="bottom", fontsize=8)
    axes[0].set_xlabel("refine step (0 = direct)")
    axes[0].set_ylabel("pass@1 (%)")
    axes[0].set_title("pass@1 per refine step")
    axes[0].set_ylim(0, max(5.0, max(p1, default=0) * 1.15))
    for st in steps:
        ks = sorted(s.pass_at[st])
        axes[1].plot(ks, [100 * s.pass_at[st][k] for k in ks], "o-", label=f"step {st}")
    axes[1].set_xlabel("k")
    axes[1].set_ylabel("pass@k (%)")
    axes[1].set_title("pass@k against k")
    axes[1].set_ylim(0, max(5.0, 115 * max((v for d in s.pass_at.values() for v in d.values()), default=0)))
    axes[1].xaxis.get_major_locator().set_params(integer=True)
    axes[1].legend(fontsize=8)
    statuses = ("passed", "failed", "timeout", "error")
    bottom = [0] * len(steps)
    for status, color in zip(statuses, ("#2e7d32", "#c62828", "#e65100", "#757575")):
        vals = [s.statuses.get(st, Counter()).get(status, 0) for st in steps]
        axes[2].bar([str(st) for st in steps], vals, bottom=bottom, color=color, label=status)
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[2].set_xlabel("refine step")
    axes[2].set_title("sample statuses")
    axes[2].yaxis.get_major_locator().set_params(integer=True)
    axes[2].legend(fontsize=8)
    return png(fig)


# ------------------------------------------------------------------ loop


def loop_rounds(s: LoopSummary) -> bytes | None:
    rounds = s.rounds
    if not rounds:
        return None
    labels = ["base" if r.round == 0 else f"round {r.round}" for r in rounds]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    series = [("tasks", "tasks", "#455a64"), ("student passed", "student_passed", COLORS["student_passed"]),
              ("records", "records", "#6a1b9a"), ("trained on", "train_records", "#1565c0")]
    width = 0.8 / len(series)
    for j, (name, key, color) in enumerate(series):
        vals = [getattr(r, key) or 0 for r in rounds]
        axes[0].bar([i - 0.4 + width * (j + 0.5) for i in range(len(rounds))], vals, width=width, color=color,
                    label=name)
    axes[0].set_xticks(range(len(rounds)), [
        lab + (f"\n${r.cost_usd:.2f}" if r.cost_usd is not None and r.round else "") for lab, r in zip(labels, rounds)])
    axes[0].set_title("per round: collect and training data (teacher cost below)")
    axes[0].legend(fontsize=8)
    x = range(len(rounds))
    axes[1].plot(x, [100 * r.pass1 if r.pass1 is not None else float("nan") for r in rounds], "o-",
                 color="#455a64", label="pass@1 direct")
    axes[1].plot(x, [100 * r.pass1_refined if r.pass1_refined is not None else float("nan") for r in rounds], "s--",
                 color="#1565c0", label="pass@1 after refine")
    axes[1].set_xticks(list(x), labels)
    axes[1].set_ylabel("pass@1 (%)")
    top = max((100 * v for r in rounds for v in (r.pass1, r.pass1_refined) if v is not None), default=0)
    axes[1].set_ylim(0, max(5.0, top * 1.15))
    axes[1].set_title("the student after each round")
    axes[1].legend(fontsize=8)
    return png(fig)


def outcome_share(s: CollectSummary) -> bytes | None:
    """A one-line stacked bar of the outcomes (shown atop a collect section)."""
    total = sum(s.outcomes[o] for o in OUTCOME_ORDER)
    if not total:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.9))
    left = 0
    for o in OUTCOME_ORDER:
        v = s.outcomes[o]
        if v:
            ax.barh([0], [v], left=left, color=COLORS[o])
            if v / total > 0.06:
                ax.text(left + v / 2, 0, f"{o} {100 * v / total:.0f}%", ha="center", va="center", color="white",
                        fontsize=8)
            left += v
    ax.set_xlim(0, total)
    ax.axis("off")
    return png(fig)
