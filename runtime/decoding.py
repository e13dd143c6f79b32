"""How Hugging Face tokenizers turned token ids back into text in the PERsD reference's environment.

transformers 4.29.2 (the release's environment.yml) decodes with `clean_up_tokenization_spaces=True`
unless the tokenizer's own tokenizer_config.json sets it false (tokenization_utils_base.py:1529), and the
clean-up is a fixed list of replacements (:3544-3566, the same text in today's transformers) that also
touches code: `return ' '.join(x)` becomes `return''.join(x)`. Paper mode reproduces it on the text the
reference decoded (its samples, and its training prompts); persd's own mode never calls this.
"""
from __future__ import annotations

import json
from pathlib import Path

CLEANUP_CHOICES = ("off", "on", "auto")


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: spaces before punctuation and English contractions removed."""
    return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",").replace(" ' ", "'")
            .replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s").replace(" 've", "'ve")
            .replace(" 're", "'re"))


def tokenizer_cleans_up(model: str | None) -> bool:
    """What transformers 4.29.2 would do for this model: the `clean_up_tokenization_spaces` of its
    tokenizer_config.json where a local model directory has one, else True (that version's default)."""
    if model:
        path = Path(model) / "tokenizer_config.json"
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get("clean_up_tokenization_spaces", True)
            except (OSError, ValueError, AttributeError):
                return True
            return bool(value)
    return True


def resolve_cleanup(setting: str, model: str | None) -> bool:
    """`off` / `on` / `auto` (on unless the model's tokenizer config turns it off)."""
    if setting == "auto":
        return tokenizer_cleans_up(model)
    return setting == "on"
