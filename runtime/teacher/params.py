"""Parameters a model refuses, adapted once for the run instead of failing every request.

Reasoning models (OpenAI's o1/o3/o4 and gpt-5 families) answer any request that carries
`max_tokens` with 400 `unsupported_parameter` ("Use 'max_completion_tokens' instead"), and one
that sets `temperature` or `top_p` to anything but the default with `unsupported_value`. persd
sends `max_completion_tokens` to those families from the start; for any other model, the first
such answer names the parameter (`error.param`, else the quoted name in the message), which is
then renamed (max_tokens) or dropped (the rest) for every later request of the run. A parameter
is adapted once: refused again, the request fails. The journal key stays the request's own, so a
rerun finds the answers already paid for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

COMPLETION_TOKENS_FAMILIES = ("o1", "o3", "o4", "gpt-5")
RENAMES = {"max_tokens": "max_completion_tokens"}
_QUOTED = re.compile(r"'([a-z_]+)'")


def needs_completion_tokens(model: str) -> bool:
    name = model.rsplit("/", 1)[-1].lower()
    return any(name == f or name.startswith(f + "-") for f in COMPLETION_TOKENS_FAMILIES)


@dataclass
class ParamAdapter:
    """What this run sends differently from the requests' own parameters: {param: new name, or
    None where dropped}, with why (`family` or the provider's message)."""

    model: str
    changes: dict[str, str | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if needs_completion_tokens(self.model):
            self.changes["max_tokens"] = "max_completion_tokens"
            self.reasons["max_tokens"] = f"model family of '{self.model}'"

    def apply(self, payload: dict) -> dict:
        if not self.changes or not any(k in payload for k in self.changes):
            return payload
        out = dict(payload)
        for name, new in self.changes.items():
            if name in out:
                value = out.pop(name)
                if new is not None:
                    out[new] = value
        return out

    def learn(self, param: str, message: str, sent: dict) -> str | None:
        """Adapt to a refused parameter of the payload `sent`; returns a one-line note of what changed,
        "" where it was adapted already (a request sent before another's refusal taught us: send it
        again as adapted), or None where there is nothing to adapt (the parameter is unknown or was
        not sent). Each step renames or drops a parameter for good, so adapting always ends."""
        names = [n for n in ([param] if param else _QUOTED.findall(message)) if n in sent]
        if not names:
            return None
        if names[0] in self.changes:  # sent under its own name, which is adapted by now
            return ""
        original = next((old for old, new in self.changes.items() if new == names[0]), names[0])
        new = None if original in self.changes else RENAMES.get(original)  # a renamed one refused too: drop
        self.changes[original] = new
        self.reasons[original] = message[:300]
        what = f"sent as '{new}'" if new else "dropped"
        return (f"the teacher model '{self.model}' refuses '{names[0]}': '{original}' is {what} "
                f"for the rest of the run ({message[:200]})")

    def record(self) -> dict:
        """For the manifest: {param: {"sent_as": name or None, "why": ...}}."""
        return {k: {"sent_as": v, "why": self.reasons.get(k, "")} for k, v in self.changes.items()}
