"""Run directories: one owner per kind (its paths, marker, manifest, is_done), one atomic write, one settings
check, one answer to "which command made this directory" (persd.engine.rundirs, persd.engine.collect.layout)."""
from __future__ import annotations

import os

import orjson
import pytest
from persd.bench.instant import instant_backends, write_synthetic_tasks
from persd.config import fingerprint
from persd.engine.collect.config import CollectConfig
from persd.engine.collect.config import parse_args as collect_args
from persd.engine.collect.layout import CollectLayout, CollectManifest
from persd.engine.collect.runner import Collector, plan_collect
from persd.engine.evaluation.config import parse_args as eval_args
from persd.engine.evaluation.journal import EvalJournal
from persd.engine.ownership import owner
from persd.engine.report.detect import detect
from persd.engine.rounds import Loop, LoopConfig
from persd.engine.rundirs.eval import EvalLayout
from persd.engine.rundirs.files import atomic_write
from persd.engine.rundirs.kinds import kind_of
from persd.engine.rundirs.loop import LoopLayout
from persd.engine.rundirs.settings import check_settings
from persd.engine.rundirs.train import TrainLayout
from persd.runtime.errors import UsageError

BASE = ["--student-model", "m", "--teacher-url", "http://127.0.0.1:9/v1", "--progress", "none"]


def _collect_cfg(tmp_path, *extra: str):
    tasks = write_synthetic_tasks(tmp_path / "t.jsonl", 40)
    return collect_args(["--tasks", str(tasks), "--out", str(tmp_path / "out"), "--shard-size", "20", *BASE,
                         *extra], environ={})


# ------------------------------------------------------------------ which command made this directory


