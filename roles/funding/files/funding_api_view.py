"""What the API serves, prepared once per loaded state file.

A request must not re-encode 2 000 symbols: when the StateReader hands over a
new payload, `SnapshotView` encodes every record once (all fields but
`ageSeconds`, which depends on the moment of the request), and a request
only appends the age. `StateViews` pairs the reader with the current view and
remembers state-file errors, so each one is logged and counted once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import funding_health
import funding_json
import funding_terms
from funding_health import FeedSnapshot
from funding_state import StateReader, StateSnapshot, finite_number, is_whole_number, settlement_ok

log = logging.getLogger("funding_api")

# The keys of funding_state.SYMBOL_RECORD_FIELDS an answer carries, in the seed's order (symbol first, updatedAt
# and the per-request ageSeconds last); eventTime stays internal.
RECORD_KEYS = ("markPrice", "fundingRate", "nextFundingTime", "indexPrice")
OPTIONAL_RECORD_KEYS = ("fundingIntervalHours",)
# Terms: always answered, null where the state has none (Binance publishes no cap/floor for most symbols).
TERMS_RECORD_KEYS = ("fundingRateCap", "fundingRateFloor")
OPTIONAL_TERMS_KEYS = ("fundingIntervalChangedAt",)


def json_scalar(value: Any) -> Any:
    """A value safe to encode as strict JSON: finite numbers, strings, booleans, null; anything else is null."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


def json_text(value: Any) -> str:
    """json.dumps(json_scalar(value)), several times faster for the numbers that make up a state file."""
    kind = type(value)
    if kind is float:
        return repr(value) if math.isfinite(value) else "null"
    if kind is int:
        return repr(value)
    if value is None:
        return "null"
    return funding_json.dumps(json_scalar(value)).decode("utf-8")


def age_text(now: float, updated_at: float) -> bytes:
    """Seconds since updated_at, to the millisecond, never negative (a clock step must not give -0.4 s)."""
    return repr(round(max(0.0, now - updated_at), 3)).encode("ascii")


def seconds_to_funding_text(now: float, next_funding_ms: Optional[int]) -> bytes:
    return json_text(funding_terms.seconds_to_funding(next_funding_ms, now)).encode("ascii")


class SymbolRecord:
    """One symbol, encoded once: `head` is the JSON object without its closing brace and the per-request keys.

    The per-request keys are ageSeconds and secondsToFunding; the derived fields that depend only on the record
    (funding_terms.derived_fields) are computed here, once per loaded state file.
    """

    __slots__ = ("annualized", "cap_usage", "funding_rate", "head", "interval_hours", "last_settled_ms",
                 "next_funding_ms", "symbol", "updated_at")

    def __init__(self, symbol: str, record: Mapping[str, Any]) -> None:
        self.symbol = symbol
        # validate_payload guarantees a finite number here.
        self.updated_at = float(record["updatedAt"])
        self.funding_rate = finite_number(record.get("fundingRate"))
        next_funding = record.get("nextFundingTime")
        self.next_funding_ms: Optional[int] = next_funding if is_whole_number(next_funding) else None
        self.interval_hours = funding_terms.interval_or_default(record)
        settled = record.get("lastSettlement")
        self.last_settled_ms: Optional[int] = settled["fundingTime"] if settlement_ok(settled) else None
        derived = funding_terms.derived_fields(record)
        self.annualized = derived["fundingRateAnnualized"]
        self.cap_usage = derived["capUsage"]
        parts = ['{"symbol":', json_text(symbol)]
        for key in RECORD_KEYS:
            parts.append(',"%s":%s' % (key, json_text(record.get(key))))
        for key in OPTIONAL_RECORD_KEYS:
            if key in record:
                parts.append(',"%s":%s' % (key, json_text(record[key])))
        for key in TERMS_RECORD_KEYS:
            parts.append(',"%s":%s' % (key, json_text(finite_number(record.get(key)))))
        for key in OPTIONAL_TERMS_KEYS:
            if key in record:
                parts.append(',"%s":%s' % (key, json_text(record[key])))
        for key, value in derived.items():
            parts.append(',"%s":%s' % (key, json_text(value)))
        parts.append(',"updatedAt":%s' % json_text(record["updatedAt"]))
        self.head = "".join(parts).encode("utf-8")

    def age(self, now: float) -> float:
        return max(0.0, now - self.updated_at)

    def tail(self, now: float) -> bytes:
        """The per-request keys, each with its leading comma."""
        return (b',"ageSeconds":' + age_text(now, self.updated_at) + b',"secondsToFunding":'
                + seconds_to_funding_text(now, self.next_funding_ms))

    def encode(self, now: float) -> bytes:
        return self.head + self.tail(now) + b"}"


def encode_records(records: Iterable[SymbolRecord], now: float) -> List[bytes]:
    """The pieces of a JSON list of records with their per-request keys at `now`, for one final b"".join.

    The daemon stamps every symbol of one frame with the same updatedAt, and
    symbols share funding times, so each tail is computed once per distinct
    (updatedAt, nextFundingTime) rather than per symbol.
    """
    tails: Dict[Tuple[float, Optional[int]], bytes] = {}
    parts: List[bytes] = [b"["]
    for record in records:
        key = (record.updated_at, record.next_funding_ms)
        tail = tails.get(key)
        if tail is None:
            tail = tails[key] = record.tail(now) + b"},"
        parts.append(record.head)
        parts.append(tail)
    if len(parts) > 1:
        parts[-1] = parts[-1][:-1]  # no comma after the last record
    parts.append(b"]")
    return parts


