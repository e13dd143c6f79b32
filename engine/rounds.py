"""Multi-round distillation: round r collects with the current student, trains on what was collected,
evaluates, and hands the new checkpoint to round r+1, which attempts only the tasks the student has
not solved yet.

Each stage is the ordinary command (`persd collect`, `persd train`, `persd eval`) run as a child
process, so a stage owns its accelerator memory for exactly as long as it runs (vLLM, then
DeepSpeed, then vLLM again), a multi-GPU trainer can be started under its launcher, and every stage
resumes the way it does on its own. The directory's layout is persd.engine.rundirs.loop's; each
stage's own directory is its command's (collect.layout, rundirs.train, rundirs.eval).

A rerun skips finished stages (each kind's `is_done()`) and resumes the interrupted one.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from persd.config import deep_merge, fingerprint, nonneg_int, opt, positive_int, to_toml
from persd.engine.collect.config import PROGRESS_MODES, CollectConfig, resolve_student_backend
from persd.engine.collect.layout import CollectLayout
from persd.engine.evaluation.config import EvalConfig
from persd.engine.rundirs.eval import EvalLayout
from persd.engine.rundirs.files import atomic_write, atomic_write_json
from persd.engine.rundirs.kinds import hint
from persd.engine.rundirs.loop import LoopLayout, LoopManifest
from persd.engine.rundirs.settings import check_settings
from persd.engine.rundirs.train import TrainLayout
from persd.engine.tasks import resolve_source
from persd.runtime.errors import ConfigError, PersdError, UsageError
from persd.trainers.command import TrainCommand

# Stage fields the loop sets itself each round (not in a [collect], [train] or [eval] section).
COLLECT_OWNED = ("tasks", "out", "limit", "student.backend", "student.model", "student.url", "student.chat",
                 "sandbox.workers", "progress", "force", "num_shards", "shard_index")
TRAIN_OWNED = ("data", "model", "out", "resume", "plan", "gpus_per_node", "nodes", "gpu_memory", "cpu_memory")
EVAL_OWNED = ("out", "student.backend", "student.model", "student.url", "student.chat", "sandbox.workers",
              "progress", "force")


@dataclass
class LoopConfig:
    """`persd loop`'s options: its own, a few shared by every stage, and one section per stage."""

    rounds: int = opt(1, help="collect -> train -> eval rounds (rerun with more to add rounds)",
                      changes_results=False, type=positive_int, group="rounds, tasks and output")
    tasks: str = opt("", help="tasks to distil on: any source persd collect reads (JSONL, parquet, a saved dataset, "
                     "hf:NAME, a built-in set)", changes_results=True,
                     group="rounds, tasks and output", shown="required")
    out: str = opt("", help="run directory (rerun with it to resume)", changes_results=False,
                   group="rounds, tasks and output", shown="required")
    limit: int | None = opt(None, help="only the first N of --tasks", changes_results=True, type=positive_int,
                            group="rounds, tasks and output", shown="all")
    # shared by the stages (collect and eval)
    student_backend: str = opt("auto", help="auto: vllm on a GPU machine, else hf (the student changes every "
                                            "round, so no openai)", changes_results=True,
                               choices=("auto", "vllm", "hf"), group="shared by the stages")
    student_model: str | None = opt(None, help="the starting checkpoint", changes_results=True,
                                    group="shared by the stages", shown="a tiny random-weight model (demo)")
    student_chat: bool = opt(False, help="an instruct model: chat template / chat messages", changes_results=True,
                             group="shared by the stages")
    sandbox_workers: int | None = opt(None, help="sandbox processes of collect and eval", changes_results=False,
                                      type=nonneg_int, group="shared by the stages", shown="one per core")
    progress: str = opt("plain", help="the stages' progress display", changes_results=False,
                        choices=PROGRESS_MODES, group="shared by the stages")
    force: bool = opt(False, help="continue a run (and its stages) whose settings changed", changes_results=False,
                      group="shared by the stages")
    # the loop's own
    train_on: str = opt("all", help="all: every round's records so far; round: this round's only",
                        changes_results=True, choices=("all", "round"), group="rounds, tasks and output")
    train_from: str = opt("base", help="base: fine-tune the starting model each round; previous: the last "
                                       "round's checkpoint", changes_results=True, choices=("base", "previous"),
                          group="rounds, tasks and output")
    train_launcher: str = opt("", help='run training under a launcher, e.g. "torchrun --nproc_per_node 8"',
                              changes_results=False, group="rounds, tasks and output", shown="this Python")
    eval_base: bool = opt(True, help="evaluate the starting student as round 0", changes_results=False,
                          group="rounds, tasks and output")
    preset: str | None = opt(None, help="paper: the reference implementation's protocol for collect and train "
                             "(--collect.preset paper --train.preset paper, unless a section names its own; "
                             "docs/paper.md)", changes_results=True, choices=("paper",),
                             group="rounds, tasks and output")
    # the stages: any persd collect / train / eval option (their --help), as [collect] keys or --collect.KEY
    collect: dict[str, Any] = opt(help="persd collect options", changes_results=True, nested=CollectConfig,
                                  owned=COLLECT_OWNED)
    train: dict[str, Any] = opt(help="persd train options", changes_results=True, nested=TrainCommand,
                                owned=TRAIN_OWNED)
    eval: dict[str, Any] = opt(help="persd eval options (tasks or protocol required)", changes_results=True,
                               nested=EvalConfig, owned=EVAL_OWNED)

    def resolved_backend(self) -> str:
        return resolve_student_backend(self.student_backend)  # no URL: auto is vllm on a GPU machine, else hf

    def fingerprint(self) -> dict[str, Any]:
        """Settings that alter results (fields and section keys marked changes_results). --rounds is not
        one: a rerun may add rounds."""
        return fingerprint(self)

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", "required (the tasks to distil on)")
        if not self.out:
            raise ConfigError("out", "required (the run directory; rerun with it to resume)")
        if not self.eval.get("tasks") and not self.eval.get("protocol"):
            raise ConfigError("eval.tasks", "required unless eval.protocol names the evaluation (persd loop --help)")

    # ---- what each stage is given

    def shared(self, model: str) -> dict[str, Any]:
        student = {"backend": self.resolved_backend(), "model": model, "chat": self.student_chat or None}
        return {"student": student, **({"sandbox": {"workers": self.sandbox_workers}}
                                        if self.sandbox_workers is not None else {}),
                "progress": self.progress, "force": self.force or None}


