"""The one definition of the feed's health: healthy, degraded or unhealthy, and why.

A pure function of (what the state file says, now, the thresholds), used by the
API's /funding/health and /metrics and by the health monitor, so that both give
the same verdict on the same state at the same moment.

Unhealthy, each reason starting with a stable code:
  state_file:    the state file is missing, unreadable or corrupt (the API keeps serving the last good state)
  disconnected:  the daemon has been without a WebSocket for longer than FUNDING_DISCONNECT_GRACE_SECONDS
  no_symbols:    there is no symbol at all
  stale:         the newest symbol is older than FUNDING_STALE_SECONDS
  no_data:       no market data for longer than FUNDING_MAX_MESSAGE_AGE_SECONDS
  coverage:      fewer than 99 % of the universe's perpetuals (exchangeInfo's TRADING perpetuals, as the daemon
                 last fetched them) have data fresher than FUNDING_STALE_SECONDS, for longer than
                 FUNDING_COVERAGE_GRACE_SECONDS (counted from the daemon's `coverage_low_since`, and never within
                 that grace of the daemon's start)
Degraded (still serving; warnings):
  reconnecting:  disconnected for less than the grace: a start, a drop, Binance's 24 h close
  stale_symbols: some symbols are older than FUNDING_STALE_SECONDS while the newest is fresh
  universe_unknown: the daemon has run longer than FUNDING_COVERAGE_GRACE_SECONDS without a contract universe
                 (REST exchangeInfo unreachable since its first start): it serves what the streams bring and
                 coverage cannot be measured

The daemon marks its start as the beginning of a disconnect (`disconnected_since`), so a
just-restarted daemon gets the same grace as a reconnect. "Market data" is the newest of
`last_message_time` (the last accepted markPriceUpdate) and the newest symbol's `updatedAt`:
a daemon that has just restarted has not received a message yet, but the records it loaded
from its previous file are as fresh as they say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from funding_state import age_seconds, disconnected_for, finite_number, universe_of

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
COVERAGE_MIN_FRACTION = 0.99
MISSING_NAMES_SHOWN = 20


@dataclass(frozen=True)
class HealthRules:
    stale_seconds: float = 180.0
    disconnect_grace_seconds: float = 15.0
    max_data_age_seconds: float = 60.0
    coverage_grace_seconds: float = 120.0

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "HealthRules":
        """From funding_settings values (FUNDING_STALE_SECONDS, ..._DISCONNECT_GRACE_..., ..._MAX_MESSAGE_AGE_...,
        ..._COVERAGE_GRACE_...)."""
        return cls(
            stale_seconds=values["FUNDING_STALE_SECONDS"],
            disconnect_grace_seconds=values["FUNDING_DISCONNECT_GRACE_SECONDS"],
            max_data_age_seconds=values["FUNDING_MAX_MESSAGE_AGE_SECONDS"],
            coverage_grace_seconds=values["FUNDING_COVERAGE_GRACE_SECONDS"],
        )


@dataclass(frozen=True)
class FeedSnapshot:
    """What health needs from one state payload (the API builds it once per loaded file)."""

    connection_status: Mapping[str, Any]
    symbol_count: int
    oldest_updated_at: Optional[float]
    newest_updated_at: Optional[float]
    universe: Optional[FrozenSet[str]] = None  # the daemon's contract universe; None while it has none
    updated_at: Optional[Mapping[str, float]] = None  # symbol -> updatedAt, for coverage

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "FeedSnapshot":
        """From a validated state payload (funding_state.validate_payload)."""
        updated = {s: finite_number(r.get("updatedAt")) for s, r in payload["funding_state"].items()}
        times = {s: t for s, t in updated.items() if t is not None}
        universe = universe_of(payload)
        return cls(
            connection_status=payload["connection_status"],
            symbol_count=len(payload["funding_state"]),
            oldest_updated_at=min(times.values()) if times else None,
            newest_updated_at=max(times.values()) if times else None,
            universe=frozenset(universe) if universe is not None else None,
            updated_at=times,
        )

    def missing_symbols(self, now: float, stale_seconds: float) -> List[str]:
        """Universe symbols without data newer than stale_seconds, sorted; [] without a universe."""
        if self.universe is None:
            return []
        cutoff = now - stale_seconds
        updated = self.updated_at or {}
        return sorted(s for s in self.universe if updated.get(s, -math.inf) < cutoff)


@dataclass(frozen=True)
class HealthVerdict:
    status: str
    reasons: Tuple[str, ...]  # why unhealthy
    warnings: Tuple[str, ...]  # why degraded
    disconnected_for: Optional[float]  # None while connected; math.inf when the daemon never said since when
    reconnecting: bool  # disconnected, within the grace
    data_age: Optional[float]  # seconds since the last market data; None if there never was any
    oldest_age: Optional[float]
    newest_age: Optional[float]
    expected_count: Optional[int] = None  # symbols in the universe; None while it is unknown
    missing: Tuple[str, ...] = ()  # universe symbols without fresh data, sorted

    @property
    def healthy(self) -> bool:
        """Serving and fit for use: healthy or degraded (HTTP 200)."""
        return self.status != UNHEALTHY


def judge(feed: Optional[FeedSnapshot], state_error: Optional[str], now: float, rules: HealthRules) -> HealthVerdict:
    """The verdict on the last good state `feed` (None: never loaded) when the current file gave `state_error`."""
    reasons = []
    warnings = []
    status = feed.connection_status if feed is not None else {}
    oldest = age_seconds(feed.oldest_updated_at, now) if feed is not None else None
    newest = age_seconds(feed.newest_updated_at, now) if feed is not None else None
    message_age = age_seconds(status.get("last_message_time"), now)
    known = [a for a in (message_age, newest) if a is not None]
    data_age = min(known) if known else None

    if state_error is not None:
        served = "serving the last good state" if feed is not None else "no state to serve"
        reasons.append("state_file: %s; %s" % (state_error, served))
    down_for = disconnected_for(status, now) if feed is not None else None
    reconnecting = down_for is not None and down_for <= rules.disconnect_grace_seconds
    if down_for is not None and not reconnecting:
        since = "" if down_for == math.inf else " for %.0f s" % down_for
        reasons.append("disconnected: the daemon reports its WebSocket disconnected%s" % since)
    if feed is None or feed.symbol_count == 0:
        reasons.append("no_symbols: there are no symbols to serve")
    if newest is not None and newest > rules.stale_seconds:
        reasons.append("stale: newest data is %.1f s old (threshold %g s)" % (newest, rules.stale_seconds))
    if data_age is not None and data_age > rules.max_data_age_seconds:
        reasons.append(
            "no_data: no market data for %.0f s (threshold %g s)" % (data_age, rules.max_data_age_seconds)
        )
    expected = len(feed.universe) if feed is not None and feed.universe is not None else None
    missing = feed.missing_symbols(now, rules.stale_seconds) if feed is not None else []
    coverage = coverage_reason(
        expected, missing, finite_number(status.get("coverage_low_since")),
        daemon_started_at=finite_number(status.get("daemon_started_at")), now=now,
        grace_seconds=rules.coverage_grace_seconds)
    if coverage is not None:
        reasons.append(coverage)
    grace, stale = rules.disconnect_grace_seconds, rules.stale_seconds
    if reconnecting:
        warnings.append("reconnecting: disconnected %.0f s ago (grace %g s)" % (down_for, grace))
    if oldest is not None and oldest > stale and not (newest is not None and newest > stale):
        warnings.append("stale_symbols: the oldest data is %.1f s old (threshold %g s)" % (oldest, stale))
    started = finite_number(status.get("daemon_started_at"))
    if (feed is not None and expected is None and status.get("universe_known") is False and started is not None
            and now - started > rules.coverage_grace_seconds):
        warnings.append("universe_unknown: the daemon has no contract universe (REST exchangeInfo unreachable since "
                        "it started %.0f s ago); it serves what the streams bring, coverage unknown" % (now - started))

    verdict = UNHEALTHY if reasons else DEGRADED if warnings else HEALTHY
    return HealthVerdict(
        status=verdict,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        disconnected_for=down_for,
        reconnecting=reconnecting,
        data_age=data_age,
        oldest_age=oldest,
        newest_age=newest,
        expected_count=expected,
        missing=tuple(missing),
    )


def coverage_reason(
    expected: Optional[int],
    missing: List[str],
    low_since: Optional[float],
    *,
    daemon_started_at: Optional[float],
    now: float,
    grace_seconds: float,
) -> Optional[str]:
    """The "coverage:" reason, or None while coverage is fine, unknown, or low for no longer than the grace.

    Coverage is low when fewer than 99 % of the universe's symbols have fresh data; it is a reason only after it
    stayed low (since `low_since`, as the daemon tracks it) for longer than `grace_seconds`, and no earlier than
    `grace_seconds` after the daemon started.
    """
    if not expected:
        return None
    served = expected - len(missing)
    if served >= expected * COVERAGE_MIN_FRACTION or low_since is None:
        return None
    if now - low_since <= grace_seconds:
        return None
    if daemon_started_at is not None and now - daemon_started_at <= grace_seconds:
        return None
    shown = ", ".join(missing[:MISSING_NAMES_SHOWN]) + (", ..." if len(missing) > MISSING_NAMES_SHOWN else "")
    return "coverage: %d of %d perpetuals served (%.1f %%, under %g %% for %.0f s); missing: %s" % (
        served, expected, 100.0 * served / expected, COVERAGE_MIN_FRACTION * 100, now - low_since, shown)


# --------------------------------------------------------------------------- settlement history

HOUR_MS = 3_600_000
HISTORY_LAG_INTERVALS = 2  # the history lags when it misses more than this many of the latest symbol's intervals


@dataclass(frozen=True)
class HistoryLag:
    """How far the history is behind the latest settlement the live state proves has happened."""

    expected_ms: Optional[int]  # the latest settlement that must exist
    last_settlement_ms: Optional[int]  # the newest one stored
    lag_seconds: Optional[float]  # 0 when up to date; None when nothing is expected yet
    threshold_seconds: Optional[float]  # HISTORY_LAG_INTERVALS x that settlement's interval
    lagging: bool


def latest_expected_settlement(
    records: "Iterable[Tuple[Optional[int], int, Optional[int]]]", now_ms: int
) -> Optional[Tuple[int, int]]:
    """(fundingTime ms, interval hours) of the latest settlement the state proves, from each symbol's
    (nextFundingTime, fundingIntervalHours, lastSettlement.fundingTime): the last one the daemon saw, or the
    funding time before the next one (nextFundingTime minus the interval), whichever is later and not in the future.
    """
    best: Optional[Tuple[int, int]] = None
    for next_ms, hours, seen_ms in records:
        candidates = [seen_ms] if seen_ms is not None else []
        if next_ms is not None and next_ms > 0:
            candidates.append(next_ms - hours * HOUR_MS)
        for candidate in candidates:
            if candidate <= now_ms and (best is None or candidate > best[0]):
                best = (candidate, hours)
    return best


def judge_history_lag(expected: Optional[Tuple[int, int]], last_settlement_ms: Optional[int]) -> HistoryLag:
    """The history lags when its newest settlement is more than two intervals behind the expected one."""
    if expected is None:
        return HistoryLag(None, last_settlement_ms, None, None, False)
    expected_ms, hours = expected
    threshold = HISTORY_LAG_INTERVALS * hours * 3600.0
    if last_settlement_ms is None:
        # Nothing recorded yet (a first run still backfilling, or a backfill of 0 days): no lag to measure.
        return HistoryLag(expected_ms, None, None, threshold, False)
    lag = max(0.0, (expected_ms - last_settlement_ms) / 1000.0)
    return HistoryLag(expected_ms, last_settlement_ms, round(lag, 3), threshold, lag > threshold)
