"""A synthetic collect directory of any size, in the layout `persd collect` writes (sealed shards of records
and result lines, a manifest, metrics.json, timeline.jsonl, the task file), for `persd bench report` and the
report's tests. Texts have realistic sizes; outcomes are mixed like a mid-size student's run."""
from __future__ import annotations

import random
from pathlib import Path

import orjson
from persd.engine.collect.layout import CollectLayout, CollectManifest

OUTCOMES = (("student_passed", 0.30), ("refined", 0.55), ("unresolved", 0.12), ("error", 0.03))
ERRORS = ("AssertionError", "NameError: name 'y' is not defined", "SyntaxError: invalid syntax",
          "IndexError: list index out of range", "TypeError: unsupported operand", "timeout")


def _task(i: int) -> dict:
    doc = " ".join(f"word{(i * 7 + j) % 97}" for j in range(40))
    return {"task_id": f"synth/{i}", "instruction": f"Task {i}: {doc}.", "header": f"def f_{i}(x, y):\n",
            "entry_point": f"f_{i}", "tests": [f"assert f_{i}(1, 2) == 3", f"assert f_{i}(2, 2) == 4"],
            "reference": f"def f_{i}(x, y):\n    return x + y\n"}


def write_collect(out: Path, n: int, shard_size: int = 1000, seed: int = 0) -> Path:
    out = Path(out)
    rng = random.Random(seed)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    tasks_path = out / "tasks.jsonl"
    with open(tasks_path, "wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps(_task(i)) + b"\n")
    names, weights = zip(*OUTCOMES)
    totals = {o: 0 for o in names}
    formats = {"persd": 0, "persd-refine": 0}
    shards = []
    calls = tokens = 0
    for k in range((n + shard_size - 1) // shard_size):
        lo, hi = k * shard_size, min(n, (k + 1) * shard_size)
        with open(out / "shards" / f"shard-{k:05d}.results.jsonl", "wb") as res, \
                open(out / "shards" / f"shard-{k:05d}.jsonl", "wb") as rec:
            for i in range(lo, hi):
                outcome = rng.choices(names, weights)[0]
                totals[outcome] += 1
                prompt = _task(i)["instruction"] + f"\ndef f_{i}(x, y):\n"
                attempt = (f"def f_{i}(x, y):\n" + "".join(f"    v{j} = x * {j} - y\n" for j in range(8))
                           + "    return v3\n")
                err = rng.choice(ERRORS)
                feedback = f"Traceback (most recent call last):\n  File \"<test>\", line 3\n{err}"
                status = "timeout" if err == "timeout" else "failed"
                t_in, t_out = (0, 0) if outcome == "student_passed" else (rng.randint(400, 900), rng.randint(80, 300))
                r = {"task_id": f"synth/{i}", "outcome": outcome,
                     "status": "passed" if outcome == "student_passed" else status,
                     "feedback": "" if outcome == "student_passed" else feedback,
                     "teacher_calls": 0 if outcome == "student_passed" else 1,
                     "teacher_tokens_in": t_in, "teacher_tokens_out": t_out, "teacher_tokens": t_in + t_out,
                     "student_tokens_out": 120, "samples": 1, "samples_passed": int(outcome == "student_passed"),
                     "index": i, "shard": k}
                calls += r["teacher_calls"]
                tokens += t_in + t_out
                if outcome in ("refined", "unresolved"):
                    r.update(refine_turns=1 if outcome == "refined" else 2,
                             refine_status="passed" if outcome == "refined" else "failed",
                             refine_feedback="" if outcome == "refined" else "AssertionError")
                if outcome == "unresolved":
                    r.update(attempt=attempt, refinement=f"def f_{i}(x, y):\n    return x - y\n")
                if outcome == "error":
                    r["error"] = "student rejected the request: prompt too long"
                res.write(orjson.dumps(r) + b"\n")
                if outcome == "refined":
                    solution = f"def f_{i}(x, y):\n    return x + y\n"
                    meta = {"student_model": "synth-student", "teacher_model": "synth-teacher", "round": 1,
                            "attempt": attempt, "feedback": feedback, "solution": solution, "turn": 1}
                    for fmt, p in (("persd", prompt), ("persd-refine", f"Rectify\n{attempt}\n{feedback}\n{prompt}")):
                        rec.write(orjson.dumps({"id": f"synth/{i}/{fmt}", "task_id": f"synth/{i}", "format": fmt,
                                                "prompt": p, "completion": "    return x + y\n", "meta": meta}) + b"\n")
                        formats[fmt] += 1
        shards.append({"index": k, "span": [lo, hi], "tasks": hi - lo, "state": "sealed", "done": hi - lo})
    lay = CollectLayout(out)
    manifest = CollectManifest(fingerprint={}, state="done", config={"tasks": str(tasks_path)},
                               tasks={"source": str(tasks_path), "count": n}, student={"model": "synth-student"},
                               teacher={"model": "synth-teacher"}, shards=shards,
                               totals={"tasks": n, "done": n, "shards": len(shards), "shards_sealed": len(shards),
                                       "outcomes": totals, "records": formats})
    lay.manifest_path().write_bytes(orjson.dumps(manifest.to_json()))
    cost = tokens * 2e-6
    lay.metrics_path().write_bytes(orjson.dumps({"wall_s": n / 20, "teacher": {
        "requests": calls, "http_429": n // 500, "retries": n // 400, "cost_usd": cost, "tokens_in": tokens}}))
    with open(lay.timeline_path(), "wb") as fh:
        rows = 1000
        for j in range(rows + 1):
            f = j / rows
            fh.write(orjson.dumps({"t": 1.7e9 + f * n / 20, "tasks_done": int(n * f), "teacher": {
                "requests": int(calls * f), "tokens_in": int(tokens * 0.8 * f), "tokens_out": int(tokens * 0.2 * f),
                "cost_usd": cost * f, "http_429": int(n // 500 * f ** 2), "retries": int(n // 400 * f ** 2),
                "failures": 0}}) + b"\n")
    return out
