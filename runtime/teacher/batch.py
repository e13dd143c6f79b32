"""BatchTeacher: the teacher's `chat(request)` through an OpenAI-compatible Batch API (issue 23, core).

The same coroutine as `TeacherClient.chat`, so the engine does not change: each call enqueues its
request (`custom_id` = the request's journal key, the body exactly as sync mode sends it) and waits.
A collector closes a file at `max_requests` lines or `flush_s` after its first line, uploads it
(purpose `batch`), creates the batch (24 h window) and polls it with back-off; answers are journaled
(the same journal as sync mode, so a rerun answers them from it) and handed to their callers. A line
that errored, or that a batch left unanswered when it expired or was cancelled, is enqueued again
(at most `max_line_tries` times); a batch that failed validation fails its callers with the
provider's message and the line it names.

State file (`state_path`, JSON lines, fsync'd): `{"file": id, "keys": [...]}` once a file is uploaded
(before its batch is created), `{"batch": id, "file": id}` once the batch is. On start, batches
without a `{"done": id}` line are polled again (re-attached), so a rerun after kill -9 sends
nothing already submitted; an uploaded file whose batch id was not recorded is
looked up in the provider's list of batches (by input file) before a batch is created for it.
A batch refused for too many enqueued tokens (`token_limit_exceeded`) is resubmitted after
`limit_wait_s` in files half as large. Costs are the price table's times `price_factor` (0.5);
with `max_cost_usd`, each request's worst case at batch prices is reserved when it is enqueued
(`BudgetExceeded` as in sync mode) and settled on its answer. Not yet done (see issue 23):
status/report views, batch and sync spend apart in the summary.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from persd.runtime.errors import ConfigError
from persd.runtime.teacher.budget import Budget, Reservation
from persd.runtime.teacher.config import TeacherConfig
from persd.runtime.teacher.errors import TeacherError
from persd.runtime.teacher.journal import Journal
from persd.runtime.teacher.metrics import TeacherMetrics
from persd.runtime.teacher.pricing import PriceTable
from persd.runtime.teacher.tokens import TokenEstimator
from persd.runtime.teacher.types import ChatRequest, ChatResponse

log = logging.getLogger(__name__)
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchTeacher:
    def __init__(self, config: TeacherConfig, state_path: Path, *, max_requests: int = 50_000,
                 flush_s: float = 5.0, poll_s: float = 0.05, max_poll_s: float = 30.0, max_line_tries: int = 3,
                 price_factor: float = 0.5, limit_wait_s: float = 60.0):
        config.validate()
        self.config, self.state_path = config, Path(state_path)
        self.max_requests, self.flush_s = min(max_requests, 50_000), flush_s
        self.poll_s, self.max_poll_s, self.max_line_tries = poll_s, max_poll_s, max_line_tries
        self.prices = PriceTable(config.prices)
        self.limit_wait_s = limit_wait_s
        self.price_factor = price_factor  # batch prices: half the table's by default (OpenAI's discount)
        self.journal = Journal(config.journal_path) if config.journal_path else None
        self.metrics = TeacherMetrics(config.rpm, config.tpm)
        self.metrics.mode = "batch"
        self.budget = Budget(config.max_cost_usd)  # each line's worst case at batch prices, reserved when enqueued
        self._reserved: dict[str, Reservation] = {}
        self._estimator = TokenEstimator()
        key = config.api_key()
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._base = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._bodies: dict[str, dict] = {}
        self._tries: dict[str, int] = {}
        self._queue: list[str] = []
        self._wake = asyncio.Event()
        self._flush_now = False
        self._cap = self.max_requests  # lowered when the provider says too much is enqueued
        self._tasks: set[asyncio.Task] = set()
        self._collector: asyncio.Task | None = None
        self._attached: dict[str, list[str]] = {}
        self.submitted: list[str] = []  # batch ids created by this process
        self._cancelling: set[str] = set()  # (persd never cancels a batch yet: any cancel came from outside)

    async def __aenter__(self) -> "BatchTeacher":
        if self.journal is not None:
            await asyncio.to_thread(self.journal.open)
        self._session = aiohttp.ClientSession(headers=self._headers)
        async with self._session.post(self._base + "/files") as resp:  # a Batch API answers 400, else 404
            if resp.status == 404:
                await self.__aexit__()
                raise ConfigError("base_url", section="teacher",
                                  message=f"the teacher at {self.config.base_url} has no Batch API "
                                          f"(404 on /files): batch mode needs one; use sync mode")
        orphans = self._load_state()
        for batch_id, keys in self._attached.items():
            self._spawn(self._follow(batch_id, keys))
        if orphans:
            self._attached.update({f"file:{f}": keys for f, keys in orphans.items()})  # held until resumed
            await self._resume(orphans)
            for f in orphans:
                self._attached.pop(f"file:{f}", None)
        self._collector = asyncio.get_running_loop().create_task(self._collect())
        return self

    async def __aexit__(self, *exc) -> None:
        for task in [self._collector, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._collector, *self._tasks] if t is not None), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self.journal is not None:
            await self.journal.close()

    # -- the call --------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        model = request.model or self.config.model
        key = request.key(model)
        if self.journal is not None and (record := self.journal.get(key)) is not None:
            self.metrics.cached_hits += 1
            return ChatResponse.from_record(key, record, cached=True)
        if key not in self._waiting:
            out = (request.max_tokens or 1024) * max(1, request.n)
            worst = self.price_factor * self.prices.cost(model, self._estimator.prompt_tokens(request.messages), out)
            if self.budget.limit is not None and not any(key in keys for keys in self._attached.values()):
                self._reserved[key] = self.budget.reserve(worst)  # BudgetExceeded: not enqueued, as in sync mode
            self._waiting[key] = asyncio.get_running_loop().create_future()
            self._bodies[key] = request.payload(model)
            if not any(key in keys for keys in self._attached.values()):
                self._enqueue(key)
        self.metrics.in_flight += 1  # waiting on a batch
        try:
            return await asyncio.shield(self._waiting[key])
        finally:
            self.metrics.in_flight -= 1

    def flush(self) -> None:
        """Close the current file now (the engine calls it when every unfinished task waits on the teacher);
        nothing queued, nothing to do (a request queued later waits for its file as usual)."""
        if self._queue:
            self._flush_now = True
            self._wake.set()

    def _enqueue(self, key: str) -> None:
        if key in self._queue:
            return
        self._queue.append(key)
        self._wake.set()

    # -- collecting and submitting ----------------------------------------------------------------

    async def _collect(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self._cap and not self._flush_now:
                try:
                    await asyncio.wait_for(self._full(), self.flush_s)
                except asyncio.TimeoutError:
                    pass
            self._flush_now = False
            while self._queue:
                keys, self._queue = self._queue[: self._cap], self._queue[self._cap:]
                await self._submit(keys)

    async def _full(self) -> None:
        while len(self._queue) < self._cap and not self._flush_now:
            self._wake.clear()
            await self._wake.wait()

    async def _submit(self, keys: list[str]) -> None:
        data = b"".join(orjson.dumps({"custom_id": k, "method": "POST", "url": ENDPOINT, "body": self._bodies[k]})
                        + b"\n" for k in keys)
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename="persd-batch.jsonl", content_type="application/jsonl")
        file_id = (await self._call("POST", "/files", data=form))["id"]
        await asyncio.to_thread(self._record, {"file": file_id, "keys": keys})  # before the batch exists
        self.metrics.batch_files += 1
        self.metrics.batch_submitted += len(keys)
        await self._create(file_id, keys)

    async def _create(self, file_id: str, keys: list[str]) -> None:
        batch = await self._call("POST", "/batches", json={"input_file_id": file_id, "endpoint": ENDPOINT,
                                                           "completion_window": "24h"})
        await asyncio.to_thread(self._record, {"batch": batch["id"], "file": file_id})
        self.submitted.append(batch["id"])
        self._attached[batch["id"]] = keys
        self._spawn(self._follow(batch["id"], keys))

    async def _resume(self, files: dict[str, list[str]]) -> None:
        """Files uploaded before a crash whose batch was not recorded: the provider's list of batches
        says whether it was created (re-attach) or not (create it now, from the same file)."""
        listed = (await self._call("GET", "/batches?limit=100")).get("data") or []
        made = {b.get("input_file_id"): b["id"] for b in listed}
        for file_id, keys in files.items():
            if file_id in made:
                await asyncio.to_thread(self._record, {"batch": made[file_id], "file": file_id})
                self._attached[made[file_id]] = keys
                self._spawn(self._follow(made[file_id], keys))
            else:
                await self._create(file_id, keys)

    async def _follow(self, batch_id: str, keys: list[str]) -> None:
        self.metrics.batches_open += 1
        try:
            await self._follow_until_ended(batch_id, keys)
        finally:
            self.metrics.batches_open -= 1

    async def _follow_until_ended(self, batch_id: str, keys: list[str]) -> None:
        delay = self.poll_s
        status = None
        while True:
            batch = await self._call("GET", f"/batches/{batch_id}")
            if batch["status"] != status:  # each change of status on disk (`persd status` shows the last)
                status = batch["status"]
                await asyncio.to_thread(self._record, {"status": batch_id, "s": status,
                                                       "counts": batch.get("request_counts") or {}})
            if batch["status"] in TERMINAL:
                break
            await asyncio.sleep(delay)
            delay = min(self.max_poll_s, delay * 1.5)
        said = (batch.get("errors") or {}).get("data") or [{}]
        if batch["status"] == "failed" and said[0].get("code") == "token_limit_exceeded":
            # too much enqueued for the model: wait, then resubmit in smaller files
            self._cap = max(1, min(self._cap, len(keys)) // 2)
            log.info("batch %s: %s; resubmitting in files of %d", batch_id, said[0].get("message"), self._cap)
            await asyncio.to_thread(self._record, {"done": batch_id})
            self._attached.pop(batch_id, None)
            await asyncio.sleep(self.limit_wait_s)
            for key in keys:
                self._enqueue(key)
            return
        if batch["status"] == "failed":
            error = TeacherError(f"the teacher's Batch API refused batch {batch_id}: {said[0].get('message')} "
                                 f"(line {said[0].get('line')}, {said[0].get('code')})")
            for key in keys:
                self._fail(key, error)
        else:
            if batch["status"] == "cancelled" and batch_id not in self._cancelling:
                log.warning("batch %s was cancelled outside persd: its unanswered requests are resubmitted", batch_id)
            seen = await self._read(batch.get("output_file_id"), ok=True)
            seen |= await self._read(batch.get("error_file_id"), ok=False)
            for key in keys:
                if key not in seen and key in self._waiting and not self._waiting[key].done():
                    self._retry(key, f"batch {batch_id} ended '{batch['status']}' without it")
        await asyncio.to_thread(self._record, {"done": batch_id})
        self._attached.pop(batch_id, None)

    async def _read(self, file_id: str | None, ok: bool) -> set[str]:
        """Answer (output file) or retry (error file) each line; returns the custom_ids read."""
        if not file_id:
            return set()
        raw = await self._call("GET", f"/files/{file_id}/content", raw=True)
        done: set[str] = set()
        for line in raw.splitlines():
            item = orjson.loads(line)
            key, response = item["custom_id"], item.get("response") or {}
            if ok and response.get("status_code") == 200:
                await self._answer(key, response["body"])
            elif key in self._waiting:
                self._retry(key, f"line error {response.get('status_code')}")
            done.add(key)
        return done

    async def _answer(self, key: str, body: dict) -> None:
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        usage = body.get("usage") or {}
        model = str(body.get("model") or self.config.model)
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        cost = self.prices.cost(model, prompt, completion) * self.price_factor if self.prices.lookup(model) else 0.0
        answer = ChatResponse(texts=[str(c["message"].get("content") or "") for c in choices],
                              finish_reasons=[str(c.get("finish_reason") or "unknown") for c in choices],
                              prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost, model=model, key=key)
        if self.journal is not None:
            await self.journal.append(key, answer.to_record())
        self.metrics.record_answer(prompt, completion, cost, answer.finish_reasons)
        if key in self._reserved:
            self.budget.settle(self._reserved.pop(key), cost)
        elif self.budget.limit is not None:
            self.budget.spent += cost  # a re-attached line: its reservation was made by the earlier run
        future = self._waiting.get(key)
        if future is not None and not future.done():
            future.set_result(answer)

    def _retry(self, key: str, why: str) -> None:
        self._tries[key] = self._tries.get(key, 0) + 1
        if self._tries[key] >= self.max_line_tries:
            self._fail(key, TeacherError(f"the teacher's Batch API did not answer a request after "
                                         f"{self._tries[key]} batches: {why}"))
        elif key in self._bodies:
            self._enqueue(key)

    def _fail(self, key: str, error: Exception) -> None:
        if key in self._reserved:
            self.budget.release(self._reserved.pop(key))
        future = self._waiting.get(key)
        if future is not None and not future.done():
            future.set_exception(error)
            future.add_done_callback(lambda f: f.exception())

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, method: str, path: str, raw: bool = False, **kw):
        assert self._session is not None
        async with self._session.request(method, self._base + path, **kw) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise TeacherError(f"the teacher's Batch API answered HTTP {resp.status} to {method} {path}: "
                                   f"{body[:500].decode('utf-8', 'replace')}", status=resp.status)
        return body if raw else orjson.loads(body)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _load_state(self) -> dict[str, list[str]]:
        """Batches to re-attach to (into `_attached`); returns uploaded files with no batch recorded."""
        files: dict[str, list[str]] = {}
        if not self.state_path.exists():
            return files
        done: set[str] = set()
        for line in self.state_path.read_bytes().splitlines():
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line: that batch was never recorded as created
            if "batch" in item:
                self._attached[item["batch"]] = files.pop(item["file"], [])
            elif "file" in item:
                files[item["file"]] = list(item["keys"])
            elif "done" in item:
                done.add(item["done"])
        for batch_id in done:
            self._attached.pop(batch_id, None)
        return files

    def _record(self, item: dict) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, orjson.dumps({**item, "t": round(time.time(), 3)}) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class BatchInfo:
    """One batch as a run's state file tells it (what `persd status` lists; no call to the provider)."""

    batch_id: str
    requests: int = 0
    status: str = "submitted"  # the last status seen: validating, in_progress, finalizing, completed, ...
    counts: dict = field(default_factory=dict)  # the provider's request_counts at that status
    created_at: float | None = None  # unix time
    ended: bool = False


def read_batches(state_path: Path) -> list[BatchInfo]:
    """Every batch recorded in a BatchTeacher state file, in the order they were created."""
    if not Path(state_path).exists():
        return []
    sizes: dict[str, int] = {}
    out: dict[str, BatchInfo] = {}
    for line in Path(state_path).read_bytes().splitlines():
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn last line
        if "keys" in item:
            sizes[item["file"]] = len(item["keys"])
        elif "batch" in item:
            out[item["batch"]] = BatchInfo(item["batch"], sizes.get(item["file"], 0), created_at=item.get("t"))
        elif "status" in item and item["status"] in out:
            info = out[item["status"]]
            info.status, info.counts = str(item.get("s") or info.status), dict(item.get("counts") or {})
        elif "done" in item and item["done"] in out:
            out[item["done"]].ended = True
    return list(out.values())
