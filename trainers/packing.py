"""Batches without waste: pack examples into fixed-length rows, or group by length, or pad.

An epoch's plan is a list of micro-batches; a micro-batch is a list of rows; a row is a
list of example indices. The plan depends only on (lengths, seed, epoch), so every rank
computes the same plan and a resumed run sees the same order.

- pack: best-fit of the shuffled examples into rows of seq_len tokens. In a row the
  position ids restart at 0 for every example; with no attention mask the model builds a
  block-diagonal causal mask from them (transformers' packed-sequence path, or varlen
  flash attention), so no token attends across examples.
- group: examples sorted by length inside shuffled windows, one example per row, each
  micro-batch padded to its longest row (for models that cannot take packed rows).
- pad: every example padded to seq_len (the PERsD reference; the benchmark's baseline).
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

import numpy as np
import torch
from persd.trainers.encode import Example

IGNORE = -100
GROUP_WINDOW = 64  # micro-batches per length-sorted window in "group" mode


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L) long
    targets: torch.Tensor  # (B, L) long, already shifted: targets[:, t] is the token after input_ids[:, t];
    #                        -100 = no loss
    position_ids: torch.Tensor  # (B, L) long
    attention_mask: torch.Tensor | None  # (B, L) for padded batches; None for packed rows
    real: torch.Tensor  # (B, L) bool: not padding
    n_examples: int

    @property
    def n_target(self) -> int:
        return int((self.targets != IGNORE).sum())

    @property
    def n_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.real.sum())

    @property
    def n_slots(self) -> int:
        return self.input_ids.numel()

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.targets.to(device), self.position_ids.to(device),
                     None if self.attention_mask is None else self.attention_mask.to(device), self.real,
                     self.n_examples)


def _rng(seed: int, epoch: int) -> random.Random:
    return random.Random(f"persd-epoch:{seed}:{epoch}")


def pack_rows(lengths: list[int], seq_len: int, order: list[int]) -> list[list[int]]:
    """Best fit: each example (in the given order) goes to the open row it fills most tightly."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (space left, row index)
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, r = free.pop(k)
            rows[r].append(i)
            if space - n > 0:
                bisect.insort(free, (space - n, r))
        else:
            rows.append([i])
            if seq_len - n > 0:
                bisect.insort(free, (seq_len - n, len(rows) - 1))
    return rows


def plan_epoch(lengths: list[int], *, seq_len: int, micro_batch: int, batching: str, seed: int,
               epoch: int) -> list[list[list[int]]]:
    rng = _rng(seed, epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if batching == "pack":
        rows = pack_rows(lengths, seq_len, order)
        rng.shuffle(rows)
    elif batching == "pad":
        rows = [[i] for i in order]
    elif batching == "group":
        window = GROUP_WINDOW * micro_batch
        rows = []
        micro: list[list[list[int]]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
            micro += [[[i] for i in chunk[j:j + micro_batch]] for j in range(0, len(chunk), micro_batch)]
        rng.shuffle(micro)
        return micro
    else:
        raise ValueError(batching)
    return [rows[j:j + micro_batch] for j in range(0, len(rows), micro_batch)]


def collate(rows: list[list[int]], examples: list[Example], *, seq_len: int, batching: str, pad_id: int) -> Batch:
    """Tensors for one micro-batch. An empty `rows` gives a batch of padding with no target (a filler)."""
    if not rows:
        rows = [[]]
    width = seq_len if batching in ("pack", "pad") else max(1, max(sum(len(examples[i]) for i in r) for r in rows))
    B = len(rows)
    ids = np.full((B, width), pad_id, dtype=np.int64)
    tgt = np.full((B, width), IGNORE, dtype=np.int64)
    pos = np.zeros((B, width), dtype=np.int64)
    real = np.zeros((B, width), dtype=bool)
    n_examples = 0
    for b, row in enumerate(rows):
        at = 0
        for i in row:
            ex = examples[i]
            n = len(ex)
            ids[b, at:at + n] = ex.ids
            pos[b, at:at + n] = np.arange(n)
            # the token at t predicts t+1; targets are the completion tokens (index >= n_prompt)
            first = max(ex.n_prompt - 1, 0)
            tgt[b, at + first:at + n - 1] = ex.ids[first + 1:n]
            real[b, at:at + n] = True
            at += n
            n_examples += 1
        # the padding tail is its own segment (positions restart at 0) so it joins no example
        pos[b, at:] = np.arange(width - at)
    attention_mask = None if batching == "pack" else torch.from_numpy(real.astype(np.int64))
    return Batch(torch.from_numpy(ids), torch.from_numpy(tgt), torch.from_numpy(pos), attention_mask,
                 torch.from_numpy(real), n_examples)


def padding_waste(plan: list[list[list[int]]], lengths: list[int], *, seq_len: int, batching: str) -> float:
    """Fraction of the computed token slots that hold padding."""
    real = slots = 0
    for micro in plan:
        row_lens = [sum(lengths[i] for i in r) for r in micro]
        width = seq_len if batching in ("pack", "pad") else max(row_lens)
        real += sum(row_lens)
        slots += width * len(micro)
    return 1.0 - real / slots if slots else 0.0
