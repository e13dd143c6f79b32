"""The paper's training schedule as its software ran it (PersDistill's environment.yml: transformers 4.29.2,
DeepSpeed 0.9.2), for `--reference-batch` and `--schedule warmuplr`.

Optimizer steps (transformers 4.29.2 trainer.py:1684-1699, :1873-2031, with DeepSpeed):
- each rank's loader has ceil(ceil(N / gpus) / per_gpu) micro-batches an epoch (DistributedSampler pads the
  ranks to equal length, drop_last off);
- `max_steps = ceil(epochs x max(len_dataloader // accum, 1))`;
- DeepSpeed steps the optimizer every `accum` micro-batches counted across epochs (its own micro-step
  counter: an epoch's remainder goes into the next epoch's first step);
- the Trainer counts a step where `total_batched_samples % accum == 0` (also across epochs), or at the end
  of an epoch shorter than `accum`, and stops training as soon as its count reaches max_steps: the run
  usually ends mid-epoch, having seen fewer than `epochs` passes.

Learning rate (DeepSpeed 0.9.2 lr_schedules.py WarmupLR with the Trainer's "auto" values: min 0, max the
learning rate, warm-up steps 0 clamped to 2, log warm-up): the constructor leaves the optimizer's lr alone,
so step 1 runs at the configured lr; the engine steps the schedule after each optimizer step, so step 2
runs at log(1) / log(2) x lr = 0, and every later step at the full lr.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainerRun:
    """What the reference's Trainer did with N records: its optimizer steps and the data they saw."""

    records: int
    epochs: int
    micro_per_epoch: int  # micro-batches per rank and epoch (len_dataloader)
    max_steps: int  # the Trainer's max_steps
    steps: int  # optimizer steps DeepSpeed took
    micro_processed: int  # micro-batches per rank run forward/backward before the stop
    micro_applied: int  # of those, the ones whose gradients reached an optimizer step (steps x accum)

    @property
    def epochs_seen(self) -> float:
        """Passes over the data whose gradients were applied (11.8 for 3,248 records at 12 x 20 x 8, 20 epochs)."""
        return self.micro_applied / self.micro_per_epoch

    @property
    def share_of_stream(self) -> float:
        """The applied micro-batches as a share of every epoch's micro-batches."""
        return self.micro_applied / (self.micro_per_epoch * self.epochs)


def trainer_run(records: int, epochs: int, per_gpu: int, accum: int, gpus: int) -> TrainerRun:
    """Replay the Trainer's loop counters (no model): see the module docstring."""
    micro = math.ceil(math.ceil(records / gpus) / per_gpu)
    max_steps = math.ceil(epochs * max(micro // accum, 1))
    counted = total = 0
    for _ in range(epochs):
        for step in range(micro):
            total += 1
            if total % accum == 0 or (micro <= accum and step + 1 == micro):
                counted += 1
            if counted >= max_steps:
                break
        if counted >= max_steps:
            break
    steps = total // accum
    return TrainerRun(records, epochs, micro, max_steps, steps, total, steps * accum)


def clean_prompts(records: list, setting: str, model: str | None) -> list:
    """`--prompt-cleanup`: the reference's decode round trip of each training prompt (finetune.py:495-501,
    clean-up on unless the tokenizer's config turns it off, as transformers 4.29.2 does); records as given
    where it is off."""
    import dataclasses

    from persd.runtime.decoding import clean_up_tokenization, resolve_cleanup

    if not resolve_cleanup(setting, model):
        return records
    return [dataclasses.replace(r, prompt=clean_up_tokenization(r.prompt)) for r in records]


def warmuplr_multiplier(step: int, warmup_steps: int = 0) -> float:
    """The lr of optimizer step `step + 1`, as a multiple of the configured lr: DeepSpeed 0.9.2's WarmupLR
    (log warm-up from 0, `max(2, warmup_steps)` steps) stepped after each optimizer step, its first value
    never applied before step 1."""
    if step == 0:
        return 1.0
    warm = max(2, warmup_steps)
    iteration = step - 1  # the schedule's last_batch_iteration during this step
    if iteration < warm:
        return math.log(iteration + 1) / math.log(warm)
    return 1.0
