"""How a stored symbol is compared with Binance REST premiumIndex: the health monitor's spot check and the
comparison tool use these same rules.

Binance's funding rate is a live predicted rate that moves every few seconds,
and REST and the stream are read at different moments, so each side's
timestamp (REST `time`, our `eventTime`) is part of the judgement:
  - funding rate: a difference below FUNDING_RATE_MATCH (1e-7) is a match. A
    difference larger than MAX_PLAUSIBLE_RATE_MOVE (0.0005) is "wrong" whatever
    the timestamps say (a live rate never moves that far in seconds; think "a
    price stored as a rate"). A smaller difference is "moved" (a warning) when
    the two timestamps are more than FUNDING_SPOT_SAME_MOMENT_SECONDS apart, and
    a "mismatch" (an error) when they are not: both sides stamp a value with the
    time it was published, so (nearly) equal timestamps mean the same
    publication, which must carry the same rate.
  - mark price: under FUNDING_PRICE_WARN_PERCENT fine, up to
    FUNDING_PRICE_ERROR_PERCENT a warning, above it an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from funding_state import finite_number

FUNDING_RATE_MATCH = 1e-7
MAX_PLAUSIBLE_RATE_MOVE = 0.0005


def local_event_ms(record: Mapping[str, Any]) -> Optional[float]:
    """When our value was true: the stream's event time, else when the daemon stored it."""
    event = finite_number(record.get("eventTime"))
    if event is not None:
        return event
    updated = finite_number(record.get("updatedAt"))
    return None if updated is None else updated * 1000.0


def judge_funding_rate(
    rest_rate: Optional[float], local_rate: Any, gap_seconds: Optional[float], same_moment_seconds: float
) -> str:
    """"match", "moved" (warning), "mismatch" or "wrong" (errors), or "missing"."""
    local = finite_number(local_rate)
    if rest_rate is None or local is None:
        return "missing"
    diff = abs(rest_rate - local)
    if diff < FUNDING_RATE_MATCH:
        return "match"
    if diff > MAX_PLAUSIBLE_RATE_MOVE:
        return "wrong"
    if gap_seconds is not None and gap_seconds > same_moment_seconds:
        return "moved"
    return "mismatch"


def judge_price(percent: float, warn_percent: float, error_percent: float) -> str:
    """"ok" below warn_percent, "warning" up to error_percent, "error" above it."""
    if percent < warn_percent:
        return "ok"
    if percent <= error_percent:
        return "warning"
    return "error"


@dataclass(frozen=True)
class PriceComparison:
    diff: Optional[float]  # absolute difference; None when there is no local price
    percent: Optional[float]  # of the REST price
    verdict: str  # judge_price's, or "missing"


def compare_price(rest_price: float, local_price: Any, warn_percent: float, error_percent: float) -> PriceComparison:
    local = finite_number(local_price)
    if local is None:
        return PriceComparison(None, None, "missing")
    diff = abs(rest_price - local)
    percent = diff / rest_price * 100.0
    return PriceComparison(diff, percent, judge_price(percent, warn_percent, error_percent))
