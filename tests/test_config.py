"""The one configuration pattern (persd.config): every command's options are fields that say whether they
change results; the command line, --config TOML, presets and fingerprints are generated from them."""
from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import typing
from pathlib import Path

import pytest
from persd import config
from persd.config import Command, build_parser, config_fields, fingerprint, flag_of, gather, leaves, shown_default
from persd.engine.cli.commands.check import CHECK
from persd.engine.cli.commands.loop import LOOP
from persd.engine.cli.commands.status import STATUS
from persd.engine.cli.commands.tiny_model import TINY_MODEL
from persd.engine.cli.main import run_guarded
from persd.engine.collect.config import COLLECT, CollectConfig
from persd.engine.evaluation.config import EVAL, EvalConfig
from persd.runtime.errors import ConfigError, UsageError
from persd.runtime.teacher.config import TeacherConfig
from persd.trainers.cli import TRAIN
from persd.trainers.config import TrainConfig

COMMANDS = [COLLECT, EVAL, TRAIN, LOOP, CHECK, STATUS, TINY_MODEL]
ALIASES = {"-h", "--help", "--config", "--refine", "--local_rank", "--local-rank"}  # not settings
ROOT = Path(__file__).resolve().parents[1]


def ids(cmds):
    return [c.prog for c in cmds]


# ------------------------------------------------------------------ every option is a field


@pytest.mark.parametrize("cmd", COMMANDS, ids=ids(COMMANDS))
def test_every_field_declares_whether_it_changes_results(cmd: Command):
    """opt() makes changes_results a required keyword; a plain dataclass field would escape the fingerprint."""
    for f in dataclasses.fields(cmd.cls):
        if f.name == "RESUME_KEYS":
            continue
        assert isinstance(f.metadata.get("changes_results"), bool), f"{cmd.cls.__name__}.{f.name}: use opt()"
        assert f.metadata.get("help"), f"{cmd.cls.__name__}.{f.name}: no help text"


@pytest.mark.parametrize("cmd", COMMANDS, ids=ids(COMMANDS))
def test_no_flag_outside_the_config_system(cmd: Command):
    """torchtitan's rule: every command-line option is generated from a field (aliases aside)."""
    known = {f.name for f in config_fields(cmd.cls)}
    for action in build_parser(cmd)._actions:
        if not action.option_strings:
            assert action.dest in known, action.dest
            continue
        if set(action.option_strings) & ALIASES:
            continue
        assert action.dest.split(".")[0] in known, action.option_strings


@pytest.mark.parametrize("cmd", COMMANDS, ids=ids(COMMANDS))
def test_every_field_is_in_help_with_its_default(cmd: Command):
    text = " ".join(build_parser(cmd).format_help().split())

    def check(cls, prefix="", owned=()):
        for path, _, f, default in leaves(cls):
            if f.metadata["nested"] is not None:
                check(f.metadata["nested"], f"{path}.", f.metadata["owned"])
                continue
            if not f.metadata["cli"] or path in owned:
                continue
            flag = f.metadata["metavar"] if f.metadata["positional"] else "--" + prefix + flag_of(path)[2:]
            if f.metadata["flag"]:
                flag = f.metadata["flag"]
            assert flag in text, flag
            entry = " ".join(f"{f.metadata['help']} (default: {shown_default(f, default)})".split())
            assert entry in text, f"{flag}: {entry!r} not in --help"

    check(cmd.cls)


# ------------------------------------------------------------------ the fingerprint comes from the metadata


def other_value(cls, f: dataclasses.Field):
    """A valid value different from the field's default."""
    default = config._default(f)
    if f.name.endswith("url"):
        return "http://127.0.0.1:7/v1"
    if f.metadata["choices"]:
        return next(c for c in f.metadata["choices"] if c != default)
    hint = config._hint(cls, f.name)
    if f.name == "formats":
        return ("inpd",) if cls is CollectConfig else ["inpd"]
    if hint is bool:
        return not default
    if hint is int:
        return default // 2 if default and default >= 2 else (default or 0) + 3  # within a field's maximum too
    if hint is float:
        return default / 2 if default else 0.25  # a fraction stays a fraction
    if hint is str:
        return (default or "") + "-other"
    if hint is dict or typing.get_origin(hint) is dict:
        return {"some-model": [1.0, 2.0]}
    if typing.get_origin(hint) in (tuple, list):
        item = typing.get_args(hint)[0]
        value = [item(7)] * max(1, len(default or ()))
        return tuple(value) if typing.get_origin(hint) is tuple else value
    raise AssertionError(f"{cls.__name__}.{f.name}: no other value for {hint}")