# ------------------------------------------------------------------ the stages' directories

Layout = LoopLayout  # its older name


def collect_done(out: Path) -> bool:
    return CollectLayout(out).is_done()


def train_done(out: Path) -> bool:
    return TrainLayout(out).is_done()


def eval_done(out: Path) -> bool:
    return EvalLayout(out).is_done()


def collect_results(out: Path) -> list[dict]:
    return list(CollectLayout(out).results())


def collect_records(out: Path) -> list[dict]:
    return list(CollectLayout(out).records())


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for raw in fh if raw.strip())


# ------------------------------------------------------------------ the loop


@dataclass
class RoundInfo:
    round: int
    model_in: str
    model_out: str | None = None
    tasks: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    records: int = 0
    train_records: int = 0
    trained: bool = False
    eval: dict[str, Any] | None = None


class Loop:
    def __init__(self, cfg: LoopConfig):
        self.cfg = cfg
        self.lay = LoopLayout(Path(cfg.out))
        self.backend = cfg.resolved_backend()
        self.state = LoopManifest()

    # ---------------------------------------------------------------- setup

    def prepare(self) -> None:
        cfg = self.cfg
        if self.backend == "openai":
            raise UsageError("--student-backend openai cannot be used by persd loop: the student changes every "
                             "round (use vllm or hf with a checkpoint)")
        self.validate()
        self.lay.out.mkdir(parents=True, exist_ok=True)
        fp = cfg.fingerprint()
        try:
            old, why = self.lay.read_manifest(), ""
        except ValueError as exc:
            old, why = None, str(exc)
        if old is not None or why:
            check_settings(self.lay.out, self.lay.manifest, old and old.fingerprint, fp, LoopConfig, force=cfg.force,
                           what="a loop run", forced="continue with these settings", unreadable=why,
                           sections={"collect": CollectConfig.RENAMED, "eval": EvalConfig.RENAMED})
        self.state = old or LoopManifest()
        self.state.fingerprint = fp
        if not cfg.student_model:
            base = self.lay.base_model
            if not (base / "config.json").exists():
                from persd.runtime.student.tiny_model import write_tiny_model

                write_tiny_model(base, seed=0)
                self.log(f"student: no --student-model given: a tiny random-weight model at {base} (offline demo)")
            self.base_model = str(base)
        else:
            self.base_model = cfg.student_model
        self.save_state()

    def validate(self) -> None:
        """Everything a stage would refuse, checked before the first stage runs: the task files (every
        line), the student model, the launcher; each stage's options were checked when the loop's
        configuration was read (they are typed by the stage's own fields)."""
        from persd.engine.tasks import iter_tasks

        cfg = self.cfg
        for src, limit, fields in ((cfg.tasks, cfg.limit, self.task_fields()),
                                   (cfg.eval.get("tasks"), cfg.eval.get("limit"), cfg.eval.get("task_fields"))):
            if src:
                resolve_source(src)
                for i, _ in enumerate(iter_tasks(src, fields)):  # InputError names the file and line
                    if limit is not None and i + 1 >= limit:
                        break
        if cfg.student_model:
            from persd.runtime.student.model_dir import model_dir_problem

            problem = model_dir_problem(cfg.student_model)
            if problem:
                raise UsageError(f"--student-model {problem}")
        if cfg.train_launcher:
            try:
                shlex.split(cfg.train_launcher)
            except ValueError as exc:
                raise UsageError(f"--train-launcher {cfg.train_launcher!r}: {exc}") from None

    def save_state(self) -> None:
        atomic_write_json(self.lay.manifest, self.state.to_json(), sort_keys=False)

    def log(self, msg: str) -> None:
        print(f"persd loop: {msg}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- run

    def run(self) -> list[RoundInfo]:
        self.prepare()
        infos: list[RoundInfo] = []
        if self.cfg.eval_base:
            base = RoundInfo(0, self.base_model, self.base_model)
            self.stage_eval(0, self.base_model)
            base.eval = self.read_eval(0)
            infos.append(base)
        model = self.base_model
        for r in range(1, self.cfg.rounds + 1):
            info = RoundInfo(r, model)
            tasks = self.round_tasks(r)
            if tasks is None:
                self.log(f"round {r}: every task was solved by the student in earlier rounds; stopping")
                break
            info.tasks = count_lines(tasks) if r > 1 else self.round_one_count()
            self.stage_collect(r, tasks, model)
            results = collect_results(self.lay.collect(r))
            info.outcomes = _count(results, "outcome")
            info.records = len(collect_records(self.lay.collect(r)))
            info.train_records = self.write_train_data(r)
            if info.train_records:
                init = self.base_model if self.cfg.train_from == "base" else model
                self.stage_train(r, init)
                model = str(self.lay.checkpoint(r))
                info.trained = True
            else:
                self.log(f"round {r}: no records to train on; the student stays {model}")
            info.model_out = model
            self.stage_eval(r, model)
            info.eval = self.read_eval(r)
            self.state.rounds[str(r)] = {"model_in": info.model_in, "model_out": model, "trained": info.trained,
                                            "train_records": info.train_records, "outcomes": info.outcomes}
            self.save_state()
            infos.append(info)
        self.write_summary(infos)
        return infos

    # ---------------------------------------------------------------- tasks per round

    def round_one_count(self) -> int:
        from persd.engine.collect.source import scan_source

        return scan_source(self.cfg.tasks, self.cfg.limit, self.task_fields()).count

    def task_fields(self) -> str | None:
        """The collect stage's --task-fields: how the task source's columns name a task (its id included)."""
        return self.cfg.collect.get("task_fields") or None

    def round_tasks(self, r: int) -> Path | str | None:
        """Round 1: the task source. Round r > 1: a file of the tasks no earlier round's student passed
        (written once, from sealed results, so a rerun sees the same file); None when none are left."""
        if r == 1:
            return self.cfg.tasks
        path = self.lay.tasks(r)
        if path.exists():
            return path if count_lines(path) else None
        solved = {line["task_id"] for k in range(1, r) for line in collect_results(self.lay.collect(k))
                  if line.get("outcome") == "student_passed"}
        kept = []
        for i, (raw, task_id) in enumerate(_task_lines(self.cfg.tasks, self.task_fields())):
            if self.cfg.limit is not None and i >= self.cfg.limit:
                break
            if task_id not in solved:
                kept.append(raw.rstrip(b"\r\n") + b"\n")
        atomic_write(path, b"".join(kept))
        return path if kept else None

    # ---------------------------------------------------------------- training data

    def write_train_data(self, r: int) -> int:
        """Records of this round (or of every round so far), ids prefixed with their round so that a task
        refined again in a later round is a second example, not a duplicate."""
        path = self.lay.train_data(r)
        if path.exists():
            return count_lines(path)
        rounds = range(1, r + 1) if self.cfg.train_on == "all" else [r]
        out = []
        for k in rounds:
            for rec in collect_records(self.lay.collect(k)):
                rec["id"] = f"round-{k}/{rec['id']}"
                rec.setdefault("meta", {})["round"] = k
                out.append(orjson.dumps(rec) + b"\n")
        atomic_write(path, b"".join(out))
        return len(out)

    # ---------------------------------------------------------------- stages

    def stage_collect(self, r: int, tasks: Path | str, model: str) -> None:
        out = self.lay.collect(r)
        if collect_done(out):
            self.log(f"round {r}: collect: done already ({out})")
            return
        c = self.cfg
        values = deep_merge({"preset": c.preset} if c.preset else {}, c.collect, c.shared(model),
                            {"tasks": str(tasks), "out": str(out), "limit": c.limit if r == 1 else None})
        self.run_stage(r, "collect", [sys.executable, "-m", "persd", "collect"], values)

    def stage_train(self, r: int, init: str) -> None:
        out = self.lay.train(r)
        if train_done(out):
            self.log(f"round {r}: train: done already ({TrainLayout(out).final})")
            return
        c = self.cfg
        values = {**({"preset": c.preset} if c.preset else {}), **c.train,
                  "data": [str(self.lay.train_data(r))], "model": init, "out": str(out)}
        launcher = shlex.split(c.train_launcher) if c.train_launcher else [sys.executable]
        resume = ["--resume"] if _has_checkpoint(TrainLayout(out).checkpoints) else []
        self.run_stage(r, "train", [*launcher, "-m", "persd", "train"], values, resume)

    def stage_eval(self, r: int, model: str) -> None:
        out = self.lay.eval(r)
        if eval_done(out):
            self.log(f"round {r}: eval: done already ({out})")
            return
        values = deep_merge(self.cfg.eval, self.cfg.shared(model), {"out": str(out)})
        self.run_stage(r, "eval", [sys.executable, "-m", "persd", "eval"], values)

    def run_stage(self, r: int, name: str, command: list[str], values: dict[str, Any],
                  extra: list[str] = ()) -> None:
        """Write round-R/NAME.toml (the stage's whole configuration) and run `persd NAME --config` on it."""
        path = self.lay.stage_config(r, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, to_toml(values).encode())
        cmd = [*command, "--config", str(path), *extra]
        line = shlex.join(cmd)
        self.log(f"round {r}: {name}: {line}")
        self.lay.commands.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lay.commands, "a", encoding="utf-8") as fh:
            fh.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} round {r} {name}\n{line}\n")
        rc, signalled = run_child(cmd)
        if rc == 0 and not signalled:
            return
        if rc in (130, -signal.SIGINT, -signal.SIGTERM) or signalled:
            raise StageInterrupted(f"round {r}: {name} was interrupted (exit {rc}); its work so far is saved")
        err = PersdError(f"round {r}: {name} failed (exit {rc}; its message is above); "
                         f"rerun the same command to resume from this stage")
        err.exit_code = 2 if rc == 2 else 1
        raise err

    # ---------------------------------------------------------------- reporting

    def read_eval(self, r: int) -> dict[str, Any]:
        summary = orjson.loads(EvalLayout(self.lay.eval(r)).summary.read_bytes())
        return {k: summary.get(k) for k in ("tasks", "n", "pass@1", "steps", "final")}

    def write_summary(self, infos: list[RoundInfo]) -> None:
        rows = [{"round": i.round, "model_in": i.model_in, "model_out": i.model_out, "tasks": i.tasks,
                 "outcomes": i.outcomes, "records": i.records, "train_records": i.train_records,
                 "trained": i.trained, "eval": i.eval} for i in infos]
        atomic_write_json(self.lay.summary, {"rounds": rows}, sort_keys=False)


