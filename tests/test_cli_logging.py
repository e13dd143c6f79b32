"""`--log-level`: diagnostics through logging, anywhere on the command line, for every command."""
from __future__ import annotations

import subprocess
import sys

from persd.engine.cli.main import take_log_level


def test_log_level_is_taken_from_any_position():
    assert take_log_level(["check", "--log-level", "debug", "--limit", "1"]) == (["check", "--limit", "1"], "debug")
    assert take_log_level(["--log-level=info", "eval"]) == (["eval"], "info")
    assert take_log_level(["collect", "--", "--log-level", "x"]) == (["collect", "--", "--log-level", "x"], None)


def _persd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persd", *args], capture_output=True, text=True)


def test_debug_level_shows_the_sandbox_diagnostics(tmp_path):
    quiet = _persd("check", "--tasks", "humaneval", "--references", "--limit", "1", "--out", str(tmp_path / "a.jsonl"))
    loud = _persd("check", "--tasks", "humaneval", "--references", "--limit", "1", "--out", str(tmp_path / "b.jsonl"),
                  "--log-level", "debug")
    assert quiet.returncode == 0 and loud.returncode == 0, loud.stderr
    assert " persd.sandbox: " in loud.stderr
    assert " persd.sandbox: " not in quiet.stderr


def test_unknown_log_level_is_a_usage_error():
    proc = _persd("check", "--log-level", "loud")
    assert proc.returncode == 2
    assert "--log-level" in proc.stderr and "Traceback" not in proc.stderr
