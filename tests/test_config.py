"""The one configuration pattern (persd.config): every command's options are fields that say whether they
change results; the command line, --config TOML, presets and fingerprints are generated from them."""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
from persd import config
from persd.config import Command, build_parser, config_fields, fingerprint, flag_of, gather, shown_default
from persd.engine.cli.commands.check import CHECK
from persd.engine.cli.commands.loop import LOOP
from persd.engine.cli.commands.status import STATUS
from persd.engine.cli.commands.tiny_model import TINY_MODEL
from persd.engine.cli.main import run_guarded
from persd.engine.collect.backends import RUNTIME_FIELDS
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
        section, _, name = action.dest.rpartition(".")
        assert (section or action.dest) in known, action.option_strings


@pytest.mark.parametrize("cmd", COMMANDS, ids=ids(COMMANDS))
def test_every_field_is_in_help_with_its_default(cmd: Command):
    text = " ".join(build_parser(cmd).format_help().split())

    def check(cls, prefix=""):
        for f in config_fields(cls):
            if f.metadata["nested"] is not None:
                check(f.metadata["nested"], f"{f.name}.")
                continue
            if not f.metadata["cli"] or (prefix and f.name in _owned(cmd, prefix)):
                continue
            flag = f.metadata["metavar"] if f.metadata["positional"] else "--" + prefix + flag_of(f)[2:]
            assert flag in text, flag
            entry = " ".join(f"{f.metadata['help']} (default: {shown_default(f)})".split())
            assert entry in text, f"{flag}: {entry!r} not in --help"

    check(cmd.cls)


def _owned(cmd: Command, prefix: str) -> tuple[str, ...]:
    f = next(f for f in config_fields(cmd.cls) if f.name == prefix[:-1])
    return f.metadata["owned"]


# ------------------------------------------------------------------ the fingerprint comes from the metadata


def other_value(cls, f: dataclasses.Field):
    """A valid value different from the field's default."""
    default = config._default(f)
    if f.metadata["choices"]:
        return next(c for c in f.metadata["choices"] if c != default)
    hint = config._hint(cls, f.name)
    if f.name == "formats":
        return ("inpd",) if cls is CollectConfig else ["inpd"]
    if hint is bool:
        return not default
    if hint is int:
        return (default or 0) + 3
    if hint is float:
        return (default or 0.0) + 0.25
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
    CollectConfig: dict(tasks="t", out="o", teacher_url="http://127.0.0.1:9/v1"),
    EvalConfig: dict(tasks="t", out="o"),
    TrainConfig: dict(data=["d"], model="m", out="o"),
}


@pytest.mark.parametrize("cls", list(BASES) + [c.cls for c in (CHECK, TINY_MODEL, LOOP)],
                         ids=lambda c: c.__name__)
def test_each_result_changing_field_changes_the_fingerprint_and_no_other_does(cls):
    base = BASES.get(cls, {})
    before = fp(cls(**base))
    for f in config_fields(cls):
        if f.metadata["nested"] is not None:
            continue
        after = fp(cls(**{**base, f.name: other_value(cls, f)}))
        if f.metadata["changes_results"]:
            assert after != before, f"{cls.__name__}.{f.name} changes results but not the fingerprint"
        else:
            assert after == before, f"{cls.__name__}.{f.name} does not change results but is in the fingerprint"


def test_each_stage_option_given_to_loop_is_fingerprinted_when_it_changes_results():
    before = LOOP.cls().fingerprint()
    for section in ("collect", "train", "eval"):
        f = next(f for f in config_fields(LOOP.cls) if f.name == section)
        stage = f.metadata["nested"]
        for sf in config_fields(stage):
            if sf.name in f.metadata["owned"]:
                continue
            after = LOOP.cls(**{section: {sf.name: other_value(stage, sf)}}).fingerprint()
            assert (after != before) == sf.metadata["changes_results"], f"{section}.{sf.name}"


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
    with pytest.raises(ConfigError) as exc:
        TeacherConfig(base_url="http://127.0.0.1:1/v1", max_in_flight=0)
    assert (exc.value.section, exc.value.field) == ("teacher", "max_in_flight") and "--" not in str(exc.value)
    with pytest.raises(UsageError, match=r"^--teacher-max-in-flight: must be at least 1"):
        with config.runtime_fields_as_flags(RUNTIME_FIELDS):
            TeacherConfig(base_url="http://127.0.0.1:1/v1", max_in_flight=0)


def test_one_set_of_teacher_defaults():
    c, t = CollectConfig(), TeacherConfig()
    assert (c.teacher_model, c.rpm, c.tpm, c.teacher_max_in_flight, c.teacher_api_key_env) == \
        (t.model, t.rpm, t.tpm, t.max_in_flight, t.api_key_env)
    assert (c.teacher_retries, c.teacher_retry_delay) == (t.retry.max_attempts, t.retry.base_delay_s)


def test_one_parser_class():
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if ".venv" not in p.parts and "tests" not in p.parts
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
