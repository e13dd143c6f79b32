"""The Ray tests' one cluster start-up: run inside a loopback-only network namespace by tests/test_cluster.py.

    unshare -n sh -c 'ip link set lo up && exec python tests/cluster_scenario.py WORK TINY_MODEL'

Starts a local cluster (a head without CPUs, two worker nodes of one CPU each), a local teacher (the
offline stand-in's answers, every request recorded) and a scripted student server whose answers can be
held (a gate), then runs persd against them and writes WORK/scenario.json; the test reads the run
directories and that file. Nothing here waits on the clock: each step waits for a condition the
servers or the run directory report.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import orjson
from aiohttp import web
from persd.engine.collect.standin import StandinResponder
from persd.runtime.cluster.local import LocalCluster
from persd.runtime.local_server import LocalOpenAIServer

TASKS = "humaneval"
HF_TASKS = 6
SCRIPTED_TASKS = 16
PER_REPLICA = 2  # --ray-replica-in-flight of the scripted runs
WAIT_S = 300  # the longest any condition is waited for (a loaded machine), then the scenario fails


class GatedStudent:
    """OpenAI-compatible completions with a wrong answer for every task (so every task goes to the teacher);
    once `close_after(k)` has let k requests through, the rest are held until `open()`. `held` counts the
    requests held right now (a held request whose client died is no longer counted)."""

    def __init__(self) -> None:
        self.allow: int | None = None
        self.answered = 0
        self.held = 0
        self._open = asyncio.Event()
        self._open.set()
        self._changed = asyncio.Condition()
        self.url = ""

    def close_after(self, k: int) -> None:
        self.allow = self.answered + k
        self._open.clear()

    async def open(self) -> None:
        self.allow = None
        self._open.set()

    async def wait_held(self, n: int) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.held == n), WAIT_S)

    async def _bump(self, d: int) -> None:
        async with self._changed:
            self.held += d
            self._changed.notify_all()

    async def completions(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if self.allow is not None and self.answered >= self.allow:
            await self._bump(1)
            try:
                await self._open.wait()
            finally:
                await self._bump(-1)
        self.answered += 1
        n = int(body.get("n", 1))
        return web.json_response({
            "id": "x", "object": "text_completion", "model": body.get("model"),
            "choices": [{"index": i, "text": "    return None\n", "finish_reason": "stop"} for i in range(n)],
            "usage": {"prompt_tokens": 10, "completion_tokens": 3 * n}})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"


class CountingTeacher:
    """The offline stand-in's answers; every request's messages hashed, per phase."""

    def __init__(self) -> None:
        self.standin = StandinResponder(TASKS, SCRIPTED_TASKS)
        self.requests: list[str] = []

    def __call__(self, body: dict) -> str:
        self.requests.append(hashlib.sha256(orjson.dumps(body.get("messages"))).hexdigest())
        return self.standin(body)


async def persd(*args: str) -> tuple[int, str]:
    """A persd command's exit code and output; one still running after WAIT_S is killed (exit -9: a hang)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "persd", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), WAIT_S)
    except asyncio.TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    return proc.returncode, out.decode(errors="replace")


def done_in_journal(out: Path) -> int:
    journal = out / "work" / "shard-00000.journal.jsonl"
    if not journal.exists():
        return 0
    return sum(1 for line in journal.read_bytes().splitlines() if line.startswith(b'{"e":"d"'))


