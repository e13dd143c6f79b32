"""The training loop. One optimizer step = one window of world_size x grad_accum micro-batches.

    for step in steps:
        micro-batches = this rank's share of the step's window (same plan on every rank)
        N = target tokens in the whole window, summed over ranks      (one all-reduce)
        for each micro-batch:
            loss_sum = cross-entropy summed over its target tokens
            backward(loss_sum * world / N)     # DeepSpeed averages over ranks; no 1/grad_accum
            engine.step()                      # DeepSpeed steps at the window's end: clip, AdamW, lr
    so the gradient is that of the mean loss over every target token of the window, however
    the tokens fall into micro-batches and ranks (not a mean of per-micro-batch means).
"""
from __future__ import annotations

import hashlib
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from persd.engine.rundirs.train import TrainLayout
from persd.runtime.errors import UsageError
from persd.trainers import checkpoint
from persd.trainers.config import TrainConfig, load_ds_config, offload, resolve_ds_config, zero_stage
from persd.trainers.data import load_records, split_by_task
from persd.trainers.encode import Example, encode_records
from persd.trainers.launch import World, init_world
from persd.trainers.metrics import RunLog, flops_per_token, guess_peak_tflops, require_tensorboard
from persd.trainers.model import DTYPES, build_optimizer, check_model_dir, load_model, lr_lambda
from persd.trainers.packing import collate, padding_waste, plan_epoch
from persd.trainers.reference import clean_prompts


@dataclass
class Schedule:
    """Where every optimizer step's micro-batches come from: deterministic from (data, seed, epoch).

    `steps`: the epochs are one stream cut into exactly this many optimizer steps of (nearly) equal
    size, a step may span an epoch's end (what the reference's Trainer did with an epoch's remainder);
    --reference-batch uses it to take the reference's step count. per_step is then the largest step.
    `take`: only the stream's first `take` micro-batches are used (the reference's Trainer stopped
    mid-epoch at its max_steps)."""
    plans: list[list[list[list[int]]]]  # per epoch: micro-batches of rows of example indices
    per_step: int  # micro-batches per optimizer step (world x grad_accum)
    steps: int | None = None
    take: int | None = None
    steps_per_epoch: list[int] = field(init=False)

    def __post_init__(self):
        self.steps_per_epoch = [math.ceil(len(p) / self.per_step) for p in self.plans]
        if self.steps is not None:
            self._flat = [(e, mb) for e, p in enumerate(self.plans) for mb in p][: self.take]
            if math.ceil(len(self._flat) / self.steps) > self.per_step:
                raise ValueError("a step holds more micro-batches than world x grad_accum")

    @property
    def total(self) -> int:
        return self.steps if self.steps is not None else sum(self.steps_per_epoch)

    def window(self, step: int, rank: int, world: int, grad_accum: int) -> tuple[int, list[list[list[int]]]]:
        """(epoch, this rank's micro-batches of the step); [] stands for a filler at an epoch's end."""
        if self.steps is not None:
            n = len(self._flat)
            lo, hi = step * n // self.steps, (step + 1) * n // self.steps
            idx = [lo + g * world + rank for g in range(grad_accum)]
            return self._flat[min(lo, n - 1)][0], [self._flat[i][1] if i < hi else [] for i in idx]
        epoch = 0
        while step >= self.steps_per_epoch[epoch]:
            step -= self.steps_per_epoch[epoch]
            epoch += 1
        plan = self.plans[epoch]
        base = step * self.per_step
        out = []
        for g in range(grad_accum):
            i = base + g * world + rank
            out.append(plan[i] if i < len(plan) else [])
        return epoch, out


def resolve_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def forward_logits(model, batch) -> torch.Tensor:
    """The training forward. Packed rows: position ids restart per example and there is no attention
    mask and no cache, so transformers builds the block-diagonal causal mask from the position ids
    (or runs varlen flash attention): no token attends across examples."""
    return model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                 use_cache=False).logits


def token_loss_sum(engine, batch) -> torch.Tensor:
    logits = forward_logits(engine, batch)
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch.targets.reshape(-1),
                           ignore_index=-100, reduction="sum")


