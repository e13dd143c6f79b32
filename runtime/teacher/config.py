"""Teacher configuration: where, which model, how fast, how much money, where answers are kept."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from persd.runtime.errors import ConfigError
from persd.runtime.http import RetryPolicy
from persd.runtime.options import (
    BadValue,
    key_values,
    nonneg_float,
    opt,
    positive_float,
    positive_int,
    positive_number,
    section,
)


def parse_prices(v: str | dict) -> dict[str, list[float]]:
    """'m1=0.15:0.6,m2=1:2' (a flag) or {m1 = [0.15, 0.6]} (a TOML table) -> {model: [in, out]}."""
    if isinstance(v, dict):
        items = list(v.items())
    else:
        items = []
        for part in (x.strip() for x in str(v).split(",") if x.strip()):
            model, _, pair = part.partition("=")
            items.append((model.strip(), pair.split(":")))
    out: dict[str, list[float]] = {}
    for model, pair in items:
        try:
            if isinstance(pair, dict):
                pair = [pair["input"], pair["output"]]
            a, b = (float(x) for x in pair)
            if not model or a < 0 or b < 0:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise BadValue(f"expected MODEL=IN:OUT (USD per 1M input and output tokens), got {model}={pair!r}") \
                from None
        out[model] = [a, b]
    return out


@dataclass
class TeacherConfig:
    """Limits are this process's share of the provider's: on K machines sharing one key, give
    each `rpm / K` and `tpm / K` (the x-ratelimit headers then correct for drift).

    `headroom` paces at that fraction of rpm/tpm. Over the shortest window the provider may enforce,
    `limit_window_s` (default 1 s), that leaves `limit_window_s * (1/headroom - 1)` seconds of slack
    (15 ms at 0.985): `jitter_s` of it absorbs bunching after a request leaves (network, server), the
    rest is the pacer's burst tolerance (timer lateness, catching up after a shared cool-down); a
    request that leaves late is seen on the wire and held apart from the ones a window after it
    (the wire log); see `persd.runtime.teacher.limiter`.
    `reconcile_tokens` gives back (estimate - usage) tokens once the answer arrives; turn it off
    for providers that charge `max_tokens` against TPM whatever the answer's length.
    A 429 that is not about this client's budget (a provider's overload) cuts the pace to
    `aimd_decrease` of itself, at most once per round trip, and it recovers by `aimd_recover_per_s`
    (of the limit) per second; see `persd.runtime.teacher.limiter`.
    `prices` overrides the price table: {model: (input, output) USD per 1M tokens}.
    Each field's help is in its `opt()`; commands nest this config as their `teacher` section.
    """

    base_url: str | None = opt("https://api.openai.com/v1", help="OpenAI-compatible base URL",
                               changes_results=False)
    model: str = opt("gpt-3.5-turbo", help="the teacher model's name", changes_results=True)  # the paper's
    seed: int | None = opt(None, help="sent as each request's seed (best-effort determinism where the provider "
                           "supports it)", changes_results=True, shown="none sent")
    api_key_env: str = opt("OPENAI_API_KEY", help="environment variable holding the key", changes_results=False)
    rpm: float = opt(3500, help="requests per minute, this process", changes_results=False,
                     type=positive_number)  # OpenAI's tier-1 limits for gpt-3.5-turbo
    tpm: float | None = opt(1_000_000, help="tokens per minute, this process", changes_results=False,
                            type=positive_number)
    max_in_flight: int = opt(64, help="requests in flight", changes_results=False, type=positive_int)
    max_cost_usd: float | None = opt(None, help="stop (resumably) once spending reaches this many dollars",
                                     changes_results=False, type=positive_float, shown="no limit")
    journal_path: Path | None = opt(None, help="where answers are kept (set by the command)", changes_results=False,
                                    cli=False)
    prices: dict[str, tuple[float, float]] | None = opt(
        None, help="prices of several models: 'MODEL=IN:OUT,...' USD per 1M tokens (TOML: a table, "
        "prices = {model = [in, out]})", changes_results=False, type=parse_prices, shown="the price table")
    retry: RetryPolicy = section(RetryPolicy, help="retries of one teacher request")
    headroom: float = opt(0.985, help="pace at this fraction of rpm and tpm", changes_results=False,
                          type=positive_float)
    limit_window_s: float = opt(1.0, help="shortest window (s) over which the provider may enforce rpm/tpm",
                                changes_results=False, type=positive_float)
    jitter_s: float = opt(0.01, help="seconds the requests may bunch up after they leave (network, the server's "
                          "own reading)", changes_results=False,
                          type=nonneg_float)
    reconcile_tokens: bool = opt(True, help="give back over-estimated tokens from each answer's usage",
                                 changes_results=False)
    default_cooldown_s: float = opt(1.0, help="shared pause (s) after an own-budget 429 that names no Retry-After",
                                    changes_results=False, type=nonneg_float)
    aimd_decrease: float = opt(0.9, help="pace kept at each cut after a 429 that is not about our budget",
                               changes_results=False, type=positive_float)
    aimd_recover_per_s: float = opt(0.5, help="pace regained per second after a cut", changes_results=False,
                                    type=positive_float)
    cold_start_s: float = opt(0.0, help="the schedule starts this late (s) after idle (not needed where the "
                              "wire log sees when requests leave)", changes_results=False, type=nonneg_float)
    extra_headers: dict[str, str] | None = opt(None, help="HTTP headers sent with every request: "
                                               "'NAME=VALUE,...' (TOML: a table); manifests keep their names only",
                                               changes_results=False, type=key_values(str, "NAME=VALUE list"))

    def __post_init__(self) -> None:
        """Each bad value names its field (the command line names it as the flag it came from)."""
        def bad(name: str, message: str) -> ConfigError:
            return ConfigError(name, f"{message}, got {getattr(self, name)!r}", section="teacher")

        self.check_url()
        if not self.model:
            raise bad("model", "must not be empty")
        if not self.rpm or self.rpm <= 0:
            raise bad("rpm", "must be positive")
        if self.tpm is not None and self.tpm <= 0:
            raise bad("tpm", "must be positive")
        if self.max_in_flight < 1:
            raise bad("max_in_flight", "must be at least 1")
        if self.max_cost_usd is not None and self.max_cost_usd < 0:
            raise bad("max_cost_usd", "must not be negative")
        if not 0 < self.headroom <= 1:
            raise bad("headroom", "must be in (0, 1]")
        if not self.limit_window_s > 0:
            raise bad("limit_window_s", "must be positive")
        if not 0 < self.aimd_decrease < 1:
            raise bad("aimd_decrease", "must be in (0, 1)")
        if not self.aimd_recover_per_s > 0:
            raise bad("aimd_recover_per_s", "must be positive")
        if not self.cold_start_s >= 0:
            raise bad("cold_start_s", "must not be negative")
        if not self.jitter_s >= 0:
            raise bad("jitter_s", "must not be negative")

    def check_url(self) -> None:
        url = urlsplit(self.base_url or "")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError("base_url", f"must be an http(s) URL such as http://127.0.0.1:8000/v1, got "
                              f"{self.base_url!r}", section="teacher")

    def validate(self) -> None:
        """Checked again (a config may be changed after it was made)."""
        self.__post_init__()

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def is_loopback(self) -> bool:
        host = urlsplit(self.base_url).hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def api_key(self) -> str | None:
        """The key from the environment; None is allowed only for a loopback server."""
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            return key
        if self.is_loopback():
            return None
        raise ConfigError("api_key_env", section="teacher",
                          message=f"no teacher API key: set the environment variable {self.api_key_env} "
                                  f"(or name another variable) for {self.base_url}")