def fp(cfg):
    return cfg.fingerprint() if hasattr(cfg, "fingerprint") else fingerprint(cfg)


BASES = {
    # a real teacher URL, so the teacher model is not the stand-in's label
    CollectConfig: dict(tasks="t", out="o", teacher={"base_url": "http://127.0.0.1:9/v1"}),
    EvalConfig: dict(tasks="t", out="o"),
    TrainConfig: dict(data=["d"], model="m", out="o"),
}


PAIRED = {"price_in": "price_out", "price_out": "price_in"}  # given together or not at all


def with_option(cls, base: dict, path: str, owner, f):
    """cls(**base) with the option at `path` (a field, or a section's field) set to another valid value."""
    values = copy.deepcopy(base)
    config.set_path(values, path, other_value(owner, f))
    if f.name in PAIRED:
        config.set_path(values, path.rpartition(".")[0] + "." + PAIRED[f.name], 1.0)
    return make(cls, values)


def make(cls, values: dict):
    """cls(**values), its sections built from their dicts."""
    return config.build(cls, values) if any(p.metadata["section"] for p in config_fields(cls)) else cls(**values)


@pytest.mark.parametrize("cls", list(BASES) + [c.cls for c in (CHECK, TINY_MODEL, LOOP)],
                         ids=lambda c: c.__name__)
def test_each_result_changing_field_changes_the_fingerprint_and_no_other_does(cls, monkeypatch):
    monkeypatch.setattr(cls, "validate", lambda self: None, raising=False)  # values checked one by one here
    base = BASES.get(cls, {})
    before = fp(make(cls, base))
    for path, owner, f, _ in leaves(cls):
        if f.metadata["nested"] is not None or not f.metadata["cli"]:
            continue
        after = fp(with_option(cls, base, path, owner, f))
        if f.metadata["changes_results"]:
            assert after != before, f"{cls.__name__}.{path} changes results but not the fingerprint"
        else:
            assert after == before, f"{cls.__name__}.{path} does not change results but is in the fingerprint"


def test_each_stage_option_given_to_loop_is_fingerprinted_when_it_changes_results():
    before = LOOP.cls().fingerprint()
    for section in ("collect", "train", "eval"):
        f = next(f for f in config_fields(LOOP.cls) if f.name == section)
        stage = f.metadata["nested"]
        for path, owner, sf, _ in leaves(stage):
            if path in f.metadata["owned"] or not sf.metadata["cli"]:
                continue
            given: dict = {}
            config.set_path(given, path, other_value(owner, sf))
            after = LOOP.cls(**{section: given}).fingerprint()
            assert (after != before) == sf.metadata["changes_results"], f"{section}.{path}"


def test_fingerprints_keep_their_format():
    """Existing manifests and eval.json files still compare: every key they hold is still fingerprinted
    (a new result-changing option adds a key; with_defaults reads old files as holding its default)."""
    assert set(CollectConfig(tasks="t", out="o").fingerprint()) >= {
        "tasks", "limit", "student_model", "student_chat", "samples", "temperature", "top_p", "max_tokens", "seed",
        "teacher_model", "teacher_temperature", "teacher_max_tokens", "formats", "refine_turns", "testgen_inputs",
        "round", "shard_size", "exec_timeout", "prompt_version"}
    assert set(EvalConfig(tasks="t", out="o").fingerprint()) >= {
        "tasks", "task_ids", "limit", "student_model", "student_chat", "n", "temperature", "top_p", "max_tokens",
        "seed", "refine_steps", "exec_timeout", "prompt_version"}
    assert CollectConfig(tasks="t", out="o").fingerprint()["teacher_model"] == "offline-stand-in"
    assert set(TrainConfig.RESUME_KEYS) >= {"seq_len", "batching", "micro_batch", "grad_accum", "global_batch",
                                            "epochs", "max_steps", "lr", "schedule", "warmup_ratio", "warmup_steps",
                                            "min_lr_ratio", "seed", "formats", "eval_fraction", "init"}