def check_packing(engine, examples: list[Example], pad_id: int) -> None:
    """Refuse to pack for a model that lets packed examples see each other.

    The second of two packed examples must give the logits it gives alone; the gap to the
    logits it gets when it does attend to the first one sets the scale of "different".
    Every rank runs the same three small forwards (ZeRO-3 needs them on all ranks).
    """
    from persd.runtime.errors import PersdError

    if len(examples) < 2:
        return
    a, b = (torch.as_tensor(e.ids[:32], dtype=torch.long) for e in examples[:2])
    ids = torch.cat([a, b])[None].to(engine.device)
    restart = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None].to(engine.device)
    engine.eval()
    with torch.no_grad():
        run = lambda x, pos: engine(input_ids=x, position_ids=pos, use_cache=False).logits.float()  # noqa: E731
        packed = run(ids, restart)[0, len(a):]
        alone = run(ids[:, len(a):], restart[:, len(a):])[0]
        attending = run(ids, torch.arange(ids.shape[1], device=ids.device)[None])[0, len(a):]
    engine.train()
    leak, scale = (packed - alone).abs().max().item(), (attending - alone).abs().max().item()
    if scale > 0 and leak > 0.1 * scale:
        raise PersdError(f"--batching pack: this model attends across packed examples (logit gap {leak:.3g} where "
                         f"separate examples differ by {scale:.3g}); use --batching group, or an attention "
                         f"implementation that honours restarting position ids (--attn-implementation)")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM: the last finished step was checkpointed (when there was one)."""

    def __init__(self, step: int, ckpt_dir: Path | None):
        super().__init__(step)
        self.step, self.ckpt_dir = step, ckpt_dir


class StopSignal:
    """SIGINT and SIGTERM (a launcher's or a scheduler's preemption notice) ask the loop to stop at
    the next step boundary; a second signal interrupts at once. Installed even where the shell
    started us with SIGINT ignored (a background job)."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


def _all_sum(values: list[float], device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def fingerprint(examples: list[Example], ids: list[str]) -> str:
    h = hashlib.sha256()
    for rid, ex in zip(ids, examples):
        h.update(rid.encode())
        h.update(ex.ids.tobytes())
    return h.hexdigest()[:16]


def evaluate(engine, examples: list[Example], cfg: TrainConfig, world: World, pad_id: int) -> float:
    """Mean target-token loss on the held-out split (every rank runs the same number of forwards)."""
    lengths = [len(e) for e in examples]
    plan = plan_epoch(lengths, seq_len=cfg.seq_len, micro_batch=cfg.micro_batch, batching=cfg.batching,
                      seed=cfg.seed, epoch=-1)
    rounds = math.ceil(len(plan) / world.size)
    total = count = 0.0
    engine.eval()
    with torch.no_grad():
        for r in range(rounds):
            i = r * world.size + world.rank
            rows = plan[i] if i < len(plan) else []
            batch = collate(rows, examples, seq_len=cfg.seq_len, batching=cfg.batching, pad_id=pad_id)
            total += token_loss_sum(engine, batch.to(engine.device)).item()
            count += batch.n_target
    engine.train()
    total, count = _all_sum([total, count], engine.device)
    return total / max(count, 1.0)


def match_reference_steps(cfg: TrainConfig, plans, examples: int, world: int) -> tuple[int, int]:
    """--reference-batch: as many optimizer steps as the reference's padded run took on the same number of
    examples, over the same share of the data (trainers/reference.py: its Trainer stopped at max_steps,
    usually mid-epoch), however many examples a packed sequence holds. That share of the epochs' stream
    (Schedule.take) is cut into that many steps of nearly equal size (Schedule.steps); a rank with nothing
    left in a step's last accumulation slot runs a filler. Returns (steps, micro-batches taken)."""
    from persd.trainers.reference import trainer_run

    run = trainer_run(examples, cfg.epochs, *cfg.reference_batch)
    stream = sum(len(p) for p in plans)
    take = max(1, min(stream, round(stream * run.share_of_stream)))
    wanted = max(1, min(run.steps, take))
    largest = math.ceil(take / wanted)  # micro-batches in the largest step
    cfg.grad_accum, cfg.global_batch = max(1, math.ceil(largest / world)), None
    cfg.max_steps = min(cfg.max_steps, wanted) if cfg.max_steps else wanted
    return wanted, take


@dataclass
class TrainState:
    """Everything one rank holds for a run, built once by `setup` and advanced by `train_step`."""

    cfg: TrainConfig
    world: World
    engine: Any  # the DeepSpeed engine (wraps the model, the optimizer and the lr schedule)
    model: Any
    tokenizer: Any
    scheduler: Any
    examples: list[Example]
    held: list[Example]
    sched: Schedule
    total_steps: int
    grad_accum: int
    stage: int
    precision: str
    pad_id: int
    identity: dict[str, Any]
    ckpt_dir: Path
    log: RunLog
    start: int  # the first step this process runs (> 0 when resumed)
    waste: float  # padding share of the first epoch's plan
    n_params: int
    flops_per_token: float
    peak_tflops: float | None
    reference: dict[str, Any] | None = None  # --reference-batch: the reference's steps and the data they saw

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]


