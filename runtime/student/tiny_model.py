"""A tiny random-weight Llama-style causal LM for tests and demos.

The tokenizer is a byte-level BPE trained in about a second on Python source from the
standard library, so prompts tokenize like code does. Everything is written with
`save_pretrained`, so every backend (transformers, vLLM, the trainer) loads it through
the ordinary `from_pretrained` path, exactly as it would a real checkpoint.
Same seed, same machine: byte-identical weights and tokenizer.
"""
from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Standard-library modules whose source trains the tokenizer (a fixed list: deterministic).
CORPUS_MODULES = (
    "textwrap.py", "string.py", "heapq.py", "bisect.py", "functools.py", "fractions.py",
    "statistics.py", "difflib.py", "shlex.py", "csv.py", "calendar.py", "random.py",
    "collections/__init__.py", "json/encoder.py", "json/decoder.py", "argparse.py",
)
# A little code that appears in every corpus, so the vocabulary is useful even without the stdlib.
FALLBACK_CORPUS = '''
def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return a + b


def is_palindrome(text: str) -> bool:
    cleaned = [c.lower() for c in text if c.isalnum()]
    return cleaned == cleaned[::-1]


from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2 and abs(elem - elem2) < threshold:
                return True
    return False

assert add(1, 2) == 3
'''

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TinyModelConfig:
    vocab_size: int = 4096
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32  # a head size vLLM's CPU attention supports
    max_position_embeddings: int = 2048


def corpus_texts() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [FALLBACK_CORPUS]
    for name in CORPUS_MODULES:
        path = stdlib / name
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return texts


def build_tokenizer(vocab_size: int):
    """A byte-level BPE (lossless round trip of any text) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = TinyModelConfig.max_position_embeddings
    return fast


def write_tiny_model(out_dir: str | os.PathLike, seed: int = 0, config: TinyModelConfig | None = None) -> Path:
    """Write config, weights (safetensors) and tokenizer to `out_dir`; return the directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = config or TinyModelConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(cfg.vocab_size)
    model_cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model_cfg.dtype = "float32"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model_cfg).to(torch.float32)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _portable_tokenizer_class(out / "tokenizer_config.json")
    return out


def _portable_tokenizer_class(path: Path) -> None:
    """transformers 5 writes its own class name; the classic one loads in 4.x and 5.x alike."""
    import json

    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