async def until(check, what: str) -> None:
    """Poll a condition of the run directory (the run writes it; nothing to subscribe to)."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"scenario: waited {WAIT_S}s for {what}")
        await asyncio.sleep(0.05)


async def main(work: Path, tiny: str) -> dict:
    report: dict = {}
    teacher_answers = CountingTeacher()
    student = GatedStudent()
    await student.start()
    async with LocalOpenAIServer(teacher_answers) as teacher:
        cluster = LocalCluster([{"num_cpus": 1}, {"num_cpus": 1}]).start()
        try:
            addr = cluster.address
            common = ["--tasks", TASKS, "--progress", "none", "--teacher.base-url", teacher.base_url,
                      "--teacher.model", "stand-in", "--sandbox.workers", "1"]
            hf = [*common, "--limit", str(HF_TASKS), "--student.backend", "hf", "--student.model", tiny,
                  "--temperature", "0", "--max-tokens", "24"]

            # 1. tiny hf replicas on the two worker nodes give the single-process run's records
            report["hf_local"] = await persd("collect", *hf, "--out", str(work / "hf-local"))
            report["hf_ray"] = await persd("collect", *hf, "--out", str(work / "hf-ray"), "--ray", addr)

            # 2. eval: the same pass@k with and without Ray
            ev = ["--tasks", TASKS, "--limit", "4", "--student.model", tiny, "--student.backend", "hf", "--n", "2",
                  "--temperature", "0", "--max-tokens", "24", "--progress", "none", "--sandbox.workers", "1"]
            report["eval_local"] = await persd("eval", *ev, "--out", str(work / "eval-local"))
            report["eval_ray"] = await persd("eval", *ev, "--out", str(work / "eval-ray"), "--ray", addr)

            # 3. a cluster without the resources asked for: exit 2 before anything starts
            report["no_gpu"] = await persd("collect", *hf, "--out", str(work / "no-gpu"), "--ray", addr,
                                           "--ray-student-gpus", "1")

            scripted = [*common, "--limit", str(SCRIPTED_TASKS), "--student.backend", "openai", "--student.url",
                        student.url, "--student.model", "scripted", "--ray-replica-in-flight", str(PER_REPLICA),
                        "--student.max-concurrency", str(4 * PER_REPLICA)]
            mark = len(teacher_answers.requests)
            report["scripted_local"] = await persd("collect", *scripted, "--out", str(work / "scripted-local"))
            report["teacher_local"] = teacher_answers.requests[mark:]

            # 4. a worker node dies with requests in flight on it; a new node joins and takes the restarted replica
            mark = len(teacher_answers.requests)
            student.close_after(2)
            run = asyncio.create_task(persd("collect", *scripted, "--out", str(work / "node-lost"), "--ray", addr))
            await student.wait_held(2 * PER_REPLICA)  # both replicas full, their requests held
            cluster.remove_worker(1)
            await student.wait_held(PER_REPLICA)  # the lost node's requests died with it
            cluster.add_worker({"num_cpus": 1})
            await student.wait_held(2 * PER_REPLICA)  # the replica restarted on the new node took work
            await student.open()
            report["node_lost"] = await run
            report["teacher_node_lost"] = teacher_answers.requests[mark:]

            # 5. kill -9 of the driver mid-run, then the same command again
            out = work / "killed"
            args = ["collect", *scripted, "--out", str(out), "--ray", addr]
            student.close_after(6)
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "persd", *args,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)
            await until(lambda: done_in_journal(out) >= 2, "two tasks journaled before the kill")
            await student.wait_held(PER_REPLICA * 2)
            report["done_before_kill"] = done_in_journal(out)
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            await student.open()
            report["killed_rerun"] = await persd(*args)

            # 6. every worker node lost with requests in flight: the run stops once no replica has been up for
            # --ray-wait (exit 1, saying how to resume); with a node back, the same command finishes the work
            out = work / "all-lost"
            args = ["collect", *scripted, "--out", str(out), "--ray", addr, "--ray-wait", "3"]
            mark = len(teacher_answers.requests)
            student.close_after(4)
            run = asyncio.create_task(persd(*args))
            await student.wait_held(2 * PER_REPLICA)
            for i in cluster.live_workers():
                cluster.remove_worker(i)
            report["all_lost"] = await run
            report["done_when_all_lost"] = done_in_journal(out)
            cluster.add_worker({"num_cpus": 1})
            await asyncio.to_thread(cluster.wait_for_nodes, WAIT_S)  # Ray has declared the lost nodes dead
            await student.open()
            report["all_lost_rerun"] = await persd(*args)
            report["teacher_all_lost"] = teacher_answers.requests[mark:]
        finally:
            cluster.shutdown()
    return report


if __name__ == "__main__":
    work_dir, tiny_model = Path(sys.argv[1]), sys.argv[2]
    result = asyncio.run(main(work_dir, tiny_model))
    (work_dir / "scenario.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