@dataclass
class TrainResult:
    """What a finished run reports (`train.json` is this, less the live state, plus the export check)."""

    steps: int
    steps_per_epoch: int
    resumed_at: int
    history: list[dict[str, Any]]
    padding: float
    examples: int
    zero_stage: int
    precision: str
    world_size: int
    params: int
    eval_loss: float | None = None
    reference: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "history"}
        for optional in ("eval_loss", "reference"):
            if out[optional] is None:
                out.pop(optional)
        return out


def setup(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> TrainState:
    """Data, world, memory check, model, optimizer, DeepSpeed engine, and the checkpoint to resume from."""
    import deepspeed
    from transformers import AutoTokenizer

    cfg.validate()
    out = Path(cfg.out)
    lay = TrainLayout(out)
    ckpt_dir = lay.checkpoints
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model_dir = check_model_dir(cfg.model)
    ds_file = load_ds_config(cfg.deepspeed)
    if cfg.tensorboard:
        require_tensorboard()
    if resume and checkpoint.latest_tag(ckpt_dir) is None:
        raise UsageError(f"--resume: no checkpoint in {ckpt_dir}")
    # data: every rank reads and tokenises the same records, so every rank computes the same plans
    records, dstats = load_records(cfg.data, cfg.formats)
    train_recs, held_recs = split_by_task(records, cfg.eval_fraction, cfg.seed)
    train_recs = clean_prompts(train_recs, cfg.prompt_cleanup, str(model_dir))  # the paper's decode round trip
    held_recs = clean_prompts(held_recs, cfg.prompt_cleanup, str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    examples, estats = encode_records(train_recs, tokenizer, cfg.seq_len)
    held, _ = encode_records(held_recs, tokenizer, cfg.seq_len) if held_recs else ([], None)

    # the world, and whether the model can fit, before any weight is loaded
    world = init_world()
    precision = resolve_precision(cfg.precision, world.device)
    lengths = [len(e) for e in examples]
    plans = [plan_epoch(lengths, seq_len=cfg.seq_len, micro_batch=cfg.micro_batch, batching=cfg.batching,
                        seed=cfg.seed, epoch=e) for e in range(cfg.epochs)]
    stream_steps, take = match_reference_steps(cfg, plans, len(examples), world.size) if cfg.reference_batch \
        else (None, None)
    ds = resolve_ds_config(cfg, ds_file, world_size=world.size, precision=precision)
    grad_accum = ds["gradient_accumulation_steps"]
    stage = zero_stage(ds)
    opt_off, par_off = offload(ds)
    if cfg.plan_check:
        _check_plan(cfg, stage, opt_off, par_off, world)

    sched = Schedule(plans, world.size * grad_accum, steps=stream_steps, take=take)
    total_steps = min(sched.total, cfg.max_steps or sched.total)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * total_steps)
    waste = padding_waste(plans[0], lengths, seq_len=cfg.seq_len, batching=cfg.batching)

    if world.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out, enabled=world.rank == 0 and not quiet, total_steps=total_steps, tensorboard=cfg.tensorboard,
                 append=resume)
    log.info(f"data: {dstats.summary()}; {len(held_recs)} held out ({cfg.eval_fraction:.0%} of tasks)")
    log.info(f"tokens: {estats.summary()}")
    log.info(f"batches: {cfg.batching}, {len(plans[0])} micro-batches of {cfg.micro_batch} x {cfg.seq_len} per epoch, "
             f"padding {waste:.1%}; {world.size} rank(s) x {grad_accum} accumulation -> {total_steps} steps; "
             f"ZeRO-{stage}, {precision}")
    if take is not None:
        log.info(f"--reference-batch {','.join(map(str, cfg.reference_batch))}: the reference's Trainer takes "
                 f"{stream_steps} optimizer steps over {take} of the {sum(len(p) for p in plans)} packed "
                 f"micro-batches of {cfg.epochs} epochs (it stops at max_steps)")

    # model, optimizer, schedule, engine
    if world.rank != 0:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model = load_model(str(model_dir), ds_config=ds, dtype=DTYPES[precision], init=cfg.init,
                       attn=cfg.attn_implementation, gradient_checkpointing=cfg.gradient_checkpointing)
    n_params = sum({id(p): (p.ds_numel if hasattr(p, "ds_numel") else p.numel()) for p in model.parameters()}.values())
    optimizer = build_optimizer(model, kind=cfg.optimizer, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                weight_decay=cfg.weight_decay, optimizer_offloaded=opt_off)
    fn = lr_lambda(schedule=cfg.schedule, total_steps=total_steps, warmup_steps=warmup, min_lr_ratio=cfg.min_lr_ratio)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds, dist_init_required=False,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, fn))

    if cfg.batching == "pack":
        check_packing(engine, examples, pad_id)

    identity = {k: getattr(cfg, k) for k in TrainConfig.RESUME_KEYS}
    identity.update(world_size=world.size, grad_accum=grad_accum,
                    data=fingerprint(examples, [r.id for r in train_recs]),
                    zero_stage=stage, precision=precision)
    start = 0
    if resume:
        start = checkpoint.resume(engine, ckpt_dir, identity=identity)
        log.info(f"resumed from {ckpt_dir / checkpoint.latest_tag(ckpt_dir)}: next step {start + 1}")
        if world.rank == 0:
            _truncate_metrics(lay.metrics, start)

    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    mean_ctx = (sum(n * n for n in lengths) / max(sum(lengths), 1)) if cfg.batching == "pack" else cfg.seq_len / 2
    fpt = flops_per_token(n_params, getattr(text_cfg, "num_hidden_layers", 0), getattr(text_cfg, "hidden_size", 0),
                          mean_ctx)
    return TrainState(cfg=cfg, world=world, engine=engine, model=model, tokenizer=tokenizer, scheduler=scheduler,
                      examples=examples, held=held, sched=sched, total_steps=total_steps, grad_accum=grad_accum,
                      stage=stage, precision=precision, pad_id=pad_id, identity=identity, ckpt_dir=ckpt_dir, log=log,
                      start=start, waste=waste, n_params=n_params, flops_per_token=fpt,
                      peak_tflops=cfg.peak_tflops or guess_peak_tflops(),
                      reference=None if take is None else {
                          "batch": list(cfg.reference_batch), "steps": stream_steps, "micro_batches_taken": take,
                          "micro_batches": sum(len(p) for p in plans),
                          "epochs_seen": round(cfg.epochs * take / max(1, sum(len(p) for p in plans)), 3)})


