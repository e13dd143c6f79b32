"""`persd report` on real runs: `persd collect` and `persd eval` as subprocesses against a scripted student
(the `openai` backend on a local server) and a scripted teacher on 127.0.0.1, `persd train` on the tiny model;
the student's and the teacher's code carries hostile HTML (`<script>`, `</script>`, `<img onerror>`), which the
page must show as text. Loop, partial-collect and many-eval layouts are assembled from these real outputs."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from helpers import doubling_task, read_jsonl, write_jsonl
from persd.runtime.local_server import FakeOpenAIServer, LocalOpenAIServer

REPO = Path(__file__).resolve().parents[1]
N_TASKS = 9
EVIL_ID = 't/7 <script>alert("id")</script>'
HOSTILE = ("</script><script>document.body.dataset.pwned='script'</script>"
           "<img src=x onerror=\"document.body.dataset.pwned='img'\">")


def task_id(i: int) -> str:
    return EVIL_ID if i == 7 else f"t/{i}"


def _num(text: str) -> int:
    m = re.search(r"def f_(\d+)\(", text)
    assert m, text[:300]
    return int(m.group(1))


def student_reply(payload: dict, index: int) -> str:
    """Right for i % 3 == 0; else a wrong body with hostile HTML in a comment. A refine prompt (eval's
    refine-inference: it shows the failed attempt) is answered right, so eval's tasks flip after refinement."""
    text = payload.get("prompt") or payload["messages"][-1]["content"]
    i = _num(text)
    if i % 3 == 0 or "return x + 2" in text:
        return "    return x * 2\n"
    return f"    return x + 2  # {HOSTILE}\n"


def teacher_reply(body: dict) -> str:
    """Right (with a hostile comment), except i % 4 == 1: wrong on every turn (unresolved)."""
    i = _num(body["messages"][1]["content"])
    expr = "x - 1" if i % 4 == 1 else "x * 2"
    return f"```python\ndef f_{i}(x):\n    # teacher {HOSTILE}\n    return {expr}\n```\n"


