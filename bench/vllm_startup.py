"""`persd bench vllm-startup`: where the vllm student's start-up time goes, on this machine.

Each variant starts the vllm backend in a fresh Python process (so imports are paid as a real run
pays them), sends one request, closes it, and reads the phases from vLLM's own log (second-resolution
timestamps of its engine core and worker processes):

    import     persd's process imports vLLM (and torch)
    config     vLLM's engine config (model config, tokenizer) and persd's KV-cache sizing
    core       the engine core process is spawned and imports vLLM again
    worker     the worker process is spawned, imports vLLM again and loads the weights
    warmup     profiling / torch.compile warm-up and the KV cache
    ready      until the engine answers; first request; shutdown

Variants: `eager` (persd's CPU default: no torch.compile), `compile-cold` (vLLM's default, with an
empty VLLM_CACHE_ROOT: the first start of a model path) and `compile-warm` (the same again, on the
cache compile-cold left: every later start of that model path with the same settings).
Prints a table and writes JSON (default runs/bench/vllm-startup.json). Other programs on the
machine slow every phase: the load average is recorded next to the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson

VARIANTS = ("eager", "compile-cold", "compile-warm")
# "(EngineCore pid=1) INFO 12-02 03:44:05 [core.py:133] ..." -> the process, the time, the text
LINE = re.compile(r"^\((?P<proc>\w+)[^)]*\)\s+\w+\s+(?P<ts>\d\d-\d\d \d\d:\d\d:\d\d)\s+\[[^\]]*\]\s+(?P<text>.*)$")


def child(model: str, eager: bool, log: str) -> dict:
    """Runs in the fresh process: time each step of the backend's start from our side."""
    t0 = time.time()
    from persd.runtime.student import SamplingParams, StudentConfig, StudentRequest, create_student

    cfg = StudentConfig(backend="vllm", model=model, max_model_len=512, enforce_eager=eager, log_path=log)
    marks: dict[str, float] = {"t0": t0}

    async def go() -> None:
        student = create_student(cfg)  # imports vLLM
        marks["imported"] = time.time()
        await student.start()
        marks["started"] = time.time()
        await student.generate(StudentRequest(prompt="def add(a, b):\n", params=SamplingParams(max_tokens=8)))
        marks["answered"] = time.time()
        await student.close()
        marks["closed"] = time.time()

    asyncio.run(go())
    return marks


def phases(log_text: str, year: int) -> dict[str, float]:
    """First time each milestone appears in vLLM's log (seconds since the epoch, 1 s resolution)."""
    milestones = {
        "config_done": ("MainProcess", "persd sized the CPU KV cache"),
        "core_up": ("EngineCore", "Initializing a V1 LLM engine"),
        "worker_loading": ("Worker", "Starting to load model"),
        "weights_loaded": ("Worker", "Loading weights took"),
        "kv_ready": ("EngineCore", "init engine (profile, create kv cache, warmup model) took"),
    }
    found: dict[str, float] = {}
    for raw in log_text.splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        for key, (proc, text) in milestones.items():
            if key not in found and m.group("proc").startswith(proc) and text in m.group("text"):
                found[key] = datetime.strptime(f"{year}-{m.group('ts')}", "%Y-%m-%d %H:%M:%S").timestamp()
    return found


def run_variant(name: str, model: str, workdir: Path) -> dict:
    log = workdir / f"{name}.vllm.log"
    env = dict(os.environ)
    cache = workdir / "vllm-cache"  # private: compile-cold empties it, compile-warm reuses it
    if name == "compile-cold" and cache.exists():
        shutil.rmtree(cache)
    env["VLLM_CACHE_ROOT"] = str(cache)
    load_before = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", "persd.bench.vllm_startup", "--child", model,
                           "--eager" if name == "eager" else "--no-eager", "--log", str(log)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    marks = orjson.loads(proc.stdout.strip().splitlines()[-1])
    found = phases(log.read_text(errors="replace"), datetime.now().year)
    t0 = marks["t0"]
    seq = [("import", marks["imported"]), ("config", found.get("config_done", marks["imported"])),
           ("core", found.get("core_up")), ("worker", found.get("weights_loaded")), ("warmup", found.get("kv_ready")),
           ("ready", marks["started"])]
    row: dict = {"variant": name, "load_avg_1m": round(load_before, 2)}
    prev = t0
    for key, t in seq:
        if t is None:
            row[key] = None
            continue
        row[key] = round(max(0.0, t - prev), 1)
        prev = max(prev, t)
    row["start_total"] = round(marks["started"] - t0, 1)
    row["first_request"] = round(marks["answered"] - marks["started"], 2)
    row["shutdown"] = round(marks["closed"] - marks["answered"], 1)
    row["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    return row


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="persd bench vllm-startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model path (default: the tiny random-weight model, written to a temp dir)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--repeat", type=int, default=1, help="runs of each variant")
    p.add_argument("--out", default="runs/bench/vllm-startup.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--eager", action=argparse.BooleanOptionalAction, help=argparse.SUPPRESS)
    p.add_argument("--log", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(orjson.dumps(child(args.child, bool(args.eager), args.log)).decode())
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if "compile-warm" in variants and "compile-cold" not in variants:
        variants.insert(variants.index("compile-warm"), "compile-cold")  # it fills the cache
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        print(f"persd: error: --variants: unknown {', '.join(bad)} (choose from {', '.join(VARIANTS)})",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="persd-vllm-startup-") as tmp:
        work = Path(tmp)
        model = args.model
        if not model:
            from persd.runtime.student.tiny_model import write_tiny_model

            model = str(write_tiny_model(work / "tiny-model", seed=0))
        rows = [run_variant(v, model, work) for _ in range(args.repeat) for v in variants]
    cols = ["variant", "import", "config", "core", "worker", "warmup", "ready", "start_total", "first_request",
            "shutdown", "load_avg_1m", "load_avg_1m_after"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c)) for c in cols))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps({"bench": "vllm-startup", "cpus": os.cpu_count(), "rows": rows},
                                 option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