# ------------------------------------------------------------------ flag > TOML > preset > default


def test_precedence_flag_over_toml_over_preset_over_default(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('preset = "paper"\nepochs = 5\nlr = 0.001\n')
    values, _, _ = gather(TRAIN, ["--config", str(toml), "--lr", "0.5"])
    cfg = TRAIN.cls(**values)
    assert cfg.lr == 0.5  # flag
    assert cfg.epochs == 5  # TOML over the preset's 20
    assert cfg.deepspeed == "zero3-offload"  # the preset over the default
    assert cfg.seed == 0 and cfg.eval_fraction == TrainConfig.eval_fraction  # defaults
    toml.write_text('protocol = "paper-humaneval"\nn = 7\n')
    values, _, _ = gather(EVAL, ["--config", str(toml), "--temperature", "0.5"])
    assert (values["n"], values["temperature"], values["tasks"], values["k"]) == (7, 0.5, "humaneval", (1, 5, 10))


def test_a_preset_is_a_user_file_of_the_same_format(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text("lr = 0.25\nbatching = 'group'\n")
    values, _, _ = gather(TRAIN, ["--preset", str(mine)])
    assert (values["lr"], values["batching"]) == (0.25, "group")
    mine.write_text("lrr = 0.25\n")
    with pytest.raises(UsageError, match=rf"--preset {re.escape(str(mine))}: unknown key 'lrr'"):
        gather(TRAIN, ["--preset", str(mine)])


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.preset_package], ids=lambda c: c.prog)
def test_shipped_presets_load(cmd: Command):
    names = config.shipped_presets(cmd)
    assert names
    for name in names:
        assert config.preset_values(cmd, name)