def print_table(infos: list[RoundInfo], out: str) -> None:
    from rich.console import Console
    from rich.table import Table

    steps = max((len(i.eval["steps"]) for i in infos if i.eval), default=1)
    table = Table(title=f"persd loop: {out}")
    for col in ("round", "tasks", "student ok", "refined", "unresolved", "records", "train set", "pass@1"):
        table.add_column(col, justify="right")
    if steps > 1:
        table.add_column(f"pass@1 +{steps - 1} refine", justify="right")
    for i in infos:
        p1 = i.eval.get("pass@1") if i.eval else None
        row = [str(i.round) if i.round else "base",
               str(i.tasks) if i.round else "-",
               str(i.outcomes.get("student_passed", 0)) if i.round else "-",
               str(i.outcomes.get("refined", 0)) if i.round else "-",
               str(i.outcomes.get("unresolved", 0) + i.outcomes.get("error", 0)) if i.round else "-",
               str(i.records) if i.round else "-",
               (str(i.train_records) if i.trained else "none") if i.round else "-",
               "-" if p1 is None else f"{100 * p1:.2f}%"]
        if steps > 1:
            last = i.eval["steps"][-1].get("pass@1") if i.eval else None
            row.append("-" if last is None else f"{100 * last:.2f}%")
        table.add_row(*row)
    console = Console()
    console.print(table)
    console.print(f"summary: {out}/summary.json  commands: {out}/commands.log")
    print(hint(out))


