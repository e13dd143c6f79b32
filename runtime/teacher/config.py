"""Teacher configuration: where, which model, how fast, how much money, where answers are kept."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from persd.runtime.errors import ConfigError
from persd.runtime.http import RetryPolicy


@dataclass
class TeacherConfig:
    """Limits are this process's share of the provider's: on K machines sharing one key, give
    each `rpm / K` and `tpm / K` (the x-ratelimit headers then correct for drift).

    `headroom` paces at that fraction of rpm/tpm. Over the shortest window the provider may enforce,
    `limit_window_s` (default 1 s), that leaves `limit_window_s * (1/headroom - 1)` seconds of slack
    (20 ms at 0.98): `jitter_s` of it absorbs network jitter, the rest is the pacer's burst tolerance
    (timer lateness, catching up after a shared cool-down); see `persd.runtime.teacher.limiter`.
    `reconcile_tokens` gives back (estimate - usage) tokens once the answer arrives; turn it off
    for providers that charge `max_tokens` against TPM whatever the answer's length.
    A 429 that is not about this client's budget (a provider's overload) cuts the pace to
    `aimd_decrease` of itself, at most once per round trip, and it recovers by `aimd_recover_per_s`
    (of the limit) per second; see `persd.runtime.teacher.limiter`.
    `prices` overrides the price table: {model: (input, output) USD per 1M tokens}.
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-3.5-turbo"  # the paper's teacher (ChatGPT); persd collect's default too
    api_key_env: str = "OPENAI_API_KEY"
    rpm: float = 3500  # OpenAI's tier-1 limits for gpt-3.5-turbo
    tpm: float | None = 1_000_000
    max_in_flight: int = 64
    max_cost_usd: float | None = None
    journal_path: Path | None = None
    prices: dict[str, tuple[float, float]] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    headroom: float = 0.98
    limit_window_s: float = 1.0  # shortest window over which the provider may enforce rpm/tpm
    jitter_s: float = 0.005      # how much the network may bunch requests up on the way
    reconcile_tokens: bool = True
    default_cooldown_s: float = 1.0  # shared pause after an own-budget 429 that names no Retry-After
    aimd_decrease: float = 0.9       # pace kept at each cut after a 429 that is not about our budget
    aimd_recover_per_s: float = 0.5  # pace regained per second after a cut
    cold_start_s: float = 0.1        # the schedule starts this late after idle (new connections arrive late)
    extra_headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        """Each bad value names its field (the command line names it as the flag it came from)."""
        def bad(name: str, message: str) -> ConfigError:
            return ConfigError(name, f"{message}, got {getattr(self, name)!r}", section="teacher")

        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise bad("base_url", "must be an http(s) URL such as http://127.0.0.1:8000/v1")
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
