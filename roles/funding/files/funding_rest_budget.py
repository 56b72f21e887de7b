"""The history recorder's share of Binance's fundingInfo/fundingRate bucket, kept across runs.

Binance gives each IP 500 requests per 5 minutes for GET /fapi/v1/fundingInfo and
GET /fapi/v1/fundingRate together, answers 429 beyond it and bans (418, 2 minutes to
3 days) a client that keeps going. The recorder runs once a minute as a new process, so
its allowance lives in a small JSON file (written atomically):

- a token bucket of capacity C = budget / 2 that refills C tokens per window: in any
  window at most C (a full bucket) + C (the refill) = budget requests, so the default
  budget of 120 per 300 s keeps the recorder at 24 % of the 500; the daemon's fundingInfo
  refresher adds at most one request per 5 minutes (25 % in all, see the README);
- a 429 or 418 sets `not_before` from Retry-After (at least DEFAULT_RETRY_AFTER or
  DEFAULT_BAN_SECONDS when the header is missing or unreadable); no request is made
  before it, in this run or the next;
- a token is taken (and the file written) before the request is sent, so a killed run
  has spent what it used;
- an unreadable file starts again with an empty bucket (the safe side) and says so.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional

import funding_json
from funding_state import finite_number, write_state_atomic

DEFAULT_RETRY_AFTER = 60.0
DEFAULT_BAN_SECONDS = 120.0
MAX_RETRY_AFTER = 3 * 86400.0


@dataclass
class BudgetState:
    tokens: float = 0.0
    updated_at: float = 0.0
    not_before: float = 0.0
    requests_total: int = 0
    throttled_total: int = 0  # 429s
    banned_total: int = 0  # 418s
    last_status: Optional[int] = None


def retry_after_seconds(header: Optional[str], status: int) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds); the default for the status when unusable."""
    default = DEFAULT_BAN_SECONDS if status == 418 else DEFAULT_RETRY_AFTER
    if header is None:
        return default
    try:
        value = float(header.strip())
    except ValueError:
        return default
    if not math.isfinite(value) or value < 0:
        return default
    return min(max(value, 1.0), MAX_RETRY_AFTER)


class RestBudget:
    def __init__(self, path: str, budget: int, window_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.capacity = max(1.0, budget / 2.0)
        self.refill_per_second = self.capacity / window_seconds
        self.clock = clock
        self.state = BudgetState(tokens=0.0, updated_at=clock())
        self.load_problem: Optional[str] = None

    def load(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                raw = funding_json.loads(handle.read())
        except FileNotFoundError:
            self.state = BudgetState(tokens=self.capacity, updated_at=self.clock())
            return
        except (OSError, ValueError) as exc:
            self.load_problem = "REST budget file %s unreadable (%s); starting with an empty bucket" % (self.path, exc)
            self.state = BudgetState(tokens=0.0, updated_at=self.clock())
            return
        self.state = _state_from(raw, self.clock())
        if self.state is None:
            self.load_problem = "REST budget file %s is not in the expected format; starting with an empty bucket" % (
                self.path)
            self.state = BudgetState(tokens=0.0, updated_at=self.clock())

    def save(self) -> None:
        write_state_atomic(self.path, asdict(self.state))

    def _refill(self) -> None:
        now = self.clock()
        elapsed = max(0.0, now - self.state.updated_at)  # a clock stepped back refills nothing
        self.state.tokens = min(self.capacity, self.state.tokens + elapsed * self.refill_per_second)
        self.state.updated_at = now

    def wait_seconds(self) -> float:
        """0 when a request may go now; else how long until one may."""
        self._refill()
        now = self.clock()
        if now < self.state.not_before:
            return self.state.not_before - now
        if self.state.tokens >= 1.0:
            return 0.0
        return (1.0 - self.state.tokens) / self.refill_per_second

    def take(self) -> bool:
        """Spend one request (and save) if allowed now; False otherwise."""
        if self.wait_seconds() > 0:
            return False
        self.state.tokens -= 1.0
        self.state.requests_total += 1
        self.save()
        return True

    def refused(self, status: int, retry_after_header: Optional[str]) -> float:
        """Record a 429/418; return the seconds to wait (saved as not_before)."""
        wait = retry_after_seconds(retry_after_header, status)
        self.state.not_before = max(self.state.not_before, self.clock() + wait)
        self.state.last_status = status
        if status == 418:
            self.state.banned_total += 1
        else:
            self.state.throttled_total += 1
        self.save()
        return wait

    def answered(self, status: int) -> None:
        self.state.last_status = status


def _state_from(raw: Any, now: float) -> Optional[BudgetState]:
    if not isinstance(raw, dict):
        return None
    numbers: Dict[str, float] = {}
    for key in ("tokens", "updated_at", "not_before"):
        value = finite_number(raw.get(key))
        if value is None:
            return None
        numbers[key] = value
    counters = {key: raw.get(key) for key in ("requests_total", "throttled_total", "banned_total")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters.values()):
        return None
    status = raw.get("last_status")
    return BudgetState(
        tokens=max(0.0, numbers["tokens"]),
        updated_at=min(numbers["updated_at"], now),
        not_before=min(numbers["not_before"], now + MAX_RETRY_AFTER),
        last_status=status if isinstance(status, int) and not isinstance(status, bool) else None,
        **counters,
    )


def read_budget_file(path: str) -> Optional[Dict[str, Any]]:
    """The saved state for /metrics, or None when there is none or it is unusable."""
    try:
        with open(path, "rb") as handle:
            raw = funding_json.loads(handle.read())
    except (OSError, ValueError):
        return None
    state = _state_from(raw, time.time() + MAX_RETRY_AFTER)
    return asdict(state) if state is not None else None


def default_budget_path(db_path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(db_path)), "history-rest-budget.json")