@pytest.mark.parametrize("cmd", [COLLECT, EVAL, TRAIN, LOOP, CHECK, TINY_MODEL], ids=lambda c: c.prog)
def test_config_works_on_every_command_and_unknown_keys_name_file_and_key(cmd: Command, tmp_path, capsys):
    from persd.engine.cli.main import main

    bad = tmp_path / "bad.toml"
    bad.write_text("out = 'somewhere'\nno_such_key = 1\n")
    name = cmd.prog.split()[-1]
    assert main([name, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: unknown key 'no_such_key'" in err and "Traceback" not in err


def test_status_takes_config_too(tmp_path, capsys):
    good = tmp_path / "s.toml"
    good.write_text(f"dirs = ['{tmp_path / 'missing'}']\n")
    assert run_guarded(__import__("persd.engine.cli.commands.status", fromlist=["main"]).main,
                       ["--config", str(good)]) == 2
    assert "missing: no such directory" in capsys.readouterr().err


def test_a_bad_value_is_named_as_the_user_gave_it(tmp_path):
    from persd.engine.collect.config import parse_args

    toml = tmp_path / "c.toml"
    toml.write_text("tasks = 't'\nout = 'o'\ntemperature = 9.0\n")
    with pytest.raises(UsageError, match=rf"^{re.escape(str(toml))}: key 'temperature': 9.0: expected"):
        parse_args(["--config", str(toml), "--student-model", "m"], environ={})
    with pytest.raises(UsageError, match=r"^--temperature: 9.0: expected"):
        parse_args(["--config", str(toml), "--student-model", "m", "--temperature", "9"], environ={})


# ------------------------------------------------------------------ runtime names fields, the CLI names flags


def test_runtime_errors_name_the_field_and_the_cli_names_the_flag():
    from persd.engine.collect.config import parse_args

    with pytest.raises(ConfigError) as exc:
        TeacherConfig(base_url="http://127.0.0.1:1/v1", max_in_flight=0)
    assert (exc.value.section, exc.value.field) == ("teacher", "max_in_flight") and "--" not in str(exc.value)
    with pytest.raises(UsageError, match=r"^--teacher.max-in-flight: must be at least 1"):
        with config.runtime_errors_named(parse_args(["--tasks", "t", "--out", "o"], environ={})):
            TeacherConfig(base_url="http://127.0.0.1:1/v1", max_in_flight=0)
    with pytest.raises(UsageError, match=r"^--teacher-max-in-flight: must be at least 1"):  # as given: the old flag
        with config.runtime_errors_named(parse_args(["--tasks", "t", "--out", "o", "--teacher-max-in-flight", "3"],
                                                    environ={})):
            TeacherConfig(base_url="http://127.0.0.1:1/v1", max_in_flight=0)


def test_one_set_of_teacher_defaults():
    """collect's teacher section is the runtime TeacherConfig (no copies of its fields): same defaults."""
    c, t = CollectConfig(), TeacherConfig()
    assert isinstance(c.teacher, TeacherConfig)
    assert (c.teacher.model, c.teacher.rpm, c.teacher.tpm, c.teacher.max_in_flight, c.teacher.api_key_env) == \
        (t.model, t.rpm, t.tpm, t.max_in_flight, t.api_key_env)
    assert c.teacher.retry == t.retry
    assert (c.teacher_model, c.rpm, c.teacher_retries) == (t.model, t.rpm, t.retry.max_attempts)  # old names read


def test_one_parser_class():
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if not {".venv", "runs", "tests"} & set(p.relative_to(ROOT).parts)
                 and re.search(r"class \w+\(argparse\.ArgumentParser\)", p.read_text())]
    assert offenders == ["config.py"]


def test_to_toml_round_trips_a_stage_config(tmp_path):
    values = {"tasks": "a \"b\"\\c", "formats": ("persd", "inpd"), "temperature": 1e-05, "limit": None,
              "student_chat": True, "k": (1, 5), "seed": 3}
    path = tmp_path / "x.toml"
    path.write_text(config.to_toml(values))
    read = config.read_toml(path)
    assert read == {"tasks": 'a "b"\\c', "formats": ["persd", "inpd"], "temperature": 1e-05, "student_chat": True,
                    "k": [1, 5], "seed": 3}


def test_a_run_from_before_an_option_existed_resumes_while_the_option_keeps_its_default():
    from persd.engine.collect.config import describe_difference

    new = CollectConfig(tasks="t", out="o").fingerprint()
    old = {k: v for k, v in new.items() if k != "testgen_inputs"}  # as saved by a persd without the option
    assert describe_difference(config.with_defaults(old, CollectConfig), new) == []
    changed = CollectConfig(tasks="t", out="o", testgen_inputs=9).fingerprint()
    assert describe_difference(config.with_defaults(old, CollectConfig), changed) == \
        ["--testgen-inputs: was 5, now 9"]


def test_collect_names_a_runtime_mistake_by_its_flag(tmp_path, monkeypatch, capsys):
    """The teacher client (runtime) says api_key_env; persd collect says --teacher-api-key-env."""
    from helpers import doubling_task, write_jsonl
    from persd.engine.cli.main import main

    monkeypatch.delenv("PERSD_TEST_NO_SUCH_KEY", raising=False)
    tasks = write_jsonl(tmp_path / "t.jsonl", [doubling_task(0, "dbl", "dbl/0", "double")])
    rc = main(["collect", "--tasks", str(tasks), "--out", str(tmp_path / "o"), "--teacher-url",
               "https://api.example.com/v1", "--teacher-api-key-env", "PERSD_TEST_NO_SUCH_KEY", "--progress", "none",
               "--sandbox-workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--teacher-api-key-env: no teacher API key" in err and "PERSD_TEST_NO_SUCH_KEY" in err


# ------------------------------------------------------------------ component configs, nested as sections

OLD_COLLECT_FLAGS = (  # every flat flag persd collect had before the sections (they stay for one release)
    "--student-backend", "--student-model", "--student-url", "--student-chat", "--no-student-chat",
    "--student-concurrency", "--tensor-parallel-size", "--gpu-memory-utilization", "--kv-cache-gib", "--dtype",
    "--max-model-len", "--enforce-eager", "--no-enforce-eager", "--teacher-url", "--teacher-model",
    "--teacher-api-key-env", "--teacher-temperature", "--teacher-max-tokens", "--teacher-context", "--price-in",
    "--price-out", "--teacher-top-p", "--teacher-max-in-flight", "--rpm", "--tpm", "--max-cost", "--teacher-retries",
    "--teacher-retry-delay", "--teacher-max-retry-delay", "--teacher-deadline", "--teacher-timeout", "--prices",
    "--teacher-headroom", "--teacher-limit-window", "--teacher-jitter", "--teacher-reconcile-tokens",
    "--no-teacher-reconcile-tokens", "--sandbox-workers", "--exec-timeout")
BASE = ["--tasks", "t", "--out", "o"]


def collect(argv, **kw):
    from persd.engine.collect.config import parse_args

    return parse_args([*BASE, *argv], environ={}, **kw)


def test_a_component_option_is_a_nested_flag():
    cfg = collect(["--teacher.rpm", "90", "--teacher.retry.max-attempts", "3", "--student.model", "m",
                   "--sandbox.workers", "2", "--teacher.aimd-decrease", "0.5", "--no-student.enable-prefix-caching"])
    assert (cfg.teacher.rpm, cfg.teacher.retry.max_attempts, cfg.student.model, cfg.sandbox.workers) == (90, 3, "m", 2)
    assert cfg.teacher.aimd_decrease == 0.5 and cfg.student.enable_prefix_caching is False
    text = build_parser(COLLECT).format_help()
    assert "--teacher.rpm" in text and "--sandbox.timeout-s" in text and "--rpm " not in text  # old flags: no help
    assert "requests in flight (default: 64)" in text  # collect's own default for its student section


def test_a_component_option_is_a_toml_section_key(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("[teacher]\nrpm = 60\nextra-headers = {X-Team = 'a'}\n[teacher.retry]\nmax_attempts = 2\n"
                    "[sandbox]\nworkers = 3\n[student]\nmodel = 'm'\n")
    cfg = collect(["--config", str(toml), "--teacher.rpm", "90"])
    assert (cfg.teacher.rpm, cfg.teacher.retry.max_attempts, cfg.sandbox.workers) == (90, 2, 3)  # the flag wins
    assert cfg.teacher.extra_headers == {"X-Team": "a"} and cfg.student.model == "m"
    toml.write_text("[teacher]\nrmp = 60\n")
    with pytest.raises(UsageError, match=r"run.toml: \[teacher\]: unknown key 'rmp'"):
        collect(["--config", str(toml)])
    toml.write_text("[teacher]\nrpm = 0\n")
    with pytest.raises(UsageError, match=r"run.toml: \[teacher\]: key 'rpm': invalid value"):
        collect(["--config", str(toml)])


def test_eval_shares_collects_sections():
    from persd.engine.evaluation.config import parse_args

    cfg = parse_args(["--tasks", "t", "--out", "o", "--student.model", "m", "--sandbox.timeout-s", "3"])
    assert type(cfg.student) is type(collect([]).student) and cfg.sandbox.timeout_s == 3.0
    assert cfg.student.max_concurrency == 256 and collect([]).student.max_concurrency == 64
    assert cfg.fingerprint()["exec_timeout"] == 3.0  # the fingerprint keeps the old key


def test_loop_nests_a_stage_section(tmp_path):
    toml = tmp_path / "loop.toml"
    toml.write_text("tasks = 't'\nout = 'o'\n[collect.teacher]\nrpm = 60\nmodel = 'x'\n"
                    "[collect.student]\ndtype = 'bfloat16'\n[eval]\ntasks = 't'\n[eval.sandbox]\ntimeout_s = 3.0\n")
    values, _, _ = gather(LOOP, ["--config", str(toml), "--collect.teacher.tpm", "5000"])
    cfg = LOOP.cls(**values)
    assert cfg.collect == {"teacher": {"rpm": 60, "model": "x", "tpm": 5000}, "student": {"dtype": "bfloat16"}}
    assert cfg.fingerprint()["collect"] == {"teacher_model": "x"}  # old loop.json files hold this key
    assert "--collect.teacher.rpm" in build_parser(LOOP).format_help()
    toml.write_text("tasks = 't'\nout = 'o'\n[collect.student]\nmodel = 'm'\n")  # the loop sets it itself
    with pytest.raises(UsageError, match=r"\[collect\]: \[student\]: key 'model' cannot be set here"):
        gather(LOOP, ["--config", str(toml)])
    # the stage's file, as the loop writes it, read back by the stage
    stage = tmp_path / "collect.toml"
    stage.write_text(config.to_toml(config.deep_merge(cfg.collect, {"tasks": "t", "out": "o"})))
    got = collect(["--config", str(stage)])
    assert (got.teacher.rpm, got.teacher.tpm, got.student.dtype) == (60, 5000, "bfloat16")


def test_old_flags_and_keys_still_work_with_one_deprecation_line_each(tmp_path, capsys):
    parser_flags = {s for a in build_parser(COLLECT)._actions for s in a.option_strings}
    assert not [f for f in OLD_COLLECT_FLAGS if f not in parser_flags]
    cfg = collect(["--rpm", "90", "--exec-timeout", "3", "--teacher-url", "http://127.0.0.1:9/v1",
                   "--no-teacher-reconcile-tokens"])
    assert (cfg.teacher.rpm, cfg.sandbox.timeout_s, cfg.teacher.base_url) == (90, 3.0, "http://127.0.0.1:9/v1")
    assert cfg.teacher.reconcile_tokens is False
    err = capsys.readouterr().err.splitlines()
    assert err == ["persd: deprecated: --rpm is now --teacher.rpm",
                   "persd: deprecated: --exec-timeout is now --sandbox.timeout-s",
                   "persd: deprecated: --teacher-url is now --teacher.base-url",
                   "persd: deprecated: --no-teacher-reconcile-tokens is now --no-teacher.reconcile-tokens"]
    toml = tmp_path / "old.toml"
    toml.write_text("rpm = 60\nteacher-retries = 2\n")
    cfg = collect(["--config", str(toml)])
    assert (cfg.teacher.rpm, cfg.teacher.retry.max_attempts) == (60, 2)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "key 'rpm' is now 'rpm' under [teacher]" in err[0]
    assert "key 'teacher-retries' is now 'max-attempts' under [teacher.retry]" in err[1]
    values, _, _ = gather(LOOP, ["--collect.rpm", "30"])
    assert values["collect"] == {"teacher": {"rpm": 30}}
    assert capsys.readouterr().err.strip() == "persd: deprecated: --collect.rpm is now --collect.teacher.rpm"


def test_every_runtime_field_is_settable():
    """Each field of the runtime's configs is an option of the commands that use it (or set by the command)."""
    from persd.runtime.http import RetryPolicy
    from persd.runtime.sandbox.config import SandboxConfig
    from persd.runtime.student import StudentConfig

    set_by_the_command = {"teacher.journal_path", "student.seed", "student.log_path", "sandbox.per_core"}
    flags = {s for a in build_parser(COLLECT)._actions for s in a.option_strings}
    eval_flags = {s for a in build_parser(EVAL)._actions for s in a.option_strings}
    for section, cls in (("teacher", TeacherConfig), ("teacher.retry", RetryPolicy), ("student", StudentConfig),
                         ("sandbox", SandboxConfig)):
        for f in dataclasses.fields(cls):
            path = f"{section}.{f.name}"
            assert isinstance(f.metadata.get("changes_results"), bool) and f.metadata.get("help"), path
            if path in set_by_the_command or f.metadata.get("section"):
                continue
            flag = flag_of(path)
            assert flag in flags or f"--no-{flag[2:]}" in flags, flag
            if not section.startswith("teacher"):
                assert flag in eval_flags or f"--no-{flag[2:]}" in eval_flags, flag
    assert collect(["--teacher.cold-start-s", "0.5", "--teacher.default-cooldown-s", "2",
                    "--teacher.aimd-recover-per-s", "0.1", "--teacher.extra-headers", "X-A=1,X-B=2"]).teacher \
        .extra_headers == {"X-A": "1", "X-B": "2"}


def test_a_runtime_error_names_the_nested_flag():
    from persd.engine.collect.config import CollectConfig

    def raised(cfg, exc):
        with pytest.raises(UsageError) as err:
            with config.runtime_errors_named(cfg):
                raise exc
        return str(err.value)

    exc = ConfigError("max_model_len", "a 16384-token sequence does not fit: lower it or raise {kv_cache_gib}",
                      "student")
    assert raised(collect(["--student.model", "m"]), exc) == \
        "--student.max-model-len: a 16384-token sequence does not fit: lower it or raise --student.kv-cache-gib"
    assert raised(collect(["--max-model-len", "9"]), exc).startswith("--max-model-len: ")  # the flag as given
    assert raised(CollectConfig(), ConfigError("rpm", "must be positive", "teacher")).startswith("--teacher.rpm: ")
    with pytest.raises(UsageError, match=r"^--teacher.rpm: must be positive"):  # checked when read
        collect(["--teacher.rpm", "-1"]) if False else config.build(CollectConfig, {"tasks": "t", "out": "o",
                                                                               "teacher": {"rpm": -1}})


def _old_run(tmp_path: Path) -> tuple[Path, Path]:
    """A collect directory written by persd before the sections (flat manifest keys), with its tasks."""
    from helpers import write_doubling_tasks

    tasks = write_doubling_tasks(tmp_path / "tasks.jsonl", 2)
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    fixture = ROOT / "tests" / "data" / "collect-v0-flat"
    for f in (fixture / "shards").iterdir():
        (out / "shards" / f.name).write_bytes(f.read_bytes())
    text = (fixture / "manifest.json").read_text().replace("TASKS", str(tasks)).replace("OUT", str(out))
    (out / "manifest.json").write_text(text)
    return tasks, out


OLD_RUN_FLAGS = ["--sandbox-workers", "1", "--progress", "none", "--exec-timeout", "5", "--teacher-temperature",
                 "0.5", "--teacher-max-tokens", "700", "--refine-turns", "2", "--formats", "persd,inpd", "--rpm", "600",
                 "--student-concurrency", "8"]
NEW_RUN_FLAGS = ["--sandbox.workers", "1", "--progress", "none", "--sandbox.timeout-s", "5", "--teacher.temperature",
                 "0.5", "--teacher.max-tokens", "700", "--refine-turns", "2", "--formats", "persd,inpd",
                 "--teacher.rpm", "600", "--student.max-concurrency", "8"]


@pytest.mark.parametrize("flags", [OLD_RUN_FLAGS, NEW_RUN_FLAGS], ids=["old-flags", "new-flags"])
def test_a_run_from_before_the_sections_resumes(tmp_path, flags, capsys):
    from persd.engine.cli.main import main
    from persd.engine.collect.config import parse_args
    from persd.engine.collect.runner import plan_collect

    tasks, out = _old_run(tmp_path)
    (out / "shards").rename(tmp_path / "shards")  # interrupted before its shard was sealed
    plan = plan_collect(parse_args(["--tasks", str(tasks), "--out", str(out), *flags], environ={}))
    assert plan.warnings == [] and plan.shards.owned_tasks() == 2  # resumed, not refused
    shutil.rmtree(out / "shards")
    (tmp_path / "shards").rename(out / "shards")
    assert main(["collect", "--tasks", str(tasks), "--out", str(out), *flags]) == 0  # done: nothing redone
    changed = [f if f != "5" else "6" for f in flags]
    assert main(["collect", "--tasks", str(tasks), "--out", str(out), *changed]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "--sandbox.timeout-s: was 5.0, now 6.0" in err


def test_an_eval_directory_from_before_the_sections_resumes(tmp_path):
    """work/eval.json as persd wrote it with flat options (--student-model m --exec-timeout 3 --student-chat)."""
    from persd.engine.evaluation.config import parse_args
    from persd.engine.evaluation.journal import EvalJournal

    old = {"exec_timeout": 3.0, "limit": None, "max_tokens": 512, "min_time_limit": 0.5, "n": 2, "prompt_version": 1,
           "refine_steps": 0, "seed": 0, "student_chat": True, "student_model": "m", "style": "persd",
           "task_ids": None, "tasks": "t", "temperature": 0.5, "time_limit_factor": 20.0, "time_limits": "calibrated",
           "top_p": 0.95}
    journal = EvalJournal(tmp_path)
    journal.save_settings(old)
    base = ["--tasks", "t", "--out", str(tmp_path), "--n", "2", "--temperature", "0.5"]
    new = parse_args([*base, "--student.model", "m", "--sandbox.timeout-s", "3", "--student.chat"])
    assert journal.check_settings(new.fingerprint(), force=False) is True
    other = parse_args([*base, "--student.model", "m", "--sandbox.timeout-s", "4", "--student.chat"])
    with pytest.raises(UsageError, match=r"--sandbox.timeout-s: was 3.0, now 4.0"):
        journal.check_settings(other.fingerprint(), force=False)