def train_step(st: TrainState, step: int, stop: StopSignal) -> dict[str, Any]:
    """One optimizer step (0-based `step`) on every rank; returns its metrics row.

    Raises TrainingInterrupted at the step boundary when a signal reached any rank, after every rank
    saved the last finished step."""
    cfg, world, engine = st.cfg, st.world, st.engine
    t0 = time.perf_counter()
    epoch, micro = st.sched.window(step, world.rank, world.size, st.grad_accum)
    batches = [collate(rows, st.examples, seq_len=cfg.seq_len, batching=cfg.batching, pad_id=st.pad_id)
               for rows in micro]
    # one all-reduce: the window's target tokens over all ranks (the loss divisor), and whether to stop
    n_target, n_tokens, n_slots, stopping = _all_sum(
        [sum(b.n_target for b in batches), sum(b.n_tokens for b in batches), sum(b.n_slots for b in batches),
         float(stop.requested)],
        engine.device)
    if stopping:
        if step > st.start:
            checkpoint.save(engine, st.ckpt_dir, step=step, identity=st.identity, keep=cfg.keep_checkpoints,
                            rank=world.rank)
        stop.restore()
        raise TrainingInterrupted(step, st.ckpt_dir if step > st.start else None)
    lr = st.scheduler.get_last_lr()[0]
    loss_sum = 0.0
    for batch in batches:
        batch = batch.to(engine.device)
        loss = token_loss_sum(engine, batch)
        # DeepSpeed averages gradients over ranks, so world / N makes the window's gradient that of the
        # mean loss over all its target tokens; scale_wrt_gas=False: no extra 1/grad_accum
        engine.backward(loss * (world.size / max(n_target, 1.0)), scale_wrt_gas=False)
        engine.step()  # DeepSpeed steps the optimizer (clip, AdamW, lr) only at the window's end
        loss_sum += loss.item()
    (loss_sum,) = _all_sum([loss_sum], engine.device)
    dt = time.perf_counter() - t0
    grad_norm = engine.get_global_grad_norm()
    peak = st.peak_tflops
    return {"step": step + 1, "total_steps": st.total_steps, "epoch": epoch, "loss": loss_sum / max(n_target, 1.0),
            "lr": lr, "tokens": int(n_tokens), "target_tokens": int(n_target), "padding": 1 - n_tokens / n_slots,
            "tokens_per_s": n_tokens / dt, "step_s": dt,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "mfu": (st.flops_per_token * n_tokens / dt) / (peak * 1e12 * world.size) if peak else None}


