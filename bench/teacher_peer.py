"""`persd bench teacher --peer curator`: persd's teacher client and bespokelabs-curator's OpenAI
client, one after the other, against the same local server and scenario, in one table.

Curator lives in its own virtualenv, created once and cached under `runs/peers/` (pip from PyPI),
and runs as a subprocess (`persd/bench/curator_peer.py`); it needs no network once installed:
tiktoken's cl100k_base comes from the copy litellm ships, litellm's cost map is the local one.
The local server runs in a process of its own for each client (`serve`), so neither client
shares an event loop with it and its clock reads arrivals as they come. Every figure is read from
the server's log, the same way for both clients: wall (first request to last answer; curator's
start-up probe excluded), share of the limit, self-provoked 429s (the server's real limit
refusals, not the injected ones), and the most requests in any window.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from persd.bench.served import ServedChild, stdin_lines
from persd.runtime.errors import PersdError
from persd.runtime.local_server import FaultPlan, LocalOpenAIServer
from persd.runtime.teacher import ChatRequest, TeacherClient, TeacherConfig

CURATOR = "bespokelabs-curator"
CURATOR_VERSION = "0.1.31"  # the version issue 17 measured
PEER_SCRIPT = Path(__file__).with_name("curator_peer.py")
MODEL = "gpt-4o-mini"
MAX_TOKENS = 150


@dataclass(frozen=True)
class Scenario:
    """One server set-up and workload; both clients are told `told_rpm` / `told_tpm`."""

    name: str
    what: str
    n: int = 600
    rpm: float = 1200
    tpm: float = 10_000_000      # far above what the RPM allows: only `tpm` makes tokens bind
    told: float = 1.0            # clients are told told * the limits (> 1: only the headers say the truth)
    window_s: float = 1.0
    latency_s: float = 0.1
    p_429: float = 0.05
    retry_after_s: float = 0.5
    p_5xx: float = 0.03
    prompt_words: int = 40       # ~1.3 tokens a word
    burst_at_s: float = 0.0
    burst_s: float = 0.0

    def plan(self, seed: int) -> FaultPlan:
        half = self.p_5xx / 2
        return FaultPlan(p_429=self.p_429, p_500=half, p_503=half, retry_after_s=self.retry_after_s, seed=seed,
                         burst_at_s=self.burst_at_s, burst_s=self.burst_s, burst_p_429=0.5, burst_retry_after_s=1.0)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("ra0.1", "5% 429 (Retry-After 0.1 s) + 3% 500/503", retry_after_s=0.1),
    Scenario("ra0.5", "5% 429 (Retry-After 0.5 s) + 3% 500/503", retry_after_s=0.5),
    Scenario("ra2", "5% 429 (Retry-After 2 s) + 3% 500/503", retry_after_s=2.0),
    Scenario("burst", "overload: 50% 429 (Retry-After 1 s) for 5 s, + 5% 429 (0.5 s), 3% 5xx",
             burst_at_s=8.0, burst_s=5.0),
    Scenario("tpm", "TPM-bound: ~1,100-token prompts, 900k TPM (~13 requests/s), + 5% 429 (0.5 s), 3% 5xx",
             n=400, tpm=900_000, prompt_words=750),
    Scenario("headers", "limits only in x-ratelimit-* headers: clients told 2x, + 5% 429 (0.5 s), 3% 5xx",
             told=2.0),
)}


def prompts_for(sc: Scenario, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    words = "def return for while list dict sorted value index result check assert range yield".split()
    return [f"task {i}: " + " ".join(rng.choice(words) for _ in range(sc.prompt_words + rng.randint(-5, 5)))
            for i in range(sc.n)]


def responder(body: dict) -> str:
    return "x = 1\n" * 60  # ~90 tokens


def server_for(sc: Scenario, seed: int) -> LocalOpenAIServer:
    return LocalOpenAIServer(responder, rpm=sc.rpm, tpm=sc.tpm, window_s=sc.window_s, limit_mode="bucket",
                             faults=sc.plan(seed), latency_s=sc.latency_s)


# -- the peer's virtualenv ----------------------------------------------------------------------

def curator_python(root: Path, version: str = CURATOR_VERSION) -> Path:
    """The cached virtualenv's python with curator installed (created on first use)."""
    venv = root / f"curator-{version}"
    python = venv / "bin" / "python"
    marker = venv / ".persd-ready"
    if marker.exists() and python.exists():
        return python
    print(f"creating {venv} with {CURATOR}=={version} (once; cached for later runs)", flush=True)
    base = Path(getattr(sys, "_base_executable", sys.executable))
    steps = [[str(base), "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", f"{CURATOR}=={version}"]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise PersdError(f"could not set up the curator peer ({' '.join(cmd[:4])} ...): "
                             f"{(done.stderr or done.stdout).strip()[-800:]}")
    marker.write_text(version + "\n")
    return python


def curator_env(python: Path, cache: Path) -> dict[str, str]:
    """Offline settings: tiktoken's cl100k_base from litellm's copy, litellm's local cost map, no telemetry."""
    venv = python.parent.parent
    tok = next(venv.glob("lib/python*/site-packages/litellm/litellm_core_utils/tokenizers"), None)
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", TELEMETRY_ENABLED="false", CURATOR_VIEWER="0",
               CURATOR_DISABLE_CACHE="1", CURATOR_CACHE_DIR=str(cache), HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", OPENAI_API_KEY="sk-local", PYTHONWARNINGS="ignore")
    if tok is not None:
        env["TIKTOKEN_CACHE_DIR"] = str(tok.resolve())
    return env


# -- the runs ----------------------------------------------------------------------------------

def served(sc: Scenario, seed: int) -> ServedChild:
    """The scenario's server in a child process (bench/served.py); `ask(client)` returns its figures."""
    return ServedChild("persd.bench.teacher_peer", "serve", sc.name, str(seed))


async def serve(name: str, seed: int) -> None:
    """Child side of `served`: print the URL, wait for the client's name, print the figures."""
    import aiohttp

    sc = SCENARIOS[name]
    async with server_for(sc, seed) as server:
        async with aiohttp.ClientSession() as warm:  # the server's first answer is slow (lazy code paths)
            async with warm.get(server.base_url + "/models") as resp:
                await resp.read()
        print(server.base_url, flush=True)
        async for client in stdin_lines():
            print(json.dumps(summarise(client, sc, server)), flush=True)
            break


async def run_persd(sc: Scenario, prompts: list[str], seed: int, max_in_flight: int, jitter_s: float,
                    headroom: float) -> dict:
    async with served(sc, seed) as server:
        # persd's defaults (retries included); the flags' defaults are TeacherConfig's
        cfg = TeacherConfig(base_url=server.url, model=MODEL, rpm=sc.rpm * sc.told, tpm=sc.tpm * sc.told,
                            max_in_flight=max_in_flight, limit_window_s=sc.window_s, jitter_s=jitter_s,
                            headroom=headroom)
        async with TeacherClient(cfg) as teacher:
            results = await asyncio.gather(*(teacher.chat(ChatRequest(messages=[{"role": "user", "content": p}],
                                                                      max_tokens=MAX_TOKENS)) for p in prompts),
                                           return_exceptions=True)
            snap = teacher.metrics.snapshot()
        row = await server.ask("persd")
    row["requests"] = sc.n
    row.update(failed_client=sum(isinstance(r, BaseException) for r in results),
               own_429=snap["http_429_own"], aimd_cuts=teacher.limiter.aimd.cuts,
               wire_log_holds=teacher.limiter.log_holds)
    return row


async def run_curator(sc: Scenario, prompts: list[str], seed: int, python: Path) -> dict:
    async with served(sc, seed) as server:
        with tempfile.TemporaryDirectory(prefix="persd-curator-") as tmp:
            job = {"base_url": server.url, "model": MODEL, "prompts": prompts, "rpm": sc.rpm * sc.told,
                   "tpm": sc.tpm * sc.told, "max_tokens": MAX_TOKENS, "cache_dir": tmp}
            job_file = Path(tmp) / "job.json"
            job_file.write_text(json.dumps(job))
            proc = await asyncio.create_subprocess_exec(
                str(python), str(PEER_SCRIPT), "@" + str(job_file), env=curator_env(python, Path(tmp)),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
        if proc.returncode != 0:
            raise PersdError(f"the curator peer failed (exit {proc.returncode}): {err.decode()[-1500:]}")
        row = await server.ask("curator")
    row["requests"] = sc.n
    told = json.loads(out.decode().strip().splitlines()[-1])
    row.update(failed_client=told["failed"], client_wall_s=round(told["wall_s"], 2))
    return row


def summarise(name: str, sc: Scenario, server: LocalOpenAIServer) -> dict:
    """Figures from the server's log, the same for every client."""
    work = [a for a in server.log if a.body.get("messages")]  # curator's empty start-up probe left out
    answered = [a for a in work if a.status == 200 and a.fault in ("ok", "slow")]
    start = work[0].t if work else 0.0
    wall = max((a.done for a in answered), default=start) - start
    tokens = sum(a.tokens for a in answered)
    rpm = len(answered) / wall * 60 if wall > 0 else 0.0
    tpm = tokens / wall * 60 if wall > 0 else 0.0
    most_req, most_tok = server.max_in_window()
    admitted = [a.t for a in server.log if a.admitted]
    over = [round(t - start, 3) for i, t in enumerate(admitted)
            if sum(1 for u in admitted[i:i + int(sc.rpm * sc.window_s / 60) + 1] if u - t < sc.window_s)
            > sc.rpm * sc.window_s / 60]
    # the shortest span that held one request more than a window allows: below window_s, the window went
    # over, by that much (how early the server saw the last of them)
    k = int(sc.rpm * sc.window_s / 60)
    spans = [admitted[i + k] - admitted[i] for i in range(len(admitted) - k)]
    return {
        "client": name, "scenario": sc.name, "requests": sc.n, "answered": len({_prompt_of(a.body) for a in answered}),
        "wall_s": round(wall, 2), "limit_fraction": round(max(rpm / sc.rpm, tpm / sc.tpm), 4),
        "rpm_fraction": round(rpm / sc.rpm, 4), "tpm_fraction": round(tpm / sc.tpm, 4),
        "attempts": len(work), "self_429": server.stats["rate_limited"],
        "injected_429": server.stats["429"] + server.stats["burst"],
        "max_requests_in_window": most_req, "over_limit_windows_at_s": over[:10],
        "tightest_span_s": round(min(spans), 4) if spans else None,
        "window_request_limit": sc.rpm * sc.window_s / 60,
        "max_tokens_in_window": most_tok, "window_token_limit": sc.tpm * sc.window_s / 60,
    }


def _prompt_of(body: dict) -> str:
    messages = body.get("messages") or []
    return str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict) else ""


def verdict(persd: dict, peer: dict) -> str:
    """Issue 22's target: wall at most the peer's, at most a third of its limit refusals (none where it
    has none), and never more than the limit in a window."""
    fast = persd["wall_s"] <= peer["wall_s"]
    polite = persd["self_429"] <= peer["self_429"] / 3
    within = persd["max_requests_in_window"] <= persd["window_request_limit"]
    missed = [what for ok, what in ((fast, "slower"), (polite, "too many 429s"), (within, "over in a window"))
              if not ok]
    return "met" if not missed else ", ".join(missed)


async def run_all(names: list[str], seed: int, max_in_flight: int, python: Path, n: int | None,
                  jitter_s: float, headroom: float) -> list[dict]:
    rows = []
    for name in names:
        sc = SCENARIOS[name] if n is None else replace(SCENARIOS[name], n=n)
        prompts = prompts_for(sc, seed)
        t0 = time.monotonic()
        mine = await run_persd(sc, prompts, seed, max_in_flight, jitter_s, headroom)
        peer = await run_curator(sc, prompts, seed, python)
        mine["target"] = peer["target"] = verdict(mine, peer)
        print(f"  {name}: persd {mine['wall_s']:.1f}s / curator {peer['wall_s']:.1f}s "
              f"({time.monotonic() - t0:.0f}s)", flush=True)
        rows += [mine, peer]
    return rows


def show(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="teacher client vs curator: same local server, same scenario, one after the other")
    for col in ("scenario", "client", "wall s", "% of limit", "self 429s", "max req/window (limit)",
                "answered", "target"):
        table.add_column(col, justify="left" if col in ("scenario", "client", "target") else "right")
    for r in rows:
        table.add_row(r["scenario"], r["client"], f"{r['wall_s']:.1f}", f"{100 * r['limit_fraction']:.0f}%",
                      str(r["self_429"]), f"{r['max_requests_in_window']} ({r['window_request_limit']:g})",
                      str(r["answered"]), r["target"])
    Console(width=150).print(table)
    for name in dict.fromkeys(r["scenario"] for r in rows):
        print(f"  {name}: {SCENARIOS[name].what}")


def parse_scenarios(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()] if text != "all" else list(SCENARIOS)
    bad = [s for s in names if s not in SCENARIOS]
    if bad or not names:
        raise ValueError(f"--scenarios: unknown {', '.join(bad) or '(none)'}; choose from all,{','.join(SCENARIOS)}")
    return names


def main(args) -> int:
    """Called by `persd.bench.teacher.main` when `--peer` is given (arguments already checked)."""
    import orjson
    from persd.engine.aio import run_async

    names = parse_scenarios(args.scenarios)
    python = curator_python(args.peer_dir)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs", flush=True)
    rows = run_async(run_all(names, args.seed, args.max_in_flight, python, args.n, args.jitter,
                             args.headroom))
    show(rows)
    report = {"bench": "teacher-peer", "peer": f"{CURATOR}=={CURATOR_VERSION}", "load_average": load,
              "persd_jitter_s": args.jitter, "persd_headroom": args.headroom,
              "scenarios": {n: SCENARIOS[n].__dict__ for n in names}, "results": rows}
    out = args.out if args.out != Path("runs/bench/teacher.json") else Path("runs/bench/teacher-peer.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # the server child: python -m persd.bench.teacher_peer serve NAME SEED
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        from persd.engine.aio import run_async as _run

        _run(serve(sys.argv[2], int(sys.argv[3])))
