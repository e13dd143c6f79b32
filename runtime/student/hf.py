"""`hf` backend: transformers on CPU or one GPU, with dynamic batching.

Concurrent `generate` calls land in a queue; a batcher waits a few milliseconds for
company, groups requests whose sampling parameters match, left-pads them into one
batch and runs one `model.generate` in a worker thread. While that runs, new requests
queue up and form the next batch. Stop strings end each row as soon as they appear.
For demos and tests; at scale use the vllm or openai backend.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from persd.runtime.errors import ConfigError, PersdError
from persd.runtime.student.base import (
    BaseStudent,
    RequestRejected,
    SamplingParams,
    StudentConfig,
    StudentError,
    StudentOutput,
    StudentRequest,
)

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


# Below this size a model gains nothing from intra-op threads on CPU, and OpenMP threads
# spinning on a busy machine make it tens of times slower: run it on one thread.
SMALL_MODEL_PARAMS = 100_000_000


@dataclass
class BatchStats:
    """Counters that show batching at work: fewer generate calls than requests."""

    requests: int = 0
    rows: int = 0
    generate_calls: int = 0
    largest_batch: int = 0  # requests in the biggest single generate call


@dataclass
class _Pending:
    request: StudentRequest
    future: asyncio.Future


def group_key(params: SamplingParams) -> tuple:
    """Requests with equal keys can share one `generate` call (n is handled by repeating rows)."""
    if params.greedy:
        return (0.0, 1.0, params.max_tokens, params.stop, None, None)
    return (params.temperature, params.top_p, params.max_tokens, params.stop, params.seed, params.top_k)


class HFStudent(BaseStudent):
    name = "hf"

    def __init__(self, config: StudentConfig):
        super().__init__(config)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._batcher: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._max_len = 0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        if not self.config.model:
            raise ConfigError("model", "the hf backend needs a model path or name", "student")
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="persd-hf")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._load)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop(), name="persd-hf-batcher")
        self._started = True

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cfg = self.config
        self._device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.dtype == "auto":
            dtype: Any = torch.float32 if self._device == "cpu" else "auto"
        elif cfg.dtype in DTYPES:
            dtype = getattr(torch, DTYPES[cfg.dtype])
        else:
            raise ConfigError("dtype", f"unknown dtype '{cfg.dtype}' (auto, float32, float16, bfloat16)", "student")
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # keep the engine's own progress display clean
        try:
            tok = AutoTokenizer.from_pretrained(cfg.model)
            model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype)
        except OSError as exc:
            raise ConfigError("model", f"cannot load '{cfg.model}': {exc}", "student") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._tokenizer = tok
        self._model = model.to(self._device).eval()
        self._max_len = cfg.max_model_len or int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        if self._device == "cpu":
            threads = cfg.cpu_threads
            if threads is None and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
                threads = 1
            if threads:
                torch.set_num_threads(threads)

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            try:
                await self._batcher
            except (asyncio.CancelledError, Exception):
                pass
            self._batcher = None
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(PersdError("the hf student was closed"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._model = None
        self._started = False

    # ------------------------------------------------------------ requests

    async def generate(self, request: StudentRequest) -> StudentOutput:
        self._require_started()
        assert self._queue is not None
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(request, future))
        return await future

    async def _batch_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        window = self.config.batch_window_ms / 1000.0
        while True:
            items = [await self._queue.get()]
            deadline = loop.time() + window
            while True:  # gather company: everything queued now, then stragglers until the deadline
                try:
                    items.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            groups: dict[tuple, list[_Pending]] = {}
            for item in items:
                if not item.future.done():
                    groups.setdefault(group_key(item.request.params), []).append(item)
            for group in groups.values():
                for chunk in self._chunks(group):
                    await self._run_chunk(loop, chunk)

    def _chunks(self, group: list[_Pending]) -> list[list[_Pending]]:
        """Split a group so no batch has more than max_batch_size rows (a request with a big n rides alone)."""
        chunks: list[list[_Pending]] = [[]]
        rows = 0
        for item in group:
            n = item.request.params.n
            if chunks[-1] and rows + n > self.config.max_batch_size:
                chunks.append([])
                rows = 0
            chunks[-1].append(item)
            rows += n
        return chunks

    async def _run_chunk(self, loop: asyncio.AbstractEventLoop, chunk: list[_Pending]) -> None:
        requests = [item.request for item in chunk]
        try:
            outputs = await loop.run_in_executor(self._executor, self._generate_batch, requests)
        except Exception as exc:  # one bad batch fails its own requests, not the batcher
            for item in chunk:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, PersdError)
                                              else StudentError(f"hf generate failed: {exc!r}"))
            return
        for item, out in zip(chunk, outputs):
            if item.future.done():
                continue
            if isinstance(out, Exception):
                item.future.set_exception(out)
            else:
                item.future.set_result(out)

    # ------------------------------------------------------------ the worker thread

    def _encode(self, request: StudentRequest) -> list[int]:
        tok = self._tokenizer
        if request.messages is not None:
            text = tok.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(request.prompt, add_special_tokens=True)["input_ids"]

    def _generate_batch(self, requests: list[StudentRequest]) -> list[StudentOutput | Exception]:
        """One `generate` for the requests that encode and fit; a request that does not gets its own error."""
        results: list[StudentOutput | Exception | None] = [None] * len(requests)
        good: list[int] = []
        encoded: list[list[int]] = []
        for i, request in enumerate(requests):
            try:
                ids = self._encode(request)
            except Exception as exc:  # e.g. chat messages for a tokenizer without a chat template
                results[i] = RequestRejected(f"cannot build the prompt: {exc}")
                continue
            if len(ids) + request.params.max_tokens > self._max_len:
                results[i] = RequestRejected(f"prompt of {len(ids)} tokens + max_tokens {request.params.max_tokens} "
                                          f"exceeds max_model_len {self._max_len}")
                continue
            good.append(i)
            encoded.append(ids)
        if good:
            for i, out in zip(good, self._generate_encoded([requests[i] for i in good], encoded)):
                results[i] = out
        return [r if r is not None else StudentError("no output") for r in results]

    def _generate_encoded(self, requests: list[StudentRequest], encoded: list[list[int]]) -> list[StudentOutput]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        tok, model = self._tokenizer, self._model
        params = requests[0].params
        rows = [ids for ids, r in zip(encoded, requests) for _ in range(r.params.n)]
        width = max(len(ids) for ids in rows)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in rows], device=self._device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=self._device)
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [tok.eos_token_id])
        # Sampling happens in RowSampler, one generator per row seeded from its own request, so a
        # request's texts do not depend on which requests share its batch; generate() then only
        # has to take the one token left finite (greedy).
        gen = GenerationConfig(
            max_new_tokens=params.max_tokens,
            do_sample=False,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=sorted(eos_ids),
        )
        stopper = StopOnStrings(tok, params.stop, width, len(rows))
        processors = None
        if not params.greedy:
            seeds = [row_seed(params.seed, ids, j) for ids, r in zip(encoded, requests) for j in range(r.params.n)]
            processors = LogitsProcessorList([RowSampler(seeds, params.temperature, params.top_p, params.top_k)])
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=gen,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stopper]) if params.stop else None,
            )
        self.stats.generate_calls += 1
        self.stats.requests += len(requests)
        self.stats.rows += len(rows)
        self.stats.largest_batch = max(self.stats.largest_batch, len(requests))
        new = out[:, width:].tolist()
        results: list[StudentOutput] = []
        row = 0
        for ids, req in zip(encoded, requests):
            texts, reasons, used = [], [], 0
            for _ in range(req.params.n):
                text, reason, count = finish_row(tok, new[row], stopper.stopped_at[row], eos_ids, params.stop)
                texts.append(text)
                reasons.append(reason)
                used += count
                row += 1
            results.append(StudentOutput(texts, reasons, prompt_tokens=len(ids), completion_tokens=used))
        return results


def finish_row(tok: Any, tokens: list[int], stopped_at: int | None, eos_ids: set[int],
               stop: tuple[str, ...]) -> tuple[str, str, int]:
    """(text, finish reason, generated token count) of one generated row."""
    count = len(tokens) if stopped_at is None else stopped_at
    hit_eos = False
    for i, t in enumerate(tokens[:count]):
        if t in eos_ids:
            count, hit_eos = i, True
            break
    text = tok.decode(tokens[:count], skip_special_tokens=True)
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "stop", count
    return text, ("stop" if hit_eos else "length"), count + hit_eos


def row_seed(seed: int | None, prompt_ids: list[int], sample: int) -> int:
    """A row's sampling seed: the request's seed, its prompt and the sample's index. Without a
    seed, fresh randomness."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    digest = hashlib.blake2b(repr((seed, sample, prompt_ids)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class RowSampler:
    """A logits processor that samples every row with its own torch.Generator (temperature,
    top_k then nucleus top_p, in generate's order) and leaves only the chosen token finite."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, top_k: int | None = None):
        import torch

        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float().cpu() / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            kth = scores.topk(self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(dim=-1) - sorted_probs > self.top_p  # keeps at least the top token
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, chosen.to(scores.device), 0.0)


class StopOnStrings:
    """A stopping criterion: a row is done once any stop string appears in its new text.

    Only the last few tokens are decoded each step (enough to cover the longest stop string),
    so a step costs the same at token 500 as at token 5. Records the step each row stopped at.
    """

    def __init__(self, tokenizer: Any, stops: tuple[str, ...], prompt_len: int, rows: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        self.tail = max((len(s.encode()) for s in stops), default=0) + 2
        self.stopped_at: list[int | None] = [None] * rows

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        generated = input_ids.shape[1] - self.prompt_len
        done = []
        for i, row in enumerate(input_ids[:, -min(self.tail, generated):].tolist() if generated else []):
            if self.stopped_at[i] is None:
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                if any(s in text for s in self.stops):
                    self.stopped_at[i] = generated
            done.append(self.stopped_at[i] is not None)
        return torch.tensor(done or [False] * input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
