"""The GPU acceptance script's dry run: the same checks on the CPU with a tiny model, so the script
cannot rot between the rare times a GPU is lent (docs/gpu.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_dry_run_passes_every_check(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "persd.bench.gpu.acceptance", "--dry-run", "--out", str(out),
                           "--budget-s", "1500"], env=env, capture_output=True, text=True, timeout=1800)
    report = json.loads((out / "acceptance.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"env", "train", "zero3", "student", "sandbox"}
    failed = {n: c["error"] for n, c in checks.items() if not c["ok"]}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-4000:])
    train, zero3 = checks["train"]["figures"], checks["zero3"]["figures"]
    assert train["pack_tokens_per_s"] > 0 and train["pad_tokens_per_s"] > 0 and train["plan_total_gpu_gib"] > 0
    assert zero3["loss_falls"] and zero3["checkpoints"] and zero3["export_generated_tokens"] > 0
    assert zero3["resumed_steps"] and zero3["resume_max_rel_diff"] < 1e-6  # fp32 on CPU: resume is exact
    student = checks["student"]["figures"]["results"]
    assert [r["batch_size"] for r in student] == [1, 4] and all(r["persd_tokens"] > 0 for r in student)
    scaling = checks["sandbox"]["figures"]["sandbox_scaling"]
    assert scaling and all(r["persd humaneval references exec/s"] > 0 for r in scaling)
