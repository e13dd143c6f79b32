"""`persd bench teacher --peer curator`: argument handling only (the bench itself needs PyPI)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from persd.bench.teacher import parse_args
from persd.bench.teacher_peer import SCENARIOS, parse_scenarios


def test_scenarios_are_named_and_checked():
    assert parse_scenarios("all") == ["ra0.1", "ra0.5", "ra2", "burst", "tpm", "headers"] == list(SCENARIOS)
    assert parse_scenarios("ra2, burst") == ["ra2", "burst"]
    with pytest.raises(ValueError, match="--scenarios: unknown nope"):
        parse_scenarios("ra2,nope")


def test_peer_arguments():
    args = parse_args(["--peer", "curator", "--scenarios", "tpm"])
    assert args.peer == "curator" and args.scenarios == "tpm" and args.n is None
    assert parse_args([]).n == 600 and parse_args([]).peer is None


@pytest.mark.parametrize("argv, said", [
    (["--peer", "curator", "--scenarios", "nope"], "--scenarios: unknown nope"),
    (["--scenarios", "ra2"], "--scenarios needs --peer"),
    (["--peer", "litellm"], "invalid choice: 'litellm'"),
])
def test_bad_peer_arguments_exit_2_with_one_line(argv, said):
    done = subprocess.run([sys.executable, "-m", "persd", "bench", "teacher", *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr
