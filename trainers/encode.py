"""Tokenisation: prompt + completion + EOS, with the loss on the completion (and EOS) only.

An example is its token ids and the index where the completion starts. Prompt and
completion are tokenised separately, so no BPE merge crosses the boundary and the
target tokens are exactly the completion's. An example longer than the sequence
length keeps its completion: the prompt is cut from the left (a leading BOS is kept).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from persd.runtime.errors import UsageError
from persd.trainers.data import Record


@dataclass
class Example:
    ids: np.ndarray  # int32 token ids: prompt, completion, EOS
    n_prompt: int  # ids[n_prompt:] are the targets (completion + EOS)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_target(self) -> int:
        return len(self.ids) - self.n_prompt


@dataclass
class EncodeStats:
    examples: int = 0
    tokens: int = 0
    target_tokens: int = 0
    prompt_truncated: int = 0  # over-long: prompt cut from the left
    completion_truncated: int = 0  # even the completion alone was too long: cut from the right

    def summary(self) -> str:
        return (f"{self.examples} examples, {self.tokens} tokens ({self.target_tokens} with loss); "
                f"over-long: {self.prompt_truncated} prompt(s) cut from the left, "
                f"{self.completion_truncated} completion(s) cut")


def encode_records(records: list[Record], tokenizer, seq_len: int) -> tuple[list[Example], EncodeStats]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UsageError("--model: the tokenizer has no EOS token; persd ends every completion with one")
    bos = tokenizer.bos_token_id
    prompts = tokenizer([r.prompt for r in records], add_special_tokens=True)["input_ids"]
    completions = tokenizer([r.completion for r in records], add_special_tokens=False)["input_ids"]
    stats = EncodeStats()
    out: list[Example] = []
    for p, c in zip(prompts, completions):
        c = list(c) + [eos]
        keep_bos = [bos] if (bos is not None and p and p[0] == bos) else []
        if len(c) + len(keep_bos) + 1 > seq_len:  # completion alone does not fit: keep one prompt token
            stats.completion_truncated += 1
            c = c[: seq_len - len(keep_bos) - 1]
        room = seq_len - len(c)
        if len(p) > room:
            stats.prompt_truncated += 1
            body = p[len(keep_bos):]
            p = keep_bos + body[len(body) - (room - len(keep_bos)):]
        ids = np.asarray(list(p) + c, dtype=np.int32)
        ex = Example(ids, len(p))
        out.append(ex)
        stats.examples += 1
        stats.tokens += len(ex)
        stats.target_tokens += ex.n_target
    return out, stats
