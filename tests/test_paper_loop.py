"""`persd loop --preset paper` end to end on the tiny model with the offline stand-in teacher: the paper
protocol's collect (reference prompt, per-test checking, three-turn teacher chat, unit tests made the
reference's way), the paper training preset (overridden to fit a CPU) and an evaluation."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers import doubling_task, read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def alpaca_task(i: int) -> dict:
    """A Code-Alpaca-style task without tests whose reference solution uses `\\r\\n` line ends."""
    return {"task_id": f"CodeAlpaca/{i}", "instruction": f"Return the list sorted, then doubled ({i}).",
            "header": "import math\r\ndef sort_double(nums):\n", "entry_point": "sort_double",
            "reference": "import math\r\ndef sort_double(nums):\r\n    return [2 * x for x in sorted(nums)]\r\n"}


def refine_prompt_of(by: dict) -> str:
    return by[("io/1", "persd-refine")]["prompt"]


def io_task(i: int) -> dict:
    """A task in the reference's dataset layout: tests as {"input", "output"} pairs."""
    return {"task_id": f"io/{i}", "instruction": "Print the sum of two numbers.", "entry_point": "show_sum",
            "reference": "def show_sum(a, b):\n    print(a + b)\n",
            "test_list": [{"input": "show_sum(1, 2)", "output": "3\n"}, {"input": "show_sum(2, 2)", "output": "4\n"}]}


@pytest.mark.slow
def test_loop_with_the_paper_preset(tmp_path):
    write_jsonl(tmp_path / "tasks.jsonl", [alpaca_task(0), io_task(1)])
    write_jsonl(tmp_path / "eval.jsonl", [doubling_task(0, "ev", "ev/0")])
    run = tmp_path / "run"
    args = ["--rounds", "1", "--tasks", str(tmp_path / "tasks.jsonl"), "--eval.tasks", str(tmp_path / "eval.jsonl"),
            "--out", str(run), "--preset", "paper", "--no-eval-base", "--collect.max-tokens", "16",
            "--train.max-steps", "1", "--train.seq-len", "128", "--eval.n", "1", "--eval.max-tokens", "16",
            "--sandbox-workers", "1", "--progress", "none", "--train.deepspeed", "zero2", "--train.precision", "fp32",
            "--train.micro-batch", "1"]
    done = subprocess.run([sys.executable, "-m", "persd", "loop", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    collect = run / "round-1" / "collect"
    manifest = orjson.loads((collect / "manifest.json").read_bytes())
    assert manifest["config"]["protocol"] == "paper" and manifest["config"]["teacher_context"] == "gold"
    assert manifest["config"]["teacher_temperature"] is None and manifest["config"]["teacher_max_tokens"] is None
    results = {r["task_id"]: r for r in read_jsonl(next((collect / "shards").glob("*.results.jsonl")))}
    assert {r["outcome"] for r in results.values()} == {"refined"}
    # unit tests made the reference's way: the reference's outputs on the stand-in's proposed inputs
    made = results["CodeAlpaca/0"]["generated_tests"]
    assert made and all(t["input"].startswith("sort_double(") and "output" in t for t in made)
    assert "generated_tests" not in results["io/1"]  # given tests are used as given
    # the student's failure reported as the reference reports it
    assert results["io/1"]["feedback"].endswith(" : ") or results["io/1"]["feedback"].startswith("AssertionError")
    records = read_jsonl(next((collect / "shards").glob("shard-*[0-9].jsonl")))
    by = {(r["task_id"], r["format"]): r for r in records}
    assert {f for _, f in by} == {"persd", "persd-refine", "refine-gold", "inpd", "stand"}
    gold_body = by[("io/1", "refine-gold")]["completion"]
    assert gold_body == "    print(a + b)\n" and by[("io/1", "refine-gold")]["prompt"] == refine_prompt_of(by)
    persd = by[("CodeAlpaca/0", "persd")]
    assert persd["prompt"] == ('"""\nReturn the list sorted, then doubled (0).\n"""\n\n'
                               "import math\r\ndef sort_double(nums):\n")  # the reference's prompt, \r\n kept
    assert persd["completion"].startswith("\n") and "return" in persd["completion"]
    refine = by[("io/1", "persd-refine")]
    assert refine["prompt"].startswith("Rectify the below code for the given task based on the errors")
    assert by[("io/1", "inpd")]["completion"] == "\n    print(a + b)\n"
    train = orjson.loads((run / "round-1" / "train" / "train.json").read_bytes())
    assert train["config"]["reference_batch"] == [12, 20, 8] and train["config"]["lr"] == 5e-6
    assert train["config"]["schedule"] == "warmuplr" and train["config"]["prompt_cleanup"] == "auto"
    summary = orjson.loads((run / "round-1" / "eval" / "summary.json").read_bytes())
    assert summary["tasks"] == 1


def test_collect_preset_and_flags():
    from persd.engine.collect.config import parse_args
    from persd.runtime.errors import UsageError

    base = ["--tasks", "t.jsonl", "--out", "o", "--student-backend", "hf"]
    cfg = parse_args([*base, "--preset", "paper"])
    assert (cfg.protocol, cfg.samples, cfg.temperature, cfg.top_p, cfg.max_tokens) == ("paper", 1, 0.3, 0.95, 1024)
    assert (cfg.teacher_temperature, cfg.teacher_max_tokens, cfg.teacher_context) == (None, None, "gold")
    assert (cfg.top_k, cfg.clean_up_spaces, cfg.tests_from) == (50, "auto", None)
    assert "refine-gold" in cfg.formats
    assert cfg.teacher_model == "gpt-3.5-turbo-0301" and cfg.exec_timeout == 3.0
    assert cfg.fingerprint()["protocol"] == "paper"
    flags_win = parse_args([*base, "--preset", "paper", "--teacher-temperature", "0.7", "--teacher-context", "none"])
    assert flags_win.teacher_temperature == 0.7 and flags_win.teacher_context == "none"
    default = parse_args(base)
    assert default.protocol == "persd" and default.fingerprint()["protocol"] == "persd"  # persd's defaults
    assert (default.teacher_temperature, default.teacher_max_tokens) == (0.0, 1024)
    with pytest.raises(UsageError, match="--teacher-context"):
        parse_args([*base, "--teacher-context", "gold"])
    with pytest.raises(UsageError, match="--price-in and --price-out"):
        parse_args([*base, "--price-in", "2"])
    assert parse_args([*base, "--price-in", "2", "--price-out", "2"]).price_out == 2.0
    with pytest.raises(UsageError, match="--preset"):
        parse_args([*base, "--preset", "nonesuch"])
    with pytest.raises(UsageError, match="--tests-from"):
        parse_args([*base, "--tests-from", "t.json"])  # the paper protocol only
    import persd.engine.paper.flow  # noqa: F401  (registers the paper flow variant, as persd collect does)
    from persd.engine.collect.flow import variant_for

    paper = parse_args([*base, "--preset", "paper", "--tests-from", "/nonexistent/t.json"])
    with pytest.raises(UsageError, match="no such file"):  # checked before the run starts (persd collect)
        variant_for(paper.protocol).check_config(paper)


def test_paper_teacher_price_is_the_2023_one():
    from persd.runtime.teacher.pricing import PriceTable

    assert PriceTable().lookup("gpt-3.5-turbo-0301") == (2.0, 2.0)  # $0.002 per 1K tokens, in and out
    assert PriceTable().cost("gpt-3.5-turbo-0301", 1_000_000, 500_000) == 3.0