def run_persd(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persd", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


async def run_async(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "persd", *args, cwd=REPO, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
async def runs(tmp_path_factory, tiny_model_dir):
    """Real collect, eval and train directories (module-wide: built once)."""
    tmp = tmp_path_factory.mktemp("report-runs")
    tasks = write_jsonl(tmp / "tasks.jsonl", (doubling_task(i, task_id=task_id(i)) for i in range(N_TASKS)))
    student = FakeOpenAIServer(reply=student_reply, model="scripted-student")
    teacher = LocalOpenAIServer(teacher_reply, api_key="sk-test")
    await student.start()
    await teacher.start()
    env = dict(os.environ, OPENAI_API_KEY="sk-test")
    try:
        collect = tmp / "collect"
        rc, so, se = await run_async(
            "collect", "--tasks", str(tasks), "--out", str(collect), "--student-backend", "openai",
            "--student-url", student.url, "--student-model", "scripted-student", "--teacher-url", teacher.base_url,
            "--teacher-model", "scripted-teacher", "--refine-turns", "2", "--shard-size", "4",
            "--sandbox-workers", "1", "--exec-timeout", "5", "--progress", "plain", env=env)
        assert rc == 0, se
        evaldir = tmp / "eval"
        rc_e, so_e, se_e = await run_async(
            "eval", "--tasks", str(tasks), "--out", str(evaldir), "--student-backend", "openai",
            "--student-url", student.url, "--student-model", "scripted-student", "--n", "2", "--temperature", "0.8",
            "--refine-steps", "1", "--sandbox-workers", "1", "--exec-timeout", "5", "--progress", "none", env=env)
        assert rc_e == 0, se_e
    finally:
        await student.close()
        await teacher.stop()
    train = tmp / "train"
    tr = run_persd("train", "--data", str(collect), "--model", str(tiny_model_dir), "--out", str(train),
                   "--max-steps", "2", "--seq-len", "128")
    assert tr.returncode == 0, tr.stderr[-3000:]
    return {"tmp": tmp, "collect": collect, "eval": evaldir, "train": train, "collect_stdout": so,
            "eval_stdout": so_e, "train_stderr": tr.stderr}


def report(*args: str) -> subprocess.CompletedProcess:
    return run_persd("report", *args, timeout=300)


# ------------------------------------------------------------------ the runs' own hints and files


def test_each_command_prints_the_report_command(runs):
    assert f"report: persd report {runs['collect']}" in runs["collect_stdout"]
    assert f"report: persd report {runs['eval']}" in runs["eval_stdout"]
    assert f"report: persd report {runs['train']}" in runs["train_stderr"]


def test_collect_keeps_what_the_report_shows(runs):
    """Unresolved tasks keep the student's attempt and the teacher's last program (no record holds them; a
    refined task's attempt is in its records' meta); and a timeline."""
    res = [r for f in sorted((runs["collect"] / "shards").glob("*.results.jsonl")) for r in read_jsonl(f)]
    by_outcome = {r["outcome"] for r in res}
    assert by_outcome == {"student_passed", "refined", "unresolved"}
    for r in res:
        if r["outcome"] == "unresolved":
            assert "return x + 2" in r["attempt"]
            assert "return x - 1" in r["refinement"] and r["refine_turns"] == 2
        else:
            assert "attempt" not in r and "refinement" not in r
    timeline = read_jsonl(runs["collect"] / "timeline.jsonl")
    assert len(timeline) >= 2 and timeline[-1]["tasks_done"] == N_TASKS
    assert timeline[-1]["teacher"]["requests"] >= 1


# ------------------------------------------------------------------ collect


def test_collect_report(runs, tmp_path):
    out = tmp_path / "r" / "collect.html"
    p = report(str(runs["collect"]), "--out", str(out))
    assert p.returncode == 0, p.stderr
    html = out.read_text()
    figs = sorted((tmp_path / "r" / "collect-figures").glob("*.png"))
    assert {f.name for f in figs} >= {"collect-1-funnel.png", "collect-1-turns.png", "collect-1-errors.png",
                                      "collect-1-time.png"}
    for f in figs:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f.read_bytes() in _inline_pngs(html)  # the same figure, inline
    assert 'id="collect-1"' in html and 'id="collect-1-examples"' in html
    # nothing fetched: no external source, stylesheet or font; every image inline
    assert not re.search(r'(src|href)="(https?:)?//|<link\b|@import|url\(', html)
    assert set(re.findall(r'<img [^>]*src="([a-z]+):', html)) == {"data"}
    # every task is in the browser (a sample of 30 per outcome covers them all here), with its outcome
    items = re.findall(r'<details class="ex" data-outcome="(\w+)" data-task="([^"]*)">', html)
    assert len(items) == N_TASKS
    assert {o for o, _ in items} == {"student_passed", "refined", "unresolved"}
    # a refined task: its attempt, its feedback, and the teacher's fix as a diff against the attempt
    block = _example(html, "t/2")
    assert "student's attempt" in block and "AssertionError" in block
    assert '<span class="del">-    return x + 2' in block and '<span class="add">+    return x * 2' in block
    # an unresolved task: the teacher's failing program, and why it failed
    block = _example(html, "t/5")
    assert '<span class="add">+    return x - 1' in block and "why the teacher" in block


def test_report_escapes_model_output(runs, tmp_path):
    out = tmp_path / "r.html"
    assert report(str(runs["collect"]), str(runs["eval"]), "--out", str(out)).returncode == 0
    html = out.read_text()
    assert HOSTILE.count("<script>") == 1
    # no tag from a completion or a task id survives as markup: only this page's own (nonced) script
    assert len(re.findall(r"<script\b", html, re.I)) == 1
    assert re.search(r'<script nonce="[^"]+">', html)
    assert "<img src=x" not in html and "onerror=\"document" not in html
    assert "&lt;/script&gt;&lt;script&gt;document.body.dataset.pwned=&#x27;script&#x27;&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;document.body.dataset.pwned=&#x27;img&#x27;&quot;&gt;" in html
    assert 'data-task="t/7 &lt;script&gt;alert(&quot;id&quot;)&lt;/script&gt;"' in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_collect_in_progress_reads_sealed_and_journaled_work(runs, tmp_path):
    """A directory still being written: one shard sealed, the next only journaled, no manifest yet."""
    from persd.engine.collect.shards import ShardPlan, ShardStore
    from persd.engine.report.collect import read_collect

    src = runs["collect"]
    d = tmp_path / "partial"
    (d / "shards").mkdir(parents=True)
    for f in ("shard-00000.jsonl", "shard-00000.results.jsonl"):
        shutil.copy(src / "shards" / f, d / "shards" / f)
    store = ShardStore(d, ShardPlan(N_TASKS, 4))
    store.prepare()
    results = read_jsonl(src / "shards" / "shard-00001.results.jsonl")
    records = read_jsonl(src / "shards" / "shard-00001.jsonl")
    for r in results[:3]:
        store.journal_done(1, r["index"], r, [x for x in records if x["task_id"] == r["task_id"]])
    store.close()
    s = read_collect(d)
    assert (s.sealed_tasks, s.journaled_tasks, s.tasks_done) == (4, 3, 7)
    assert sum(s.records.values()) == len(read_jsonl(src / "shards" / "shard-00000.jsonl")) + sum(
        1 for x in records if x["task_id"] in {r["task_id"] for r in results[:3]})
    refined = [e for e in s.examples if e.outcome == "refined"]
    assert refined and all(e.solution and "return x * 2" in e.solution for e in refined)
    p = report(str(d), "--out", str(tmp_path / "partial.html"))
    assert p.returncode == 0, p.stderr
    assert "read from the journals of unsealed shards" in (tmp_path / "partial.html").read_text()


# ------------------------------------------------------------------ eval, train, loop, comparison


def test_eval_report(runs, tmp_path):
    from persd.engine.report.evalrun import read_eval

    s = read_eval(runs["eval"])
    summary = orjson.loads((runs["eval"] / "summary.json").read_bytes())
    assert s.steps == [0, 1]
    assert s.pass1(0) == pytest.approx(summary["steps"][0]["pass@1"])
    assert s.pass1(1) == pytest.approx(summary["steps"][1]["pass@1"])
    solved_direct = {task_id(i) for i in range(N_TASKS) if i % 3 == 0}
    assert s.solved[0] == solved_direct
    assert set(s.flips_up) == {task_id(i) for i in range(N_TASKS)} - solved_direct and not s.flips_down
    out = tmp_path / "eval.html"
    assert report(str(runs["eval"]), "--out", str(out)).returncode == 0
    html = out.read_text()
    assert "6 solved only after refinement" in html and "pass@2" in html
    assert (tmp_path / "eval-figures" / "eval-1-passk.png").is_file()


def test_train_report_real_and_held_out(runs, tmp_path):
    from persd.engine.report.train import read_train

    s = read_train(runs["train"])
    assert [r["step"] for r in s.steps] == [1, 2] and s.finished and s.settings["max_steps"] == 2
    # held-out losses (logged as their own lines) are read apart from the training steps
    d = tmp_path / "train"
    shutil.copytree(runs["train"], d, ignore=shutil.ignore_patterns("final", "checkpoints"))
    with open(d / "metrics.jsonl", "ab") as fh:
        fh.write(orjson.dumps({"step": 2, "eval_loss": 7.5}) + b"\n")
    s2 = read_train(d)
    assert s2.eval_losses == [(2, 7.5)] and len(s2.steps) == 2 and not s2.finished
    out = tmp_path / "train.html"
    assert report(str(d), "--out", str(out)).returncode == 0
    html = out.read_text()
    assert 'id="train-1"' in html and "no final/ checkpoint yet" in html
    assert (tmp_path / "train-figures" / "train-1-curves.png").is_file()


def test_loop_report(runs, tmp_path):
    """A loop directory (its layout, from these real stage outputs): the per-round table and figure, and
    each round's own sections."""
    d = tmp_path / "loop"
    for stage in ("collect", "train", "eval"):
        shutil.copytree(runs[stage], d / "round-1" / stage, ignore=shutil.ignore_patterns("checkpoints", "final"))
    shutil.copytree(runs["eval"], d / "round-0" / "eval")
    (d / "loop.json").write_bytes(orjson.dumps({"fingerprint": {"rounds": 1}, "rounds": {}}))
    from persd.engine.report.loop import read_loop

    s = read_loop(d)
    r1 = s.rounds[1]
    assert [r.round for r in s.rounds] == [0, 1]
    assert (r1.tasks, r1.student_passed, r1.refined, r1.unresolved) == (N_TASKS, 3, 4, 2)
    assert r1.pass1 is not None and r1.pass1_refined is not None and r1.pass1_refined > r1.pass1
    out = tmp_path / "loop.html"
    p = report(str(d), "--out", str(out))
    assert p.returncode == 0, p.stderr
    html = out.read_text()
    for anchor in ("loop-1", "collect-1", "collect-1-examples", "train-1", "eval-1", "eval-2"):
        assert f'id="{anchor}"' in html
    assert (tmp_path / "loop-figures" / "loop-1-rounds.png").is_file()


def test_comparison_of_eval_directories(runs, tmp_path):
    dirs = []
    for model, tasks in (("m-a", "humaneval"), ("m-a", "mbpp"), ("m-b", "humaneval")):
        d = tmp_path / f"{model}-{tasks}"
        shutil.copytree(runs["eval"], d)
        summary = orjson.loads((d / "summary.json").read_bytes())
        summary["protocol"].update(student_model=model, tasks=tasks)
        (d / "summary.json").write_bytes(orjson.dumps(summary))
        dirs.append(str(d))
    out = tmp_path / "cmp.html"
    assert report(*dirs, "--out", str(out)).returncode == 0
    html = out.read_text()
    table = html[html.index('id="comparison"'):]
    assert "HumanEval pass@1" in table and "MBPP after refine" in table
    assert table.index("m-a") < table.index("m-b")
    assert re.search(r"<td>m-b</td>(<td>[^<]*</td>){2}<td>-</td><td>-</td>", table)  # m-b has no MBPP run


def test_eval_still_running_is_read_from_its_journal(runs, tmp_path):
    from persd.engine.report.evalrun import read_eval

    d = tmp_path / "eval"
    shutil.copytree(runs["eval"], d)
    (d / "summary.json").unlink()
    (d / "results.jsonl").unlink()
    s, done = read_eval(d), read_eval(runs["eval"])
    assert not s.finished and s.steps == [0, 1] and s.pass_at == done.pass_at and s.flips_up == done.flips_up
    assert any("journal" in n for n in s.notes)


def test_example_sample_is_uniform_and_seeded():
    from collections import Counter

    from persd.engine.report.examples import Reservoir

    def sample(seed: int, n: int = 50, k: int = 5) -> list[int]:
        r = Reservoir(k, seed)
        for i in range(n):
            r.offer(i)
        return r.items

    assert sample(1) == sample(1) and sorted(sample(1, n=3)) == [0, 1, 2] and sample(1, k=0) == []
    counts = Counter(i for seed in range(4000) for i in sample(seed))
    assert sorted(counts) == list(range(50))  # every item can be drawn, each about k/n of the time
    assert all(0.7 * 400 < c < 1.3 * 400 for c in counts.values()), counts


def test_timeline_of_a_resumed_run_stays_cumulative(tmp_path):
    from persd.engine.report.collect import _timeline

    p = write_jsonl(tmp_path / "timeline.jsonl", [
        {"t": 1, "tasks_done": 0, "tasks_done_this_run": 0, "teacher": {"requests": 0, "cost_usd": 0.0}},
        {"t": 2, "tasks_done": 4, "tasks_done_this_run": 4, "teacher": {"requests": 3, "cost_usd": 0.5}},
        {"t": 9, "tasks_done": 4, "tasks_done_this_run": 0, "teacher": {"requests": 0, "cost_usd": 0.0}},  # resumed
        {"t": 10, "tasks_done": 6, "tasks_done_this_run": 2, "teacher": {"requests": 2, "cost_usd": 0.25}}])
    rows = _timeline([p])
    assert [r["teacher"]["requests"] for r in rows] == [0, 3, 3, 5]
    assert [r["teacher"]["cost_usd"] for r in rows] == [0.0, 0.5, 0.5, 0.75]


def test_partition_timelines_are_summed(tmp_path):
    from persd.engine.report.collect import _timeline

    a, b = tmp_path / "timeline.part-0000-of-0002.jsonl", tmp_path / "timeline.part-0001-of-0002.jsonl"
    write_jsonl(a, [{"t": 10, "tasks_done": 1, "teacher": {"requests": 1}},
                    {"t": 30, "tasks_done": 5, "teacher": {"requests": 4}}])
    write_jsonl(b, [{"t": 20, "tasks_done": 2, "teacher": {"requests": 2, "http_429": 1}}])
    rows = _timeline([a, b])
    assert [(r["t"], r["tasks_done"], r["teacher"].get("requests"), r["teacher"].get("http_429", 0)) for r in rows] == \
        [(10, 1, 1, 0), (20, 3, 3, 1), (30, 7, 6, 1)]


# ------------------------------------------------------------------ input, size


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    p = report(str(tmp_path / "nope"))
    assert p.returncode == 2 and "no such directory" in p.stderr and "Traceback" not in p.stderr
    (tmp_path / "empty").mkdir()
    p = report(str(tmp_path / "empty"))
    assert p.returncode == 2 and "not a persd collect, train, eval or loop directory" in p.stderr
    p = report(str(tmp_path / "empty"), "--out", str(tmp_path / "x.txt"))
    assert p.returncode == 2 and "--out" in p.stderr


def test_big_collect_samples_examples_and_stays_light(tmp_path):
    """20k tasks: every task counted, the browser holds a seeded sample, the page stays small."""
    from persd.bench.report_synth import write_collect
    from persd.engine.report.build import ReportConfig, build_report

    d = write_collect(tmp_path / "big", 20_000, shard_size=1000)
    rep = build_report(ReportConfig([d], tmp_path / "big.html", examples_per_outcome=25))
    html = rep.html.read_text()
    assert len(re.findall(r'<details class="ex"', html)) == 4 * 25
    assert "20,000 of 20,000" in html
    assert len(html) < 3_000_000
    again = build_report(ReportConfig([d], tmp_path / "again.html", examples_per_outcome=25))
    ids = lambda text: re.findall(r'data-task="([^"]*)"', text)  # noqa: E731
    assert ids(again.html.read_text()) == ids(html)  # seeded: the same sample


def _example(html: str, tid: str) -> str:
    start = html.index(f'data-task="{tid}"')
    return html[start: html.index("</details>", start)]


def _inline_pngs(html: str) -> list[bytes]:
    import base64

    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


# ------------------------------------------------------------------ a real browser


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol (aiohttp websockets): navigate, evaluate,
    screenshot, and every console error, uncaught exception and log error (CSP violations included)."""

    def __init__(self, exe: str, profile: Path):
        self.exe, self.profile = exe, profile
        self.errors: list[str] = []
        self._id = 0
        self._events: asyncio.Queue = asyncio.Queue()
        self._pending: dict[int, asyncio.Future] = {}

    async def __aenter__(self) -> "Browser":
        self.proc = await asyncio.create_subprocess_exec(
            self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "--window-size=1280,1800", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            return await self._connect()
        except BaseException:
            self.proc.kill()
            await self.proc.wait()
            raise

    async def _connect(self) -> "Browser":
        import aiohttp

        ws_url = None
        while ws_url is None:  # the browser says where it listens on its stderr
            line = await asyncio.wait_for(self.proc.stderr.readline(), 60)
            assert line, "chromium exited before listening"
            m = re.search(rb"DevTools listening on (ws://\S+)", line)
            ws_url = m and m.group(1).decode()
        self._drain = asyncio.create_task(self._drain_stderr())
        port = re.search(r":(\d+)/", ws_url).group(1)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            page = next(t for t in await resp.json() if t["type"] == "page" and t["url"] == "about:blank")
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self.call(f"{domain}.enable")
        return self

    async def __aexit__(self, *exc) -> None:
        self._reader.cancel()
        await self.ws.close()
        await self.http.close()
        self.proc.kill()
        await self.proc.wait()
        self._drain.cancel()

    async def _drain_stderr(self) -> None:
        while await self.proc.stderr.readline():
            pass

    async def _read(self) -> None:
        async for msg in self.ws:
            data = orjson.loads(msg.data)
            if "id" in data:
                self._pending.pop(data["id"]).set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.exceptionThrown":
                self.errors.append(f"exception: {params['exceptionDetails']}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                self.errors.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                self.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            await self._events.put((method, params))

    async def call(self, method: str, **params) -> dict:
        self._id += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._id] = fut
        await self.ws.send_str(orjson.dumps({"id": self._id, "method": method, "params": params}).decode())
        data = await asyncio.wait_for(fut, 120)
        assert "error" not in data, data
        return data["result"]

    async def open(self, url: str) -> None:
        while not self._events.empty():
            self._events.get_nowait()
        await self.call("Page.navigate", url=url)
        while (await asyncio.wait_for(self._events.get(), 120))[0] != "Page.loadEventFired":
            pass

    async def js(self, expr: str):
        out = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        assert "exceptionDetails" not in out, out
        return out["result"].get("value")

    async def screenshot(self, path: Path, full: bool = False) -> Path:
        import base64

        params = {"format": "png", "captureBeyondViewport": full}
        if full:
            h = await self.js("document.documentElement.scrollHeight")
            params["clip"] = {"x": 0, "y": 0, "width": 1280, "height": min(int(h), 12000), "scale": 1}
        path.write_bytes(base64.b64decode((await self.call("Page.captureScreenshot", **params))["data"]))
        return path


def not_blank(png: Path) -> None:
    from PIL import Image, ImageStat

    im = Image.open(png).convert("RGB")
    assert im.size[0] >= 800 and im.size[1] >= 600
    small = im.resize((im.size[0] // 4, im.size[1] // 4))
    colours = small.getcolors(1 << 20) or []
    assert len(colours) > 50, f"{png}: only {len(colours)} colours"
    assert max(ImageStat.Stat(im).stddev) > 20, f"{png}: nearly uniform"
    # the figures are drawn: their blues and reds are on screen
    assert any(b > 150 and r < 60 for _, (r, g, b) in colours) and any(r > 150 and g < 60 for _, (r, g, b) in colours)


async def test_report_in_a_real_browser(runs, tmp_path):
    exe = find_browser()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run installs it)")
    out = tmp_path / "report.html"
    p = report(str(runs["collect"]), str(runs["eval"]), str(runs["train"]), "--out", str(out))
    assert p.returncode == 0, p.stderr
    async with Browser(exe, tmp_path / "profile") as b:
        await b.open(out.as_uri())
        ids = await b.js("[...document.querySelectorAll('section')].map(s => s.id)")
        assert ids == ["collect-1", "collect-1-examples", "eval-1", "train-1"]
        assert await b.js("document.querySelectorAll('main img').length") == 7
        assert await b.js("[...document.images].every(i => i.complete && i.naturalWidth > 100)")
        # no script from a completion ran (it would have marked the body), and its text is on the page
        assert await b.js("document.body.dataset.pwned === undefined")
        assert await b.js("document.body.textContent.includes(\"<img src=x onerror=\")")
        # the example browser: its script ran, the filter and the search work
        count = "document.querySelector('#collect-1-browser .count').textContent"
        assert await b.js(count) == f"{N_TASKS} of {N_TASKS} shown"
        shot = await b.screenshot(tmp_path / "top.png")
        await b.js("(() => { const s = document.querySelector('#collect-1-browser select');"
                   " s.value = 'unresolved'; s.dispatchEvent(new Event('change')); })()")
        visible = "[...document.querySelectorAll('#collect-1-browser details.ex')].filter(d => !d.hidden)" \
                  ".map(d => d.dataset.task)"
        assert sorted(await b.js(visible)) == ["t/1", "t/5"]
        await b.js("(() => { const s = document.querySelector('#collect-1-browser select'); s.value = '';"
                   " s.dispatchEvent(new Event('change'));"
                   " const q = document.querySelector('#collect-1-browser input');"
                   " q.value = 'SCRIPT>'; q.dispatchEvent(new Event('input')); })()")
        assert await b.js(visible) == [EVIL_ID]
        await b.js("document.querySelectorAll('details.ex').forEach(d => d.open = true)")
        assert await b.js("document.body.dataset.pwned === undefined")
        full = await b.screenshot(tmp_path / "full.png", full=True)
        assert b.errors == []
    not_blank(shot)
    not_blank(full)
    keep = os.environ.get("PERSD_REPORT_SHOTS")  # to look at them: PERSD_REPORT_SHOTS=DIR pytest ...
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for f in (shot, full, out):
            shutil.copy(f, Path(keep) / f.name)