SORT_KEYS: Dict[str, Callable[[SymbolRecord], Any]] = {
    "symbol": lambda r: r.symbol,
    # Symbols without the value go last in both directions.
    "fundingRate": lambda r: (r.funding_rate is None, r.funding_rate or 0.0, r.symbol),
    "-fundingRate": lambda r: (r.funding_rate is None, -(r.funding_rate or 0.0), r.symbol),
    "fundingRateAnnualized": lambda r: (r.annualized is None, r.annualized or 0.0, r.symbol),
    "-fundingRateAnnualized": lambda r: (r.annualized is None, -(r.annualized or 0.0), r.symbol),
    "capUsage": lambda r: (r.cap_usage is None, r.cap_usage or 0.0, r.symbol),
    "-capUsage": lambda r: (r.cap_usage is None, -(r.cap_usage or 0.0), r.symbol),
}


class SnapshotView:
    """Everything derived from one state payload; immutable once built (the sort cache only grows)."""

    def __init__(self, payload: Mapping[str, Any], loads: int, loaded_at: Optional[float]) -> None:
        self.loads = loads
        self.loaded_at = loaded_at
        self.records: Dict[str, SymbolRecord] = {
            symbol: SymbolRecord(symbol, record) for symbol, record in payload["funding_state"].items()
        }
        self.count = len(self.records)
        updated = [r.updated_at for r in self.records.values()]
        self.oldest_updated_at: Optional[float] = min(updated) if updated else None
        self.newest_updated_at: Optional[float] = max(updated) if updated else None
        self.state_updated_at = finite_number(payload["updated_at"])
        status = payload["connection_status"]
        self.connected = status.get("connected") is True
        self.connection_status: Dict[str, Any] = {key: json_scalar(value) for key, value in status.items()}
        self.feed = FeedSnapshot(self.connection_status, self.count, self.oldest_updated_at, self.newest_updated_at)
        self._sorted: Dict[str, List[SymbolRecord]] = {}

    def expected_settlement(self, now: float) -> Optional[Tuple[int, int]]:
        """The latest settlement the state proves (funding_health.latest_expected_settlement)."""
        return funding_health.latest_expected_settlement(
            ((r.next_funding_ms, r.interval_hours, r.last_settled_ms) for r in self.records.values()), int(now * 1000))

    def status_number(self, key: str) -> Optional[float]:
        return finite_number(self.connection_status.get(key))

    def data_ages(self, now: float) -> Tuple[Optional[float], Optional[float]]:
        """(oldest, newest) data age in seconds; (None, None) without symbols."""
        if self.oldest_updated_at is None or self.newest_updated_at is None:
            return None, None
        return max(0.0, now - self.oldest_updated_at), max(0.0, now - self.newest_updated_at)

    def sorted_records(self, sort: str) -> List[SymbolRecord]:
        ordered = self._sorted.get(sort)
        if ordered is None:
            # Two threads may both sort once; the result is the same, so no lock is needed.
            ordered = sorted(self.records.values(), key=SORT_KEYS[sort])
            self._sorted[sort] = ordered
        return ordered


class StateViews:
    """The current SnapshotView for each request.

    One request at a time refreshes (stat, and parse plus rebuild when the file changed); requests that arrive
    meanwhile serve the view published last instead of queueing behind the parse, so what they get is at most one
    state-file write old and a rewrite never stalls the other threads.
    """

    def __init__(self, reader: StateReader, clock: Callable[[], float] = time.time) -> None:
        self.reader = reader
        self._clock = clock
        self._refresh_lock = threading.Lock()
        self._published: Tuple[Optional[SnapshotView], StateSnapshot] = (None, StateSnapshot())
        self._refreshed_once = False
        self._error_lock = threading.Lock()
        self._last_error: Optional[Tuple[str, Any]] = None
        self.load_errors = 0

    def current(self) -> Tuple[Optional[SnapshotView], StateSnapshot]:
        # Until a first refresh has finished there is nothing to serve instead, so wait for it.
        if not self._refresh_lock.acquire(blocking=not self._refreshed_once):
            return self._published
        try:
            snapshot = self.reader.snapshot()
            view = self._published[0]
            if snapshot.payload is not None and (view is None or view.loads < snapshot.loads):
                view = SnapshotView(snapshot.payload, snapshot.loads, snapshot.loaded_at)
                log.debug("loaded state file: %d symbols (load #%d)", view.count, view.loads)
            self._published = (view, snapshot)
            self._refreshed_once = True
        finally:
            self._refresh_lock.release()
        if snapshot.error is not None or self._last_error is not None:
            self._note_error(snapshot, view)
        return view, snapshot

    def _note_error(self, snapshot: StateSnapshot, view: Optional[SnapshotView]) -> None:
        # One log line and one count per distinct failure (a missing file is one failure until it changes).
        key = (snapshot.error, snapshot.stat_key) if snapshot.error is not None else None
        with self._error_lock:
            if key == self._last_error:
                return
            self._last_error = key
            if key is None:
                log.info("state file %s is readable again", self.reader.path)
                return
            self.load_errors += 1
        if view is not None:
            log.warning("%s; serving the last good state (%d symbols)", snapshot.error, view.count)
        else:
            log.warning("%s; no state to serve yet", snapshot.error)