def test_one_answer_to_which_command_made_a_directory(tmp_path):
    dirs = {"collect": ["shards/"], "eval": ["work/eval.json"], "train": ["metrics.jsonl"],
            "loop": ["loop.json", "summary.json"], None: ["notes.txt"]}
    for kind, files in dirs.items():
        d = tmp_path / str(kind)
        for name in files:
            p = d / name
            if name.endswith("/"):
                p.mkdir(parents=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("{}")
        assert kind_of(d) == owner(d) == kind
        if kind is None:
            with pytest.raises(UsageError, match="not a persd"):
                detect(d)
        else:
            assert detect(d) == kind
    # work in progress counts: an eval or collect run stopped before its settings file
    journal = tmp_path / "c2" / "work" / "shard-00000.journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"")
    assert kind_of(tmp_path / "c2") == owner(tmp_path / "c2") == detect(tmp_path / "c2") == "collect"


# ------------------------------------------------------------------ one atomic write


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "x.json"
    atomic_write(path, b"one")
    assert path.read_bytes() == b"one"

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        atomic_write(path, b"two")
    assert path.read_bytes() == b"one" and sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


# ------------------------------------------------------------------ one settings check


def test_one_settings_check_refuses_unless_forced(tmp_path):
    f = tmp_path / "settings.json"
    new = dict(fingerprint(CollectConfig()), refine_turns=1)
    assert check_settings(tmp_path, f, {"refine_turns": 1}, new, CollectConfig, force=False, what="a run",
                          forced="go on") == []
    with pytest.raises(UsageError, match=r"(?s)settings\.json.*\n  --refine-turns: was 2, now 1\n.*--force to go on"):
        check_settings(tmp_path, f, {"refine_turns": 2}, new, CollectConfig, force=False, what="a run",
                       forced="go on")
    assert check_settings(tmp_path, f, {"refine_turns": 2}, new, CollectConfig, force=True, what="a run",
                          forced="go on") == ["--refine-turns: was 2, now 1"]
    with pytest.raises(UsageError, match=r"x: unreadable.*unknown.*--force to go on"):
        check_settings(tmp_path, f, None, new, CollectConfig, force=False, what="a run", forced="go on",
                       unreadable="x: unreadable")


# ------------------------------------------------------------------ old manifests still read


async def test_a_collect_manifest_of_version_0_still_resumes(tmp_path):
    cfg = _collect_cfg(tmp_path)
    assert await Collector(cfg, open_backends=instant_backends, install_signals=False).run() == 0
    lay = CollectLayout(cfg.out)
    path = lay.manifest_path()
    data = orjson.loads(path.read_bytes())
    assert data["version"] == 1 and CollectManifest.read(path).state == "done" and lay.is_done()
    del data["version"]  # as a persd before versions wrote it
    data["some_old_key"] = 1
    path.write_bytes(orjson.dumps(data))
    m = CollectManifest.read(path)
    assert (m.version, m.state, m.extra) == (0, "done", {"some_old_key": 1}) and lay.is_done()
    assert await Collector(cfg, open_backends=instant_backends, install_signals=False).run() == 0
    again = orjson.loads(path.read_bytes())
    assert again["version"] == 1 and again["totals"] == data["totals"]


def test_an_eval_manifest_of_version_0_still_resumes(tmp_path):
    cfg = eval_args(["--tasks", str(write_synthetic_tasks(tmp_path / "t.jsonl", 3)), "--out", str(tmp_path / "e"),
                     "--student-model", "m"])
    fp = cfg.fingerprint()
    journal = EvalJournal(tmp_path / "e")
    journal.save_settings(fp)
    assert orjson.loads(EvalLayout(tmp_path / "e").manifest.read_bytes()) == {"version": 1, "fingerprint": fp}
    assert journal.check_settings(fp, force=False) is True
    EvalLayout(tmp_path / "e").manifest.write_bytes(orjson.dumps(fp))  # version 0: the fingerprint alone
    assert journal.check_settings(fp, force=False) is True
    with pytest.raises(UsageError, match="--n: was 1, now 2"):
        journal.check_settings(dict(fp, n=2), force=False)


def test_a_loop_manifest_of_version_0_still_resumes(tmp_path):
    out = tmp_path / "loop"
    cfg = LoopConfig(tasks=str(write_synthetic_tasks(tmp_path / "t.jsonl", 2)), out=str(out),
                     eval={"tasks": str(tmp_path / "t.jsonl")}, student_model=None)
    lay = LoopLayout(out)
    lay.out.mkdir()
    lay.manifest.write_bytes(orjson.dumps({"fingerprint": cfg.fingerprint(), "rounds": {"1": {"trained": True}}}))
    loop = Loop(cfg)
    loop.prepare()
    assert loop.state.rounds == {"1": {"trained": True}}
    assert orjson.loads(lay.manifest.read_bytes())["version"] == 1
    lay.manifest.write_bytes(orjson.dumps({"fingerprint": dict(cfg.fingerprint(), train_on="round")}))
    with pytest.raises(UsageError, match="(?s)loop.json.*--train-on: was 'round', now 'all'"):
        Loop(cfg).prepare()


def test_a_train_manifest_of_version_0_still_reads(tmp_path):
    lay = TrainLayout(tmp_path)
    lay.manifest.write_text('{"steps": 3, "config": {"lr": 0.1}, "export": {"tensors": 2}, "final_loss": 1.5}')
    m = lay.read_manifest()
    assert (m.version, m.config, m.export, m.result) == (0, {"lr": 0.1}, {"tensors": 2},
                                                         {"steps": 3, "final_loss": 1.5})
    assert not lay.is_done()
    (lay.final / "config.json").parent.mkdir()
    (lay.final / "config.json").write_text("{}")
    assert lay.is_done() and kind_of(tmp_path) == "train"


# ------------------------------------------------------------------ collect's plan before any backend


def test_collect_plans_before_any_backend_opens(tmp_path):
    cfg = _collect_cfg(tmp_path, "--limit", "30")
    plan = plan_collect(cfg)
    assert (plan.source.count, plan.shards.n_shards, plan.warnings) == (30, 2, [])
    assert plan.fingerprint["tasks_count"] == 30 and plan.store.layout.out == CollectLayout(cfg.out).out
