"""`--ray`: student replicas and sandboxes on a real Ray cluster of several nodes on this machine.

One cluster start-up (tests/cluster_scenario.py, in a loopback-only network namespace where Ray binds
to 127.0.0.1) runs every Ray check; the tests below read what it left. Bad input needs no cluster.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from persd.engine.cli.main import main as persd_main
from persd.engine.runlock import run_lock

REPO = Path(__file__).resolve().parents[1]
ray = pytest.importorskip("ray")


def _namespace_works() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, tiny_model_dir) -> Path:
    from persd.runtime.cluster.local import loopback_argv

    work = tmp_path_factory.mktemp("cluster")
    argv = [sys.executable, str(REPO / "tests" / "cluster_scenario.py"), str(work), str(tiny_model_dir)]
    if _namespace_works():
        argv = loopback_argv(argv)  # Ray finds 127.0.0.1 and nothing leaves the machine
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return work


def _report(work: Path) -> dict:
    return orjson.loads((work / "scenario.json").read_bytes())


def _records(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((out / "shards").glob("shard-*[0-9].jsonl")))


def _results(out: Path) -> list[dict]:
    return [orjson.loads(x) for p in sorted((out / "shards").glob("*.results.jsonl"))
            for x in p.read_bytes().splitlines()]


def _students(out: Path) -> list[dict]:
    return orjson.loads((out / "manifest.json").read_bytes())["cluster"]["replicas"]["student"]


@pytest.mark.slow
def test_hf_replicas_on_two_nodes_give_the_single_process_records(scenario):
    rep = _report(scenario)
    assert rep["hf_local"][0] == 0 and rep["hf_ray"][0] == 0, rep["hf_ray"][1][-2000:]
    assert _records(scenario / "hf-ray") == _records(scenario / "hf-local") != b""
    students = _students(scenario / "hf-ray")
    assert len(students) == 2 and all(r["done"] > 0 for r in students)
    assert len({r["node"] for r in students}) == 2  # one replica on each worker node
    metrics = orjson.loads((scenario / "hf-ray" / "metrics.json").read_bytes())
    assert {r["name"] for r in metrics["replicas"]["sandbox"]} == {"sandbox-0", "sandbox-1"}


@pytest.mark.slow
def test_eval_on_ray_gives_the_same_pass_at_k(scenario):
    rep = _report(scenario)
    assert rep["eval_local"][0] == 0 and rep["eval_ray"][0] == 0, rep["eval_ray"][1][-2000:]
    local, remote = (orjson.loads((scenario / d / "summary.json").read_bytes()) for d in ("eval-local", "eval-ray"))
    assert remote["pass@1"] == local["pass@1"] and remote["steps"] == local["steps"]

    def lines(d):
        return [(r["task_id"], r["sample"], r["status"], r["code"])
                for r in map(orjson.loads, (scenario / d / "results.jsonl").read_bytes().splitlines())]
    assert lines("eval-ray") == lines("eval-local")


@pytest.mark.slow
def test_a_cluster_without_the_gpus_asked_for_is_refused_before_anything_starts(scenario):
    rc, out = _report(scenario)["no_gpu"]
    assert rc == 2
    assert "persd: error: --ray-student-gpus: a student replica asks for 1 GPU(s)" in out and "Traceback" not in out
    assert not (scenario / "no-gpu" / "manifest.json").exists()


@pytest.mark.slow
def test_a_node_lost_mid_run_loses_nothing_and_pays_nothing_twice(scenario):
    rep = _report(scenario)
    assert rep["node_lost"][0] == 0, rep["node_lost"][1][-3000:]
    out = scenario / "node-lost"
    assert _records(out) == _records(scenario / "scripted-local") != b""
    ids = [r["task_id"] for r in _results(out)]
    assert len(ids) == len(set(ids)) == 16  # every task exactly once
    teacher = rep["teacher_node_lost"]
    assert len(teacher) == len(set(teacher)) == sum(r["teacher_calls"] for r in _results(out))
    students = _students(out)
    restarted = [r for r in students if r["restarts"]]
    assert restarted and sum(r["resent"] for r in students) >= 2  # the lost node's requests were sent again
    assert all(r["done_since_up"] > 0 for r in restarted)  # ... and the restarted replica took work
    page = scenario / "report.html"
    assert _persd(["report", str(out), "--out", str(page)]).returncode == 0
    assert "Ray replica utilisation" in page.read_text()


@pytest.mark.slow
def test_kill_9_of_the_driver_then_rerun_resumes_exactly(scenario):
    rep = _report(scenario)
    assert rep["done_before_kill"] >= 2
    assert rep["killed_rerun"][0] == 0, rep["killed_rerun"][1][-3000:]
    assert _records(scenario / "killed") == _records(scenario / "scripted-local")
    ids = [r["task_id"] for r in _results(scenario / "killed")]
    assert len(ids) == len(set(ids)) == 16


@pytest.mark.slow
def test_every_node_lost_stops_the_run_saying_how_to_resume_and_the_rerun_finishes(scenario):
    rep = _report(scenario)
    rc, text = rep["all_lost"]
    assert rc == 1, (rc, text[-3000:])  # not a hang (killed: -9), not a finished run
    assert "no Ray student replica has been up for 3 s" in text or "no Ray sandbox replica has been up" in text, text
    assert "rerun the same command to resume" in text and "Traceback" not in text
    assert rep["all_lost_rerun"][0] == 0, rep["all_lost_rerun"][1][-3000:]
    out = scenario / "all-lost"
    assert _records(out) == _records(scenario / "scripted-local")
    ids = [r["task_id"] for r in _results(out)]
    assert len(ids) == len(set(ids)) == 16 and rep["done_when_all_lost"] < 16
    teacher = rep["teacher_all_lost"]
    assert len(teacher) == len(set(teacher))  # no refinement paid twice across the stop and the rerun


# ------------------------------------------------------------------ bad input: no cluster needed


def _persd(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persd", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("command", ["collect", "eval"])
def test_an_unreachable_address_is_one_sentence_naming_the_flag(tmp_path, tiny_model_dir, command):
    out = tmp_path / "out"
    proc = _persd([command, "--tasks", "humaneval", "--limit", "1", "--out", str(out), "--student.model",
                   str(tiny_model_dir), "--ray", "127.0.0.1:1"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("persd: error: --ray 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1")
    assert "Traceback" not in proc.stderr
    assert not (out / "manifest.json").exists() and not (out / "summary.json").exists()


def test_ray_not_installed_is_one_sentence_naming_the_flag(tmp_path):
    fake = tmp_path / "site"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    proc = _persd(["collect", "--tasks", "humaneval", "--out", str(tmp_path / "out"), "--ray"], env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("persd: error: --ray: Ray is not installed in this environment "
                                   "(pip install 'persd[ray]')")
    assert not (tmp_path / "out").exists()


def test_a_single_machine_run_and_a_partitioned_run_exclude_each_other(tmp_path, capsys):
    args = ["collect", "--tasks", "humaneval", "--limit", "2", "--out", str(tmp_path), "--progress", "none"]
    with run_lock(tmp_path, "collect", shared=True):  # a partition of DIR is running
        assert persd_main(args) == 2
        assert "is in use by another run" in capsys.readouterr().err
    with run_lock(tmp_path, "collect"):  # a single-machine (or --ray) run of DIR is running
        assert persd_main([*args, "--num-shards", "2", "--shard-index", "1"]) == 2
        assert "is in use by another run" in capsys.readouterr().err