# ------------------------------------------------------------------ helpers


class StageInterrupted(KeyboardInterrupt):
    """A stage stopped on SIGINT/SIGTERM at its own safe point; the loop exits 130 with this message."""


def run_child(cmd: list[str]) -> tuple[int, bool]:
    """Run a stage and wait for it, however many signals arrive: (exit code, whether a signal came).

    The stage runs in its own process group, so a Ctrl-C at the terminal reaches only the loop, which
    passes each SIGINT/SIGTERM on to the stage's group once: the stage sees exactly what it would see
    run alone (the first signal: stop at its safe point, e.g. train checkpoints its last step; the
    second: stop at once), and the loop never exits before the stage has."""
    got: list[int] = []
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, process_group=0)

    def forward(signum, frame) -> None:
        got.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return proc.wait(), bool(got)
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _count(lines: list[dict], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        out[line.get(key)] = out.get(line.get(key), 0) + 1
    return out


def _task_lines(src: str, fields: str | None = None):
    """(JSONL line, task id) of every task in a source, lazily (a dataset's row as a JSON line); `fields`:
    --task-fields, so a row whose id is in another column is named as the collect stage names it."""
    from persd.engine.tasks import _fields, iter_rows, task_of

    mapping = _fields(fields)
    for row in iter_rows(src):
        yield row.raw, task_of(row, mapping).task_id


def _has_checkpoint(ckpt_dir: Path) -> bool:
    if not ckpt_dir.is_dir() or not any(ckpt_dir.iterdir()):
        return False
    from persd.trainers.checkpoint import latest_tag

    return latest_tag(ckpt_dir) is not None
