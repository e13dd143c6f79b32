"""TeacherClient: one pooled aiohttp session, paced by RPM/TPM, bounded in flight and in dollars,
retrying transient faults, and journaling every paid answer before handing it back."""
from __future__ import annotations

import asyncio
import dataclasses
import logging

import aiohttp
import orjson
from persd.runtime.errors import ConfigError
from persd.runtime.http import AIMD, REPAIRED_KEY, AttemptOutcome, HTTPStatusError, RetriesExhausted, post_json
from persd.runtime.teacher.budget import Budget, Reservation
from persd.runtime.teacher.config import TeacherConfig
from persd.runtime.teacher.errors import BudgetExceeded, TeacherError, TeacherRequestFailed
from persd.runtime.teacher.journal import Journal
from persd.runtime.teacher.limiter import Permit, RateLimiter
from persd.runtime.teacher.metrics import TeacherMetrics
from persd.runtime.teacher.params import ParamAdapter
from persd.runtime.teacher.pricing import PriceTable
from persd.runtime.teacher.tokens import TokenEstimator, heuristic_tokens, load_encoder_async
from persd.runtime.teacher.types import ChatRequest, ChatResponse

DEFAULT_MAX_TOKENS = 1024  # worst case assumed for a request that sets no max_tokens
POSSIBLY_BILLED = ("timeout", "truncated", "malformed", "no_choices")
UNDECODABLE = ("malformed", "no_choices")  # after the retries: this request's answer, not the server
log = logging.getLogger("persd.teacher")


