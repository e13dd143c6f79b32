"""The local server's Batch API (issue 23, first part): files and batches as OpenAI serves them.

`POST /v1/files` (multipart: `purpose`, `file`), `GET /v1/files/{id}/content`, `POST /v1/batches`
(`input_file_id`, `endpoint`, `completion_window`), `GET /v1/batches` (newest first), `GET /v1/batches/{id}`,
`POST /v1/batches/{id}/cancel`. A batch is validated when created (every line a JSON object with a
unique `custom_id`, `method` POST, `url` equal to the batch's endpoint, a `body`; a bad line fails
the batch with the line named), then answered `BatchPlan.delay_s` later: each line through the
server's responder, written to an output file (`custom_id`, `response.status_code`, `response.body`)
or, for the lines the plan fails (the first time), to an error file. `expire_after` lines answered, the rest are left
and the batch is `expired`. Everything is counted (`lines_received`: custom_id -> times submitted),
so tests can check that a client never submitted a line twice.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from aiohttp import web


@dataclass
class BatchPlan:
    """What the Batch API does: `delay_s` before a batch completes; `fail_lines` custom_ids answered
    with an error line the first time they are submitted (a transient line error); `expire_after`
    lines answered before a batch expires (None: never)."""

    delay_s: float = 0.0
    fail_lines: frozenset[str] = frozenset()
    expire_after: int | None = None
    invalid_line: int | None = None  # every batch fails validation, naming this line
    max_enqueued: int | None = None  # lines in progress at once; beyond, a batch fails (token_limit_exceeded)
    enabled: bool = True


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    window: str
    created_at: int
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: dict | None = None
    counts: dict = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})

    def view(self) -> dict:
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "input_file_id": self.input_file_id,
                "completion_window": self.window, "status": self.status, "created_at": self.created_at,
                "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
                "errors": self.errors, "request_counts": dict(self.counts)}


class BatchAPI:
    """Mounted on a LocalOpenAIServer's app; `answer(body) -> dict` gives one chat completion body."""

    def __init__(self, answer, plan: BatchPlan | None = None):
        self.answer = answer
        self.plan = plan or BatchPlan()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}
        self.lines_received: Counter[str] = Counter()
        self._tasks: set[asyncio.Task] = set()

    def mount(self, app: web.Application) -> None:
        if not self.plan.enabled:
            return
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}/content", self._content)
        app.router.add_post("/v1/batches", self._create)
        app.router.add_get("/v1/batches", self._list)
        app.router.add_get("/v1/batches/{id}", self._get)
        app.router.add_post("/v1/batches/{id}/cancel", self._cancel)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _new_file(self, data: bytes) -> str:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = data
        return file_id

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch" or upload is None or isinstance(upload, str):
            return _error(400, "a file with purpose 'batch' is expected")
        data = upload.file.read()
        file_id = self._new_file(data)
        return _json({"id": file_id, "object": "file", "bytes": len(data), "purpose": "batch",
                      "filename": upload.filename, "created_at": int(time.time())})

    async def _content(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["id"])
        if data is None:
            return _error(404, "no such file")
        return web.Response(body=data, content_type="application/jsonl")

    async def _create(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        file_id = body.get("input_file_id")
        if file_id not in self.files:
            return _error(400, f"no file {file_id!r}")
        batch = _Batch(f"batch_{len(self.batches) + 1}", file_id, body.get("endpoint", ""),
                       body.get("completion_window", ""), int(time.time()))
        self.batches[batch.id] = batch
        lines, problem = _parse(self.files[file_id], batch.endpoint)
        enqueued = sum(b.counts["total"] for b in self.batches.values() if b.status == "in_progress")
        if problem is None and self.plan.max_enqueued is not None and enqueued + len(lines) > self.plan.max_enqueued:
            problem = {"code": "token_limit_exceeded", "param": None, "line": None,
                       "message": "Enqueued token limit reached for local in organization org-local."}
        if problem is None and self.plan.invalid_line is not None:
            problem = {"code": "invalid_request", "message": "injected validation failure", "param": "body",
                       "line": self.plan.invalid_line}
        if problem is not None:
            batch.status, batch.errors = "failed", {"object": "list", "data": [problem]}
            return _json(batch.view())
        for line in lines:  # accepted lines only: a failed batch answers none
            self.lines_received[line["custom_id"]] += 1
        batch.counts["total"] = len(lines)
        batch.status = "in_progress"
        task = asyncio.get_running_loop().create_task(self._run(batch, lines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _json(batch.view())

    async def _run(self, batch: _Batch, lines: list[dict]) -> None:
        await asyncio.sleep(self.plan.delay_s)
        if batch.status != "in_progress":
            return
        out, err = [], []
        for i, line in enumerate(lines):
            if self.plan.expire_after is not None and i >= self.plan.expire_after:
                break
            cid = line["custom_id"]
            if cid in self.plan.fail_lines and self.lines_received[cid] == 1:
                batch.counts["failed"] += 1
                err.append({"id": f"req_{cid}", "custom_id": cid, "response": {
                    "status_code": 500, "body": {"error": {"message": "injected line error", "type": "server_error"}}},
                    "error": None})
                continue
            answer = await self.answer(line["body"])
            batch.counts["completed"] += 1
            out.append({"id": f"req_{cid}", "custom_id": cid,
                        "response": {"status_code": 200, "request_id": f"req_{cid}", "body": answer}, "error": None})
        if out:
            batch.output_file_id = self._new_file(b"".join(orjson.dumps(o) + b"\n" for o in out))
        if err:
            batch.error_file_id = self._new_file(b"".join(orjson.dumps(e) + b"\n" for e in err))
        expired = self.plan.expire_after is not None and len(lines) > self.plan.expire_after
        batch.status = "expired" if expired else "completed"

    async def _list(self, request: web.Request) -> web.Response:
        newest = sorted(self.batches.values(), key=lambda b: int(b.id.split("_")[1]), reverse=True)
        limit = int(request.query.get("limit", 20))
        return _json({"object": "list", "data": [b.view() for b in newest[:limit]], "has_more": len(newest) > limit})

    async def _get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        return _error(404, "no such batch") if batch is None else _json(batch.view())

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return _error(404, "no such batch")
        if batch.status in ("validating", "in_progress"):
            batch.status = "cancelled"
        return _json(batch.view())


def _parse(data: bytes, endpoint: str) -> tuple[list[dict], dict | None]:
    """The batch's lines, or the first problem as OpenAI names it (code, message, line)."""
    lines, seen = [], set()
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            line = None
        problem = None
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            problem = "invalid_json_line", "this line is not a JSON object with a body"
        elif not line.get("custom_id") or line["custom_id"] in seen:
            problem = "duplicate_custom_id", "the custom_id is missing or used twice"
        elif line.get("method") != "POST" or line.get("url") != endpoint:
            problem = "invalid_url", f"the line's url must be the batch's endpoint {endpoint!r}"
        if problem is not None:
            return [], {"code": problem[0], "message": problem[1], "param": None, "line": number}
        seen.add(line["custom_id"])
        lines.append(line)
    return lines, None


def _json(data: dict) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        body=orjson.dumps({"error": {"message": message, "type": "invalid_request_error"}}))
