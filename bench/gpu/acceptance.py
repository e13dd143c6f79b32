"""The GPU acceptance run: every check, one after the other, each a `persd` command in a child process
with its own time limit, within one overall budget (8 minutes by default). Writes `OUT/acceptance.json`
(one entry per check: ok, seconds, figures, error) and prints a table; the log is the stdout.

    python -m persd.bench.gpu.acceptance --out DIR              # on the GPU machine (bench/gpu/run.sh)
    python -m persd.bench.gpu.acceptance --out DIR --dry-run    # here, on the CPU, tiny: the tests run this

Checks:
  env        the machine, and the versions really used (persd pins torch 2.13 for CPU; there the
             machine's own torch, transformers and the carried DeepSpeed run, and this says which)
  train      `persd bench train` on a random ~1B model, bf16, ZeRO-2, packed vs padded: tokens/s, MFU,
             peak GPU memory, beside `persd train --plan`'s prediction for the same run
  zero3      a short ZeRO-3 run of the same model: loss finite and falling, a checkpoint, `--resume`
             from it (the resumed steps' losses against the first run's), the export reloaded with
             transformers on the GPU and generating
  student    the hf backend with dynamic batching against plain `model.generate`, at 1, 8, 32 at once
  sandbox    `persd bench sandbox` at 2, 4, 8, 16 workers (the machine's cores), `persd bench engine`
vLLM is not run: its wheel is far over what a device call can carry; the vLLM path is checked on CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

H200_BF16_PEAK_TFLOPS = 989.0  # dense bf16, H100/H200 SXM (NVIDIA's datasheet, without sparsity)


@dataclass
class Settings:
    """The sizes of one run: the real one, or the tiny dry run."""

    model: str = "1b"  # bench train's --random-model: 1b or HIDDENxLAYERS
    seq_len: int = 2048
    micro_batch: int = 8
    train_steps: int = 20
    precision: str = "bf16"
    zero3_steps: int = 6
    zero3_seq_len: int = 1024
    zero3_micro_batch: int = 4
    student_batches: str = "1,8,32"
    student_tokens: int = 64
    sandbox_workers: tuple[int, ...] = (2, 4, 8, 16)
    engine_args: tuple[str, ...] = ()
    budget_s: float = 480.0

    @classmethod
    def dry_run(cls) -> "Settings":
        return cls(model="64x2", seq_len=256, micro_batch=2, train_steps=3, precision="fp32", zero3_steps=4,
                   zero3_seq_len=128, zero3_micro_batch=2, student_batches="1,4", student_tokens=8,
                   sandbox_workers=(1, 2), engine_args=("--tasks", "16", "--student-latency", "0.05",
                                                        "--instant-tasks", "300", "--memory-small", "100"),
                   budget_s=900.0)


@dataclass
class Check:
    name: str
    ok: bool = False
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Run:
    def __init__(self, out: Path, settings: Settings, data: list[str], dry_run: bool):
        self.out, self.s, self.data, self.dry_run = out, settings, data, dry_run
        self.work = out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.checks: list[Check] = []
        self.env = dict(os.environ)
        if dry_run:
            self.env["DS_ACCELERATOR"] = "cpu"

    def left(self) -> float:
        return self.s.budget_s - (time.monotonic() - self.started)

    def persd(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """`python -m persd ARGS`, its output into the log; raises on failure or on running out of time."""
        cmd = [sys.executable, "-m", "persd", *args]
        print("$ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=max(1.0, timeout))
        sys.stdout.write(proc.stdout[-6000:])
        sys.stdout.write(proc.stderr[-6000:])
        if proc.returncode != 0:
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}")
        return proc

    def python(self, module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", module, *args]
        print("$ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=max(1.0, timeout))
        sys.stdout.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        if proc.returncode != 0:
            raise RuntimeError(f"{module}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}")
        return proc

    def check(self, name: str, fn: Callable[[Check, float], None], share: float) -> None:
        """Run one check with `share` of the time left (the last check gets all of it)."""
        c = Check(name)
        t0 = time.monotonic()
        print(f"\n== {name} ({self.left():.0f} s left)", flush=True)
        try:
            if self.left() < 10:
                raise RuntimeError("no time left in the budget")
            fn(c, self.left() * share)
            c.ok = True
        except subprocess.TimeoutExpired as exc:
            c.error = f"timed out after {exc.timeout:.0f} s"
        except Exception as exc:  # noqa: BLE001 - one failed check must not stop the others
            c.error = f"{type(exc).__name__}: {exc}"
        c.seconds = time.monotonic() - t0
        print(f"== {name}: {'ok' if c.ok else 'FAILED: ' + str(c.error)} in {c.seconds:.0f} s", flush=True)
        self.checks.append(c)
        self.write()

    def write(self) -> None:
        report = {"dry_run": self.dry_run, "settings": asdict(self.s), "data": self.data,
                  "wall_s": time.monotonic() - self.started, "checks": [asdict(c) for c in self.checks]}
        (self.out / "acceptance.json").write_text(json.dumps(report, indent=2, default=str))

    # ------------------------------------------------------------------ the checks

    def env_check(self, c: Check, timeout: float) -> None:
        import torch
        import transformers

        c.figures = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                     "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                     "gpu_memory_gib": (torch.cuda.get_device_properties(0).total_memory / 2**30
                                        if torch.cuda.is_available() else None)}
        try:
            from importlib.metadata import version

            c.figures["deepspeed"] = version("deepspeed")
        except Exception:  # noqa: BLE001
            c.figures["deepspeed"] = None
        if not torch.__version__.startswith("2.13"):
            c.figures["note"] = (f"persd pins torch 2.13.0 (the CPU build here); this run uses the machine's torch "
                                 f"{torch.__version__} and transformers {transformers.__version__}")
        print(json.dumps(c.figures, indent=2))
        if not self.dry_run and not torch.cuda.is_available():
            raise RuntimeError("no GPU visible to torch")

    def _random_model(self) -> Path:
        from persd.bench.train import write_random_model
        from persd.runtime.student.tiny_model import write_tiny_model

        tiny = self.work / "tokenizer-source"
        if not (tiny / "config.json").exists():
            write_tiny_model(tiny, seed=0)
        model = self.work / f"random-{self.s.model}"
        if not (model / "config.json").exists():
            write_random_model(tiny, model, self.s.model, self.s.seq_len)
        return model

    def train_check(self, c: Check, timeout: float) -> None:
        model = self._random_model()
        t0 = time.monotonic()
        self.persd("train", "--plan", "--model", str(model), "--deepspeed", "zero2", "--seq-len", str(self.s.seq_len),
                   "--micro-batch", str(self.s.micro_batch), "--gpus-per-node", "1", "--out", str(self.work / "plan"),
                   timeout=min(120.0, timeout))
        plan = json.loads((self.work / "plan" / "plan.json").read_text())
        out = self.work / "train-bench.json"
        self.persd("bench", "train", "--model", str(self.work / "tokenizer-source"), "--random-model", self.s.model,
                   "--modes", "pack,pad", "--steps", str(self.s.train_steps), "--micro-batch", str(self.s.micro_batch),
                   "--seq-len", str(self.s.seq_len), "--precision", self.s.precision, "--deepspeed", "zero2",
                   "--data", *self.data, "--out", str(out), timeout=timeout - (time.monotonic() - t0))
        bench = json.loads(out.read_text())
        rows = {r["mode"]: r for r in bench["results"]}
        c.figures = {
            "params": rows["pack"]["params"],
            "plan_total_gpu_gib": plan["total_gpu"] / 2**30,
            "plan_model_states_gib": plan["model_states_gpu"] / 2**30,
            **{f"{m}_{k}": rows[m].get(k) for m in rows for k in ("tokens_per_s", "mfu", "peak_gpu_gib",
                                                                 "padding_epoch", "final_loss")},
        }
        c.figures["pack_speedup"] = rows["pack"]["tokens_per_s"] / rows["pad"]["tokens_per_s"]
        measured = rows["pack"].get("peak_gpu_gib")
        if measured:
            c.figures["plan_vs_measured"] = c.figures["plan_total_gpu_gib"] / measured

    def zero3_check(self, c: Check, timeout: float) -> None:
        model = self._random_model()
        run = self.work / "zero3"
        args = ["train", "--data", *self.data, "--model", str(model), "--init", "random", "--deepspeed", "zero3",
                "--precision", self.s.precision, "--seq-len", str(self.s.zero3_seq_len), "--micro-batch",
                str(self.s.zero3_micro_batch), "--grad-accum", "1", "--max-steps", str(self.s.zero3_steps),
                "--save-every", str(self.s.zero3_steps // 2), "--lr", "3e-4", "--warmup-steps", "0",
                "--log-every", "1", "--no-plan-check", "--out", str(run)]
        t0 = time.monotonic()
        self.persd(*args, timeout=timeout * 0.45)
        first = _metrics(run / "metrics.jsonl")
        losses = [r["loss"] for r in first]
        if not all(math.isfinite(x) for x in losses):
            raise RuntimeError(f"a loss is not finite: {losses}")
        c.figures["losses"] = losses
        c.figures["loss_falls"] = losses[-1] < losses[0]
        checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
        c.figures["checkpoints"] = checkpoints
        # the run as an interruption after the mid-run checkpoint leaves it (no final model, no summary),
        # resumed: the steps after the checkpoint run again and must give the first run's losses
        resumed_run = self.work / "zero3-resumed"
        shutil.rmtree(resumed_run, ignore_errors=True)
        shutil.copytree(run, resumed_run, ignore=shutil.ignore_patterns("final", "train.json"))
        self.persd(*args[:-1], str(resumed_run), "--resume", timeout=timeout * 0.8 - (time.monotonic() - t0))
        again = {r["step"]: r["loss"] for r in _metrics(resumed_run / "metrics.jsonl")}
        resumed = {r["step"]: r["loss"] for r in first if r["step"] > self.s.zero3_steps // 2}
        c.figures["resumed_steps"] = sorted(resumed)
        c.figures["resume_max_rel_diff"] = max(abs(again[k] - v) / max(abs(v), 1e-12) for k, v in resumed.items())
        c.figures.update(self._reload(run / "final"))
        if not c.figures["loss_falls"]:
            raise RuntimeError(f"the loss did not fall: {losses}")

    def _reload(self, final: Path) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        tok = AutoTokenizer.from_pretrained(final)
        model = AutoModelForCausalLM.from_pretrained(final, dtype=dtype).to(device).eval()
        enc = tok("def add(a, b):\n", return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        new = int(out.shape[1] - enc["input_ids"].shape[1])
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
        if new < 1:
            raise RuntimeError("the reloaded export generated nothing")
        return {"export_reloaded_on": device, "export_generated_tokens": new}

    def student_check(self, c: Check, timeout: float) -> None:
        final = self.work / "zero3" / "final"
        model = final if (final / "config.json").exists() else self.work / "tokenizer-source"
        out = self.work / "student.json"
        self.python("persd.bench.gpu.student_gpu", "--model", str(model), "--batch-sizes", self.s.student_batches,
                    "--max-tokens", str(self.s.student_tokens), "--out", str(out), timeout=timeout)
        c.figures = json.loads(out.read_text())
        c.figures["model"] = str(model)

    def sandbox_check(self, c: Check, timeout: float) -> None:
        t0 = time.monotonic()
        scaling = []
        workers = [w for w in self.s.sandbox_workers if w <= (os.cpu_count() or 1)] or [1]
        for w in workers:
            out = self.work / f"sandbox-{w}.json"
            self.persd("bench", "sandbox", "--workers", str(w), "--repeat", "1", "--out", str(out),
                       timeout=(timeout * 0.6) / len(workers))
            rep = json.loads(out.read_text())
            scaling.append({"workers": w, **_sandbox_rate(rep)})
        c.figures["sandbox_scaling"] = scaling
        out = self.work / "engine.json"
        self.persd("bench", "engine", *self.s.engine_args, "--out", str(out),
                   timeout=timeout - (time.monotonic() - t0))
        c.figures["engine"] = json.loads(out.read_text())


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip() and '"loss"' in line]


def _sandbox_rate(report: dict) -> dict[str, Any]:
    """exec/s of the persd sandbox and of the naive baseline, per program set, from `persd bench sandbox`'s JSON."""
    out: dict[str, Any] = {}
    for row in report.get("rows", []):
        who = "persd" if row["method"].startswith("persd") else "naive"
        out[f"{who} {row['programs']} exec/s"] = row["exec_per_s"]
    return out