class TeacherClient:
    """Use as `async with TeacherClient(cfg) as teacher: await teacher.chat(req)`."""

    def __init__(self, config: TeacherConfig):
        config.validate()
        self.config = config
        self._api_key = config.api_key()  # ConfigError when missing for a remote URL
        self.prices = PriceTable(config.prices)
        self._check_price(config.model)
        self.limiter = RateLimiter(config.rpm, config.tpm, headroom=config.headroom,
                                   window_s=config.limit_window_s, jitter_s=config.jitter_s,
                                   cold_start_s=config.cold_start_s,
                                   aimd=AIMD(decrease=config.aimd_decrease, recover_per_s=config.aimd_recover_per_s))
        self.budget = Budget(config.max_cost_usd)
        self.metrics = TeacherMetrics(config.rpm, config.tpm)
        self.journal = Journal(config.journal_path) if config.journal_path else None
        self.estimator = TokenEstimator()
        self.params = ParamAdapter(config.model)  # parameters the model refuses, adapted once per run
        self.notices: list[str] = []  # what was adapted, in order (the engine logs and records them)
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._same: dict[str, asyncio.Future] = {}
        self._headers = {"User-Agent": "persd-teacher", **(config.extra_headers or {})}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> "TeacherClient":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        if self.journal is not None:
            await asyncio.to_thread(self.journal.open)
        self.estimator = TokenEstimator(await load_encoder_async(self.config.model))
        connector = aiohttp.TCPConnector(limit=self.config.max_in_flight, limit_per_host=0,
                                         keepalive_timeout=60)
        on_wire = aiohttp.TraceConfig()
        on_wire.on_request_chunk_sent.append(self._on_chunk_sent)
        self._session = aiohttp.ClientSession(connector=connector, trace_configs=[on_wire],
                                              json_serialize=lambda o: orjson.dumps(o).decode())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.journal is not None:
            await self.journal.close()

    async def _on_chunk_sent(self, session, context, params) -> None:
        """aiohttp calls this just before it writes a request's body (the headers go with its first
        chunk): the attempt's time on the wire, for the limiter's wire log."""
        attempt = context.trace_request_ctx
        if isinstance(attempt, _Attempt) and attempt.permit is not None:
            self.limiter.wired(attempt.permit)

    # -- the call ------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Answer from the journal if this exact request (and sample index) was paid for before;
        else send it, journal the answer (fsync'd), and return it.

        Raises TeacherRequestFailed where this request failed for its own content (context too long,
        refused content, an answer the content filter stopped, an answer that could not be read after
        the retries): its task fails, others may be fine. A filtered answer is journaled first, so a
        rerun gets the same verdict without paying again."""
        answer = await self._answer(request)
        if answer.filtered:
            raise TeacherRequestFailed("content_filter", "the provider's content filter stopped the answer "
                                       f"(finish_reason content_filter); partial text: {answer.text[:200]!r}")
        return answer

    async def _answer(self, request: ChatRequest) -> ChatResponse:
        if self._session is None:
            raise RuntimeError("TeacherClient is not started: use 'async with TeacherClient(cfg)'")
        model = request.model or self.config.model
        if request.seed is None and self.config.seed is not None:
            request = dataclasses.replace(request, seed=self.config.seed)
        key = request.key(model)
        if self.journal is not None and (record := self.journal.get(key)) is not None:
            self.metrics.cached_hits += 1
            return ChatResponse.from_record(key, record, cached=True)
        if key in self._same:  # the identical request is in flight: share its answer
            answer = await asyncio.shield(self._same[key])
            self.metrics.cached_hits += 1
            return dataclasses.replace(answer, cached=True, texts=list(answer.texts),
                                       finish_reasons=list(answer.finish_reasons))
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._same[key] = future
        try:
            answer = await self._call(request, model, key)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
            else:
                future.cancel()
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            del self._same[key]

    async def _call(self, request: ChatRequest, model: str, key: str) -> ChatResponse:
        self._check_price(model)
        payload = self.params.apply(request.payload(model))
        prompt_est = self.estimator.prompt_tokens(request.messages)
        out_est = (request.max_tokens or DEFAULT_MAX_TOKENS) * max(1, request.n)
        est_tokens = prompt_est + out_est
        worst_usd = self.prices.cost(model, prompt_est, out_est)
        reservation: Reservation | None = None
        attempt = _Attempt()  # the current attempt's permit, for the hooks below and the wire trace

        async def before_attempt() -> None:
            nonlocal reservation
            if reservation is None:
                try:
                    reservation = self.budget.reserve(worst_usd)
                except BudgetExceeded:
                    self.metrics.budget_refusals += 1
                    raise
            attempt.permit = await self.limiter.acquire(est_tokens)
            self.metrics.attempts += 1

        def after_attempt(outcome: AttemptOutcome) -> None:
            permit = attempt.permit
            if outcome.status == 429:  # ours: everyone pauses; not ours: this one waits, the pace dips
                self.metrics.http_429 += 1
                own = self.limiter.on_429(permit, outcome.headers, outcome.retry_after_s,
                                          self.config.default_cooldown_s)
                self.metrics.http_429_own += own
            else:
                self.limiter.observe(outcome.headers)
            if outcome.cause is None:
                return
            if not outcome.sent and permit is not None:
                self.limiter.refund(permit)  # it never reached the server: nothing can have counted it
                return
            if permit is not None:  # answered, whatever the status, or dropped after sending:
                self.limiter.settle(permit)  # providers count failed requests against the limit too
            if outcome.cause in POSSIBLY_BILLED or outcome.cause == "connection":
                self.budget.lost(reservation, worst_usd)
                self.metrics.cost_unconfirmed_usd += worst_usd

        def validate(body: dict) -> str | None:
            choices = body.get("choices")
            if not isinstance(choices, list) or len(choices) < max(1, request.n):
                return "no_choices"
            if not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
                return "no_choices"
            return None

        ok = False
        async with self._slots:
            self.metrics.in_flight += 1
            try:
                while True:
                    try:
                        body, _ = await post_json(
                            self._session, self.config.chat_url, payload, headers=self._headers,
                            policy=self.config.retry, on_retry=self.metrics.record_retry,
                            before_attempt=before_attempt, after_attempt=after_attempt, validate=validate,
                            trace_request_ctx=attempt, spread_retry_after=False)  # the limiter spaces retries
                        break
                    except HTTPStatusError as exc:
                        note = (self.params.learn(exc.param, exc.message, payload)
                                if exc.cause == "unsupported_parameter" else None)
                        if note is None:
                            raise
                        if note:
                            self._notice(note)
                        payload = self.params.apply(request.payload(model))
                ok = True
            except HTTPStatusError as exc:
                self.metrics.failures += 1
                if exc.cause is not None:
                    raise TeacherRequestFailed(
                        exc.cause, f"HTTP {exc.status} from the teacher (model '{model}'): "
                        f"{self._redact(exc.message)}", status=exc.status, body=self._redact(exc.body),
                        url=exc.url) from None
                raise self._explain(exc, model) from None
            except RetriesExhausted as exc:
                self.metrics.failures += 1
                if exc.cause in UNDECODABLE and exc.status is None:
                    raise TeacherRequestFailed(
                        "undecodable", f"the teacher's answer could not be read ({exc.cause}) after "
                        f"{exc.attempts} attempt(s): {self._redact(exc.body)[:200]!r}", url=exc.url) from None
                raise TeacherError(
                    f"the teacher kept failing at {exc.url} (model '{model}'): {exc.attempts} attempt(s) "
                    f"in {exc.elapsed_s:.1f}s; last: " + (f"HTTP {exc.status}: {self._redact(exc.body)}"
                                                         if exc.status is not None else exc.cause),
                    status=exc.status, body=self._redact(exc.body), url=exc.url) from None
            finally:
                self.metrics.in_flight -= 1
                if not ok and reservation is not None:
                    self.budget.release(reservation)
                if not ok and attempt.permit is not None:
                    self.limiter.settle(attempt.permit)  # cancelled or failed mid-attempt: the charge stands

        repaired = list(body.pop(REPAIRED_KEY, None) or [])
        choices = sorted(body["choices"], key=lambda c: c.get("index", 0))
        texts = [_content(c["message"].get("content")) for c in choices]
        reasons = [str(c.get("finish_reason") or "unknown") for c in choices]
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        prompt_tokens = int(usage.get("prompt_tokens") or prompt_est)
        completion_tokens = int(usage.get("completion_tokens") or sum(heuristic_tokens(t) for t in texts))
        cost = self.prices.cost(model, prompt_tokens, completion_tokens)
        permit = attempt.permit
        if permit is not None and self.config.reconcile_tokens:
            self.limiter.reconcile(permit, prompt_tokens + completion_tokens)
        elif permit is not None:
            self.limiter.settle(permit)
        self.budget.settle(reservation, cost)
        self.metrics.record_answer(prompt_tokens, completion_tokens, cost, reasons)
        answer = ChatResponse(texts=texts, finish_reasons=reasons, prompt_tokens=prompt_tokens,
                              completion_tokens=completion_tokens, cost_usd=cost, cached=False,
                              model=str(body.get("model") or model), key=key, repaired=repaired)
        if self.journal is not None:
            await self.journal.append(key, answer.to_record())
        return answer

    # -- errors --------------------------------------------------------------------------------

    def _notice(self, note: str) -> None:
        self.notices.append(note)
        log.warning("persd: %s", note)

    def _check_price(self, model: str) -> None:
        if self.config.max_cost_usd is not None and self.prices.lookup(model) is None:
            raise ConfigError("max_cost_usd", section="teacher",
                              message=f"a cost limit needs a price for model '{model}': add it to the "
                                      f"teacher prices (input and output dollars per 1M tokens)")

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[redacted]") if self._api_key and text else text

    def _explain(self, exc: HTTPStatusError, model: str) -> TeacherError:
        said = _server_message(self._redact(exc.body))
        url, status = exc.url, exc.status
        if status == 401:
            where = f"the key in ${self.config.api_key_env}" if self._api_key else "no key (none was set)"
            msg = f"the teacher refused {where} (HTTP 401 from {url}): {said}"
        elif status == 403:
            msg = f"the teacher denied access to model '{model}' (HTTP 403 from {url}): {said}"
        elif status == 404:
            msg = (f"HTTP 404 from {url}: the endpoint or model '{model}' does not exist "
                   f"(check the teacher's base_url and model): {said}")
        else:
            msg = f"the teacher rejected the request (HTTP {status} from {url}, model '{model}'): {said}"
        return TeacherError(msg, status=status, body=self._redact(exc.body), url=url)


@dataclasses.dataclass
class _Attempt:
    """The attempt on its way, as the trace callback sees it."""

    permit: Permit | None = None


def _content(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _server_message(body: str) -> str:
    """The `error.message` of an OpenAI-style error body, else the body itself (shortened)."""
    try:
        data = orjson.loads(body)
        message = data["error"]["message"] if isinstance(data.get("error"), dict) else data.get("error")
        if message:
            return str(message)[:500]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        pass
    return body.strip()[:500] or "(empty body)"

