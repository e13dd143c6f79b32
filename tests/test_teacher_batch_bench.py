"""`persd bench teacher --mode batch` at a tiny size: its JSON, one line per task, half the sync cost."""
from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from persd.runtime.teacher.pricing import PriceTable


def test_batch_bench_sends_each_request_once_at_half_the_sync_cost(tmp_path):
    out = tmp_path / "teacher-batch.json"
    done = subprocess.run([sys.executable, "-m", "persd", "bench", "teacher", "--mode", "batch", "--n", "20",
                           "--batch-delay", "0.05", "--latency", "0", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = orjson.loads(out.read_bytes())
    batch, sync = report["results"]
    assert (batch["client"], sync["client"]) == ("batch", "sync") and report["sync_limits"] == "unlimited"
    for name in ("wall_s", "overhead_s", "files_uploaded", "batches", "rss_peak_mb", "rss_waiting_mb",
                 "client_bytes_per_request"):
        assert name in batch, name
    assert batch["answered"] == sync["answered"] == 20 and batch["failed"] == sync["failed"] == 0
    # what the server received: every task's request in one uploaded line, in one file and batch
    assert batch["lines_uploaded"] == batch["lines_accepted"] == 20 and batch["requests_per_task"] == 1.0
    assert batch["files_uploaded"] == batch["batches"] == 1 and sync["attempts"] == 20
    # the same answers priced from the same table: exactly half, up to float summation order
    assert (batch["tokens_in"], batch["tokens_out"]) == (sync["tokens_in"], sync["tokens_out"])
    price_in, price_out = PriceTable().lookup(report["config"]["model"])
    assert sync["cost_usd"] == pytest.approx((sync["tokens_in"] * price_in + sync["tokens_out"] * price_out) / 1e6,
                                             rel=1e-12) and sync["cost_usd"] > 0
    assert batch["cost_usd"] == pytest.approx(sync["cost_usd"] / 2, rel=1e-12)
    assert report["targets"]["cost_ratio"] == 0.5 and report["targets"]["met"] is True


def test_batch_mode_defaults_leave_sync_mode_as_it_was():
    from persd.bench.teacher import parse_args

    batch, sync = parse_args(["--mode", "batch"]), parse_args([])
    assert (batch.n, batch.rpm, batch.tpm, batch.p_429, batch.p_5xx, batch.batch_delay) == (1000, None, None, 0, 0, 5)
    assert (sync.mode, sync.n, sync.rpm, sync.tpm, sync.p_429, sync.p_5xx) == ("sync", 600, 1200, 240_000, 0.05, 0.03)


def test_an_unpriced_model_is_one_sentence_and_exit_2():
    done = subprocess.run([sys.executable, "-m", "persd", "bench", "teacher", "--mode", "batch", "--model", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--model nope: not in the price table" in done.stderr
    assert "Traceback" not in done.stderr
