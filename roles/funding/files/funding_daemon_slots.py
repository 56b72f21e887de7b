"""A slot: the URL, per-symbol streams and reconnect backoff of one serving connection (two while rotating)."""

from __future__ import annotations

import random
import time
from typing import FrozenSet, List, Optional
from urllib.parse import urlsplit, urlunsplit

import funding_settings
from funding_daemon_connection import Connection

MARKET_PATH_PREFIX = "/market/"
LEGACY_HINT = (
    " - is this the legacy URL? Binance moved market streams to /market (%s)" % funding_settings.DEFAULT_WS_URL
)


def url_is_legacy(url: str) -> bool:
    return not urlsplit(url).path.startswith(MARKET_PATH_PREFIX)


class Backoff:
    """Reconnect delays: initial, x2 per failed attempt, capped, with +-20 % jitter."""

    def __init__(self, initial: float, maximum: float, rng: Optional[random.Random] = None) -> None:
        self.initial = min(initial, maximum)
        self.maximum = maximum
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        self.attempts += 1
        base = min(self.maximum, self.initial * (2 ** min(self.attempts - 1, 30)))
        return min(self.maximum, base * self._rng.uniform(0.8, 1.2))

    def reset(self) -> None:
        self.attempts = 0


def overflow_url(url: str) -> str:
    """The URL of a connection without the all-market stream, for per-symbol streams only (same path family)."""
    parts = urlsplit(url)
    path = parts.path
    marker = path.find("/ws/")
    if marker >= 0:
        path = path[:marker + 3]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Slot:
    """One serving connection (two while rotating) and the per-symbol streams it carries.

    Slot 0 carries the all-market array plus up to 1023 per-symbol streams and drives connection_status;
    further slots carry the overflow, 1024 streams each.
    """

    def __init__(self, index: int, url: str, backoff: "Backoff") -> None:
        self.index = index
        self.url = url
        self.carries_array = index == 0
        self.backoff = backoff
        self.streams: FrozenSet[str] = frozenset()
        self.primary: Optional[Connection] = None
        self.candidate: Optional[Connection] = None
        self.retired: List[Connection] = []
        self.next_attempt_at = time.monotonic()
        self.next_rotation_at: Optional[float] = None

    @property
    def label(self) -> str:
        return "" if self.index == 0 else " (overflow %d)" % self.index

    def connections(self) -> List[Connection]:
        return [c for c in (self.primary, self.candidate, *self.retired) if c is not None]

    def set_streams(self, streams: FrozenSet[str]) -> None:
        self.streams = streams
        for connection in (self.primary, self.candidate):
            if connection is not None:
                connection.subscriptions.set_wanted(streams)
