"""Funding settlements of the simulated exchange: the funding clock, the settled-rate ledger and the REST bucket.

- FundingClock: funding times are multiples of the interval, aligned to UTC like Binance's (00:00, 08:00, 16:00
  for 8 h). With `--funding-period-seconds N` one funding "hour" lasts N seconds, so an 8 h symbol settles every
  8 N seconds (tests, Molecule); without it an hour is an hour.
- Settlement (Market.settle_due, called from each tick): at each funding time the rate that was live (the last one
  published before it) is recorded with the mark price of that moment; the next `T` follows the symbol's interval.
  A settlement at the cap or floor switches the symbol to 1 h (Binance since 2025-05); a symbol switched so goes
  back to 4 h after QUIET_SETTLEMENTS settlements below half its cap (Binance since 2026-01).
- Binance reports some fundingTimes a few milliseconds late (…005 ms): symbols for which `late_ms` is non-zero do.
- GET /fapi/v1/fundingRate: `symbol` optional, `startTime`, `endTime`, `limit` (default 100, at most 1000), rows
  ascending by (fundingTime, symbol): with startTime the first `limit` from it, else the last `limit` up to endTime
  (or now). Without `symbol`, every symbol's rows: one call of 1000 rows holds a whole settlement.
- RestBucket: fundingInfo and fundingRate share 500 requests per 5 minutes per IP; beyond it 429 with Retry-After,
  and a client that keeps going while refused is banned with 418 (Retry-After 120).
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

HOUR_MS = 3_600_000
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
QUIET_SETTLEMENTS = 8
RELAXED_INTERVAL_HOURS = 4
CAPPED_INTERVAL_HOURS = 1
DEFAULT_BUCKET_LIMIT = 500
DEFAULT_BUCKET_WINDOW_SECONDS = 300.0
BAN_AFTER_REFUSALS = 3
BAN_SECONDS = 120


class FundingClock:
    def __init__(self, period_seconds: Optional[float] = None) -> None:
        self.period_seconds = period_seconds
        self.hour_ms = int(period_seconds * 1000) if period_seconds else HOUR_MS

    def interval_ms(self, interval_hours: int) -> int:
        return interval_hours * self.hour_ms

    def next_time(self, now_ms: int, interval_hours: int) -> int:
        """The next funding boundary strictly after now_ms."""
        period = self.interval_ms(interval_hours)
        return (now_ms // period + 1) * period


def late_ms(symbol: str) -> int:
    """How many ms after the funding time Binance reports this symbol's fundingTime (0 for most)."""
    return 5 if sum(map(ord, symbol)) % 9 == 4 else 0


class FundingLedger:
    """Every settlement, in (fundingTime, symbol) order, and per symbol."""

    def __init__(self) -> None:
        self.rows: List[Tuple[int, str, str, str]] = []  # (fundingTime, symbol, rate text, mark text)
        self.by_symbol: Dict[str, List[Tuple[int, str, str]]] = {}
        self.settled_live = 0  # settlements made while running (not the prefilled past)
        self.interval_switches: List[Dict[str, Any]] = []

    def record(self, symbol: str, funding_time: int, rate_text: str, mark_text: str) -> None:
        row = (funding_time, symbol, rate_text, mark_text)
        if not self.rows or self.rows[-1][:2] <= row[:2]:
            self.rows.append(row)
        else:
            bisect.insort(self.rows, row)
        own = self.by_symbol.setdefault(symbol, [])
        entry = (funding_time, rate_text, mark_text)
        if not own or own[-1][0] <= funding_time:
            own.append(entry)
        else:
            bisect.insort(own, entry)

    def query(self, symbol: Optional[str], start: Optional[int], end: Optional[int], limit: int,
              now_ms: int) -> List[Dict[str, Any]]:
        if symbol is not None:
            source = [(t, symbol, r, m) for t, r, m in self.by_symbol.get(symbol, [])]
        else:
            source = self.rows
        times = [row[0] for row in source] if symbol is not None else None
        upper = end if end is not None else now_ms
        if start is not None:
            lo = bisect.bisect_left(times, start) if times is not None else bisect.bisect_left(source, (start,))
            selected = [row for row in source[lo:lo + limit] if row[0] <= upper]  # ascending: a prefix
        else:
            hi = bisect.bisect_right(times, upper) if times is not None else bisect.bisect_right(
                source, (upper, "\uffff"))
            selected = source[max(0, hi - limit):hi]
        return [{"symbol": s, "fundingTime": t, "fundingRate": r, "markPrice": m} for t, s, r, m in selected]

    def symbol_rows(self, symbol: str) -> List[Dict[str, Any]]:
        return [{"fundingTime": t, "fundingRate": r, "markPrice": m} for t, r, m in self.by_symbol.get(symbol, [])]