def synthetic_records(path: Path, n: int = 400) -> Path:
    """Records of varied lengths for a run with no PersDistill data at hand (the dry run)."""
    lines = []
    for i in range(n):
        body = "\n".join(f"    x{j} = x{j - 1} + {i}" if j else f"    x0 = {i}" for j in range(1 + i % 23))
        rec = {"id": f"synthetic/{i}/persd", "task_id": f"synthetic/{i}", "format": "persd",
               "prompt": f"def f_{i}(a):\n    \"\"\"Return a plus {i}.\"\"\"\n",
               "completion": body + f"\n    return a + {i}\n"}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def render(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="persd GPU acceptance")
    for col in ("check", "result", "s", "figures"):
        table.add_column(col)
    for c in checks:
        figs = {k: v for k, v in c.figures.items() if not isinstance(v, (list, dict))}
        text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in figs.items())
        table.add_row(c.name, "ok" if c.ok else f"FAILED: {c.error}", f"{c.seconds:.0f}", text[:400])
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m persd.bench.gpu.acceptance", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for acceptance.json and the work files")
    p.add_argument("--dry-run", action="store_true", help="the same checks on the CPU with a tiny model")
    p.add_argument("--data-dir", default=None, help="folder with the PersDistill records (inpd.jsonl, ...)")
    p.add_argument("--budget-s", type=float, default=None, help="overall time budget (default 480; dry run 900)")
    p.add_argument("--only", default=None, help="comma list of checks to run (env,train,zero3,student,sandbox)")
    args = p.parse_args(argv)
    settings = Settings.dry_run() if args.dry_run else Settings()
    if args.budget_s:
        settings.budget_s = args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = sorted(str(f) for f in Path(args.data_dir).glob("*.jsonl")) if args.data_dir else []
    if not data:
        data = [str(synthetic_records(out / "synthetic-records.jsonl"))]
    run = Run(out, settings, data, args.dry_run)
    plan = [("env", run.env_check, 1.0), ("train", run.train_check, 0.40), ("zero3", run.zero3_check, 0.50),
            ("student", run.student_check, 0.40), ("sandbox", run.sandbox_check, 1.0)]
    only = set(args.only.split(",")) if args.only else None
    for name, fn, share in plan:
        if only is None or name in only:
            run.check(name, fn, share)
    run.write()
    render(run.checks)
    print(f"wrote {out / 'acceptance.json'}")
    return 0 if all(c.ok for c in run.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