def train(cfg: TrainConfig, *, resume: bool = False, quiet: bool = False) -> tuple[TrainResult, TrainState]:
    """Run (or continue) one training job. Every rank calls it; the state is returned for the export."""
    st = setup(cfg, resume=resume, quiet=quiet)
    history: list[dict[str, Any]] = []
    st.engine.train()
    stop = StopSignal()
    for step in range(st.start, st.total_steps):
        row = train_step(st, step, stop)
        history.append(row)
        done = step + 1
        if done % cfg.log_every == 0 or done == st.total_steps:
            st.log.step(row, completed=done)
        if st.held and cfg.eval_every and done % cfg.eval_every == 0:
            st.log.eval(done, evaluate(st.engine, st.held, cfg, st.world, st.pad_id))
        if cfg.save_every and done % cfg.save_every == 0 and done < st.total_steps:
            checkpoint.save(st.engine, st.ckpt_dir, step=done, identity=st.identity, keep=cfg.keep_checkpoints,
                            rank=st.world.rank)
    stop.restore()
    result = TrainResult(steps=st.total_steps, steps_per_epoch=st.sched.steps_per_epoch[0], resumed_at=st.start,
                         history=history, padding=st.waste, examples=len(st.examples), zero_stage=st.stage,
                         precision=st.precision, world_size=st.world.size, params=st.n_params, reference=st.reference)
    if st.held:
        result.eval_loss = evaluate(st.engine, st.held, cfg, st.world, st.pad_id)
        st.log.eval(st.total_steps, result.eval_loss)
    return result, st


def _truncate_metrics(path: Path, keep_through: int) -> None:
    """Drop the log lines of steps after the checkpoint (they will be run again)."""
    import orjson

    if not path.is_file():
        return
    kept = [line for line in path.read_bytes().splitlines() if line.strip()
            and orjson.loads(line).get("step", 0) <= keep_through]
    # rewritten in place, not renamed over: the run's log already holds this file open for appending
    path.write_bytes(b"".join(line + b"\n" for line in kept))


def _check_plan(cfg: TrainConfig, stage: int, opt_off: bool, par_off: bool, world: World) -> None:
    import psutil
    from persd.trainers import plan as mplan

    shape = mplan.shape_of(cfg.model)
    nodes = max(1, world.size // max(world.local_size, 1))
    cpu_mem = float(psutil.virtual_memory().total)
    if world.device == "cpu":  # model states and activations live in host memory too
        p = mplan.make_plan(shape, stage=stage, offload_optimizer=opt_off, offload_params=par_off,
                            gpus_per_node=world.local_size, nodes=nodes, seq_len=cfg.seq_len,
                            micro_batch=cfg.micro_batch, gradient_checkpointing=cfg.gradient_checkpointing,
                            gpu_memory=float("inf"), cpu_memory=cpu_mem)
        p.cpu_per_node += (p.total_gpu - mplan.CUDA_OVERHEAD) * world.local_size
    else:
        gpu_mem = float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
        p = mplan.make_plan(shape, stage=stage, offload_optimizer=opt_off, offload_params=par_off,
                            gpus_per_node=world.local_size, nodes=nodes, seq_len=cfg.seq_len,
                            micro_batch=cfg.micro_batch, gradient_checkpointing=cfg.gradient_checkpointing,
                            gpu_memory=gpu_mem, cpu_memory=cpu_mem)
    mplan.refuse_if_unfit(p)