def prefill(ledger: FundingLedger, specs: Any, clock: FundingClock, now_ms: int, *, hours: float, seed: int) -> int:
    """Settlements of the past `hours` funding hours for every trading perpetual, from their own random source."""
    rng = random.Random(seed ^ 0xF00D)
    since = now_ms - int(hours * clock.hour_ms)
    count = 0
    for spec in specs:
        if not spec.trading_perpetual:
            continue
        step = clock.interval_ms(spec.funding_interval_hours)
        t = clock.next_time(now_ms, spec.funding_interval_hours) - step
        past = []
        while t >= since and t > 0:
            rate = max(-spec.funding_cap, min(spec.funding_cap, spec.funding_target + rng.gauss(0.0, 0.00005)))
            mark = spec.base_price * math.exp(rng.gauss(0.0, 0.01))
            past.append((t + late_ms(spec.symbol), "%.8f" % rate if abs(rate) >= 5e-9 else "0.00000000",
                         "%.8f" % round(mark, spec.tick_decimals)))
            t -= step
        own = ledger.by_symbol.setdefault(spec.symbol, [])
        for funding_time, rate_text, mark_text in reversed(past):
            ledger.rows.append((funding_time, spec.symbol, rate_text, mark_text))
            own.append((funding_time, rate_text, mark_text))
            count += 1
        own.sort()
    ledger.rows.sort()
    return count


def switch_interval(spec: Any, settled_rate: float, ledger: FundingLedger, funding_time: int) -> None:
    """Binance's rules: at the cap or floor -> 1 h; a capped symbol quiet for QUIET_SETTLEMENTS settlements -> 4 h."""
    cap = spec.funding_cap
    if abs(settled_rate) >= cap - 1e-12 and spec.funding_interval_hours != CAPPED_INTERVAL_HOURS:
        spec.extra["capped_from"] = spec.funding_interval_hours
        spec.extra["quiet"] = 0
        _switch(spec, CAPPED_INTERVAL_HOURS, "cap hit", ledger, funding_time)
    elif "capped_from" in spec.extra:
        spec.extra["quiet"] = spec.extra.get("quiet", 0) + 1 if abs(settled_rate) < cap / 2 else 0
        if spec.extra["quiet"] >= QUIET_SETTLEMENTS:
            spec.extra.pop("capped_from")
            spec.extra.pop("quiet")
            _switch(spec, RELAXED_INTERVAL_HOURS, "quiet", ledger, funding_time)


def _switch(spec: Any, hours: int, why: str, ledger: FundingLedger, funding_time: int) -> None:
    ledger.interval_switches.append({"symbol": spec.symbol, "from": spec.funding_interval_hours, "to": hours,
                                     "why": why, "fundingTime": funding_time})
    spec.funding_interval_hours = hours


class RestBucket:
    """The 500 requests / 5 minutes per IP that fundingInfo and fundingRate share, with 429 and 418."""

    def __init__(self, limit: int = DEFAULT_BUCKET_LIMIT, window_seconds: float = DEFAULT_BUCKET_WINDOW_SECONDS,
                 clock: Any = time.monotonic) -> None:
        self.limit = limit
        self.window = window_seconds
        self.clock = clock
        self.recent: Deque[float] = deque()
        self.history: Deque[float] = deque(maxlen=200_000)  # accepted requests, for windowMax
        self.refusals_since_429 = 0
        self.banned_until = 0.0
        self.counts = {"accepted": 0, "throttled": 0, "banned": 0}

    def admit(self) -> Tuple[int, int]:
        """(HTTP status, Retry-After seconds): 200 to serve the request, 429 or 418 to refuse it."""
        now = self.clock()
        while self.recent and self.recent[0] <= now - self.window:
            self.recent.popleft()
        if now < self.banned_until:
            self.counts["banned"] += 1
            return 418, max(1, math.ceil(self.banned_until - now))
        if len(self.recent) >= self.limit:
            self.refusals_since_429 += 1
            if self.refusals_since_429 > BAN_AFTER_REFUSALS:
                self.banned_until = now + BAN_SECONDS
                self.counts["banned"] += 1
                return 418, BAN_SECONDS
            self.counts["throttled"] += 1
            return 429, max(1, math.ceil(self.recent[0] + self.window - now))
        self.refusals_since_429 = 0
        self.recent.append(now)
        self.history.append(now)
        self.counts["accepted"] += 1
        return 200, 0

    def window_max(self) -> int:
        """The most requests accepted within any one window so far."""
        times = list(self.history)
        best = 0
        lo = 0
        for hi, t in enumerate(times):
            while times[lo] <= t - self.window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def describe(self) -> Dict[str, Any]:
        return {"limit": self.limit, "windowSeconds": self.window, "inWindow": len(self.recent),
                "windowMax": self.window_max(), **self.counts}


class QueryError(ValueError):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def parse_query(query: Dict[str, List[str]]) -> Tuple[Optional[str], Optional[int], Optional[int], int]:
    """(symbol, startTime, endTime, limit) of a fundingRate request, or QueryError with Binance's code."""

    def last(name: str) -> Optional[str]:
        values = query.get(name)
        return values[-1].strip() if values else None

    def millis(name: str) -> Optional[int]:
        text = last(name)
        if text is None or text == "":
            return None
        if not text.isdigit() or len(text) > 15:
            raise QueryError(-1100, f"Illegal characters found in parameter '{name}'; "
                                    "legal range is '^[0-9]{1,20}$'.")
        return int(text)

    symbol = last("symbol")
    if symbol == "":
        symbol = None
    if symbol is not None:
        symbol = symbol.upper()
    limit_text = last("limit")
    limit = DEFAULT_LIMIT
    if limit_text not in (None, ""):
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise QueryError(-1130, "Data sent for parameter 'limit' is not valid.")
        limit = int(limit_text)
    start, end = millis("startTime"), millis("endTime")
    if start is not None and end is not None and start > end:
        raise QueryError(-1130, "Data sent for parameter 'startTime' is not valid.")
    return symbol, start, end, limit
