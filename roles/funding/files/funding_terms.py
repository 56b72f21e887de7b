"""A symbol's funding terms and what derives from them: pure functions, no I/O.

Terms come from REST `GET /fapi/v1/fundingInfo`, which lists only the symbols whose
cap, floor or interval Binance adjusted; every other symbol funds every 8 hours and
has no published bound (cap and floor are null). The stream's `T` (next funding time)
is the second witness of the interval: when `T` advances across a settlement, the
spacing between the old and the new `T` is the interval in force.

Derived fields (computed by the API when it answers, never stored):

    fundingRateAnnualized = fundingRate × 24 / fundingIntervalHours × 365
    fundingRateHourly     = fundingRate / fundingIntervalHours
    capUsage              = fundingRate / fundingRateCap    (fundingRate > 0; null without a cap)
                            fundingRate / fundingRateFloor  (fundingRate < 0; null without a floor)
                            0 for a zero rate when a bound is known
    secondsToFunding      = max(0, nextFundingTime / 1000 - now)

Binance publishes rates with 8 decimals, so the products above have at most 12
decimals: rounding to 12 decimals gives the float nearest the exact decimal result
(0.0001 at 8 h is 0.1095, not 0.10949999999999999).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from funding_state import finite_number, is_whole_number

DEFAULT_INTERVAL_HOURS = 8
KNOWN_INTERVAL_HOURS = (1, 2, 4, 8)
HOUR_MS = 3_600_000
DERIVED_DECIMALS = 12
# Binance's fundingTime is not always an exact hour (…005 ms seen): spacing within this of whole hours counts.
SPACING_TOLERANCE_MS = 1_000
MAX_ABS_BOUND = 1.0
SYMBOL_PATTERN = re.compile(r"[A-Z0-9_]{1,40}")
DECIMAL_PATTERN = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?", re.ASCII)


@dataclass(frozen=True)
class FundingTerms:
    interval_hours: int
    cap: Optional[float]  # adjustedFundingRateCap; None where Binance publishes none
    floor: Optional[float]  # adjustedFundingRateFloor (negative); None where Binance publishes none


DEFAULT_TERMS = FundingTerms(DEFAULT_INTERVAL_HOURS, None, None)


def _bound(value: Any) -> Optional[float]:
    if isinstance(value, str):
        if len(value) > 40 or not DECIMAL_PATTERN.fullmatch(value.strip()):
            return None
        number = finite_number(float(value))
    else:
        number = finite_number(value)
    if number is None or abs(number) > MAX_ABS_BOUND:
        return None
    return number


def parse_funding_info(payload: Any) -> Tuple[Dict[str, FundingTerms], int]:
    """(symbol -> terms, how many entries were unusable) from a fundingInfo body.

    An entry needs a valid symbol and an interval of 1 to 24 hours; a cap that is not a
    non-negative number or a floor that is not a non-positive number is kept as null.
    Raises ValueError when the body is not a list, or when it has entries but none usable
    (a garbage answer must not wipe the last good terms).
    """
    if not isinstance(payload, list):
        raise ValueError("fundingInfo is %s, not a list" % type(payload).__name__)
    terms: Dict[str, FundingTerms] = {}
    bad = 0
    for entry in payload:
        if not isinstance(entry, dict):
            bad += 1
            continue
        symbol = entry.get("symbol")
        hours = entry.get("fundingIntervalHours")
        if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
            bad += 1
            continue
        if not is_whole_number(hours) or not 1 <= hours <= 24:
            bad += 1
            continue
        cap = _bound(entry.get("adjustedFundingRateCap"))
        floor = _bound(entry.get("adjustedFundingRateFloor"))
        terms[symbol] = FundingTerms(hours, cap if cap is None or cap >= 0 else None,
                                     floor if floor is None or floor <= 0 else None)
    if payload and not terms:
        raise ValueError("fundingInfo has %d entries and not one usable" % len(payload))
    return terms, bad


def terms_for(symbol: str, terms: Optional[Mapping[str, FundingTerms]]) -> Optional[FundingTerms]:
    """The terms of a symbol from a fundingInfo map (absent: Binance's defaults); None when no map is known yet."""
    if terms is None:
        return None
    return terms.get(symbol, DEFAULT_TERMS)


def interval_from_spacing(previous_next_ms: Any, next_ms: Any, event_ms: Any) -> Optional[int]:
    """The interval (hours) a settlement revealed, or None when the spacing proves nothing.

    `previous_next_ms` is the next funding time a symbol had, `next_ms` the one a new item
    carries and `event_ms` that item's event time. Only the first item after the settlement
    is evidence: within an hour of it (the shortest interval) the new `T` is the very next
    funding time, so `T' - T` is the interval, provided it is a whole number of hours Binance
    uses. A daemon that was away across several settlements sees a multiple and says nothing.
    """
    if not (is_whole_number(previous_next_ms) and is_whole_number(next_ms) and is_whole_number(event_ms)):
        return None
    if previous_next_ms <= 0 or next_ms <= previous_next_ms or event_ms < previous_next_ms:
        return None
    if event_ms - previous_next_ms >= HOUR_MS:
        return None
    spacing = next_ms - previous_next_ms
    hours = round(spacing / HOUR_MS)
    if hours not in KNOWN_INTERVAL_HOURS or abs(spacing - hours * HOUR_MS) > SPACING_TOLERANCE_MS:
        return None
    return hours


def _round(value: float) -> float:
    return round(value, DERIVED_DECIMALS)


def interval_or_default(record: Mapping[str, Any]) -> int:
    hours = record.get("fundingIntervalHours")
    return hours if is_whole_number(hours) and hours > 0 else DEFAULT_INTERVAL_HOURS


def annualized(rate: Optional[float], interval_hours: int) -> Optional[float]:
    return None if rate is None else _round(rate * 24 * 365 / interval_hours)


def hourly(rate: Optional[float], interval_hours: int) -> Optional[float]:
    return None if rate is None else _round(rate / interval_hours)


def cap_usage(rate: Optional[float], cap: Optional[float], floor: Optional[float]) -> Optional[float]:
    if rate is None:
        return None
    if rate > 0:
        return _round(rate / cap) if cap else None
    if rate < 0:
        return _round(rate / floor) if floor else None
    return 0.0 if cap or floor else None


def seconds_to_funding(next_funding_ms: Any, now: float) -> Optional[float]:
    if not is_whole_number(next_funding_ms) or next_funding_ms <= 0:
        return None
    return round(max(0.0, next_funding_ms / 1000.0 - now), 3)


def derived_fields(record: Mapping[str, Any]) -> Dict[str, Optional[float]]:
    """The derived fields that do not depend on the moment of the request, in answer order."""
    rate = finite_number(record.get("fundingRate"))
    hours = interval_or_default(record)
    return {
        "fundingRateAnnualized": annualized(rate, hours),
        "fundingRateHourly": hourly(rate, hours),
        "capUsage": cap_usage(rate, finite_number(record.get("fundingRateCap")),
                              finite_number(record.get("fundingRateFloor"))),
    }
