"""What the API serves, prepared once per state file version, off the request path when it can be.

A request must not re-encode 2 000 symbols: `StateViews.refresh` (called by
each worker's `ViewRefresher` thread every FUNDING_API_STATE_POLL_MS) stats the
file and, when it changed, decodes it with orjson and builds a `SnapshotView`
in which every record is already encoded (all fields but `ageSeconds`, which
depends on the moment of the request); the new view is published by one
attribute assignment.

A request reads `StateViews.current()`. With one SO_REUSEPORT socket per
worker, a client's consecutive connections land on different workers, and a
worker whose refresher had not run yet would answer with the state another
worker had already replaced: a price would go back. So no worker may answer
with an older file than another already serves. Each worker announces the
version it serves in a slot of a shared file (funding_api_versions) before it
serves it; a request whose worker's view matches every slot takes the view
(one 32-byte read, no lock, no stat, no parse). Otherwise it refreshes (or
waits for the refresh under way), which stats the file and parses it only when
it was replaced after the refresher's last look, before it answers. Without the shared slots (tests,
a single process) every request stats. State-file errors are remembered, so
each one is logged and counted once.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import funding_health
import funding_json
import funding_terms
import funding_universe
from funding_api_versions import ServedVersions, token_of
from funding_health import FeedSnapshot
from funding_log import event
from funding_state import (
    StateReader,
    StateSnapshot,
    delisted_of,
    finite_number,
    is_whole_number,
    settlement_ok,
    universe_of,
)

log = logging.getLogger("funding_api")

# The keys of funding_state.SYMBOL_RECORD_FIELDS an answer carries, in the seed's order (symbol first, updatedAt
# and the per-request ageSeconds last); eventTime stays internal.
RECORD_KEYS = ("markPrice", "fundingRate", "nextFundingTime", "indexPrice")
OPTIONAL_RECORD_KEYS = ("fundingIntervalHours", "contractType", "underlyingType")
# Terms: always answered, null where the state has none (Binance publishes no cap/floor for most symbols).
TERMS_RECORD_KEYS = ("fundingRateCap", "fundingRateFloor")
OPTIONAL_TERMS_KEYS = ("fundingIntervalChangedAt",)
# Values orjson encodes as themselves (a non-finite float becomes null, which is what the API promises).
_PLAIN_TYPES = frozenset((float, int, str, bool, type(None)))


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
    (funding_terms.derived_fields) are computed once per loaded state file and are part of `head`.
    """

    __slots__ = ("annualized", "cap_usage", "contract_type", "funding_rate", "head", "interval_hours",
                 "last_settled_ms", "next_funding_ms", "symbol", "underlying_type", "updated_at")

    def __init__(
        self,
        symbol: str,
        updated_at: float,
        funding_rate: Optional[float],
        head: bytes,
        *,
        contract_type: Optional[str] = None,
        underlying_type: Optional[str] = None,
        next_funding_ms: Optional[int] = None,
        interval_hours: int = funding_terms.DEFAULT_INTERVAL_HOURS,
        annualized: Optional[float] = None,
        cap_usage: Optional[float] = None,
        last_settled_ms: Optional[int] = None,
    ) -> None:
        self.symbol = symbol
        self.updated_at = updated_at
        self.funding_rate = funding_rate
        self.head = head
        self.contract_type = contract_type
        self.underlying_type = underlying_type
        self.next_funding_ms = next_funding_ms
        self.interval_hours = interval_hours
        self.annualized = annualized
        self.cap_usage = cap_usage
        self.last_settled_ms = last_settled_ms

    def age(self, now: float) -> float:
        return max(0.0, now - self.updated_at)

    def tail(self, now: float) -> bytes:
        """The per-request keys, each with its leading comma."""
        return (b',"ageSeconds":' + age_text(now, self.updated_at) + b',"secondsToFunding":'
                + seconds_to_funding_text(now, self.next_funding_ms))

    def encode(self, now: float) -> bytes:
        return self.head + self.tail(now) + b"}"


def _seed_document(symbol: str, record: Mapping[str, Any]) -> Dict[str, Any]:
    """The record's fields in the seed's order, each a JSON scalar (validate_payload checked prices and updatedAt)."""
    get = record.get
    document = {
        "symbol": symbol,
        "markPrice": get("markPrice"),
        "fundingRate": get("fundingRate"),
        "nextFundingTime": get("nextFundingTime"),
        "indexPrice": get("indexPrice"),
    }
    for key in OPTIONAL_RECORD_KEYS:
        if key in record:
            document[key] = record[key]
    for key in TERMS_RECORD_KEYS:
        document[key] = finite_number(get(key))
    for key in OPTIONAL_TERMS_KEYS:
        if key in record:
            document[key] = record[key]
    document.update(funding_terms.derived_fields(record))
    document["updatedAt"] = record["updatedAt"]
    plain = _PLAIN_TYPES
    if any(type(value) not in plain for value in document.values()):
        document = {key: json_scalar(value) for key, value in document.items()}
    return document


def _encode_head_exactly(document: Mapping[str, Any]) -> bytes:
    # The standard library's way, for what orjson refuses (an integer beyond 64 bits).
    parts = ['{"symbol":', json_text(document["symbol"])]
    parts.extend(',"%s":%s' % (key, json_text(value)) for key, value in document.items() if key != "symbol")
    return "".join(parts).encode("utf-8")


_RECORD_SEPARATOR = b',{"symbol":'


def encode_heads(documents: List[Dict[str, Any]]) -> List[bytes]:
    """Each document's JSON without its closing brace, from ONE orjson call over the list.

    The list encodes as [{"symbol":...},{"symbol":...}]; inside a JSON string every quote is escaped, so the bytes
    `,{"symbol":` only ever occur between two records and splitting on them is exact (checked by the count anyway).
    """
    try:
        encoded = funding_json.dumps_nulling(documents)
    except ValueError:
        return [_encode_head_exactly(d) for d in documents]
    parts = encoded[1:-1].split(_RECORD_SEPARATOR)
    if len(parts) != len(documents) or not documents:
        return [_encode_head_exactly(d) for d in documents]
    prefix = _RECORD_SEPARATOR[1:]
    heads = [prefix + part[:-1] for part in parts]
    heads[0] = parts[0][:-1]
    return heads


def build_records(
    funding_state: Mapping[str, Mapping[str, Any]],
    previous: Optional[Tuple[Mapping[str, Mapping[str, Any]], Mapping[str, SymbolRecord]]] = None,
) -> Dict[str, SymbolRecord]:
    """Every symbol of a validated state as a SymbolRecord (about 1.5 ms for 1 000 symbols), in the state's order.

    `previous` is the (funding_state, records) of the view before: a symbol whose entry is the very object it had
    there keeps its record object (a record depends on its entry alone; StateReader hands an unchanged entry over as
    the previous object), so a file in which 25 of 1 000 symbols changed costs 25 records, and consumers can tell an
    unchanged record by identity.
    """
    kept: Dict[str, SymbolRecord] = {}
    if previous is not None:
        old_state, old_records = previous
        old_entry, old_record = old_state.get, old_records.get
        for symbol, entry in funding_state.items():
            if old_entry(symbol) is entry:
                record = old_record(symbol)
                if record is not None:
                    kept[symbol] = record
    if len(kept) == len(funding_state):
        return kept
    documents = [_seed_document(symbol, entry) for symbol, entry in funding_state.items() if symbol not in kept]
    heads = encode_heads(documents)
    built: Dict[str, SymbolRecord] = {}
    isfinite = math.isfinite
    for document, head in zip(documents, heads):
        rate = document["fundingRate"]
        if type(rate) is not float or not isfinite(rate):
            rate = finite_number(rate)
        symbol = document["symbol"]
        contract_type = document.get("contractType")
        underlying_type = document.get("underlyingType")
        entry = funding_state[symbol]
        next_funding = document["nextFundingTime"]
        settled = entry.get("lastSettlement")
        built[symbol] = SymbolRecord(
            symbol,
            float(document["updatedAt"]),
            rate,
            head,
            contract_type=contract_type if isinstance(contract_type, str) else None,
            underlying_type=underlying_type if isinstance(underlying_type, str) else None,
            next_funding_ms=next_funding if is_whole_number(next_funding) else None,
            interval_hours=funding_terms.interval_or_default(entry),
            annualized=document["fundingRateAnnualized"],
            cap_usage=document["capUsage"],
            last_settled_ms=settled["fundingTime"] if settlement_ok(settled) else None,
        )
    if not kept:
        return built
    return {symbol: kept.get(symbol) or built[symbol] for symbol in funding_state}


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
    # Symbols without a funding rate go last in both directions.
    "fundingRate": lambda r: (r.funding_rate is None, r.funding_rate or 0.0, r.symbol),
    "-fundingRate": lambda r: (r.funding_rate is None, -(r.funding_rate or 0.0), r.symbol),
    "fundingRateAnnualized": lambda r: (r.annualized is None, r.annualized or 0.0, r.symbol),
    "-fundingRateAnnualized": lambda r: (r.annualized is None, -(r.annualized or 0.0), r.symbol),
    "capUsage": lambda r: (r.cap_usage is None, r.cap_usage or 0.0, r.symbol),
    "-capUsage": lambda r: (r.cap_usage is None, -(r.cap_usage or 0.0), r.symbol),
}


class SnapshotView:
    """Everything derived from one state payload; immutable once built (the sort cache only grows)."""

    def __init__(
        self,
        payload: Mapping[str, Any],
        loads: int,
        loaded_at: Optional[float],
        previous: Optional["SnapshotView"] = None,
    ) -> None:
        """`previous`: the view this one replaces, whose unchanged records are taken over (no reference is kept)."""
        self.loads = loads
        self.loaded_at = loaded_at
        self.funding_state: Mapping[str, Mapping[str, Any]] = payload["funding_state"]
        self.records: Dict[str, SymbolRecord] = build_records(
            self.funding_state, (previous.funding_state, previous.records) if previous is not None else None
        )
        self.count = len(self.records)
        updated = [r.updated_at for r in self.records.values()]
        self.oldest_updated_at: Optional[float] = min(updated) if updated else None
        self.newest_updated_at: Optional[float] = max(updated) if updated else None
        self.state_updated_at = finite_number(payload["updated_at"])
        status = payload["connection_status"]
        self.connected = status.get("connected") is True
        self.connection_status: Dict[str, Any] = {key: json_scalar(value) for key, value in status.items()}
        self._sorted: Dict[str, List[SymbolRecord]] = {}
        # The universe (issue 12): None while the daemon has not fetched one.
        self.universe = universe_of(payload)
        self.feed = FeedSnapshot(
            self.connection_status, self.count, self.oldest_updated_at, self.newest_updated_at,
            universe=frozenset(self.universe) if self.universe is not None else None,
            updated_at={symbol: record.updated_at for symbol, record in self.records.items()},
        )
        self.delisted = delisted_of(payload)
        self.contract_types = frozenset(funding_universe.KNOWN_CONTRACT_TYPES) | frozenset(
            c.get("contractType") for c in (self.universe or {}).values() if isinstance(c.get("contractType"), str))
        self.underlying_types = frozenset(funding_universe.KNOWN_UNDERLYING_TYPES) | frozenset(
            c.get("underlyingType") for c in (self.universe or {}).values()
            if isinstance(c.get("underlyingType"), str) and c.get("underlyingType"))

    @property
    def expected_count(self) -> Optional[int]:
        return len(self.universe) if self.universe is not None else None

    def missing_symbols(self, now: float, stale_seconds: float) -> List[str]:
        """Universe symbols without data newer than stale_seconds (sorted); [] without a universe."""
        return self.feed.missing_symbols(now, stale_seconds)

    def tradifi_count(self) -> int:
        return sum(1 for c in (self.universe or {}).values()
                   if c.get("contractType") == funding_universe.TRADIFI_CONTRACT_TYPE)

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
    """The current SnapshotView, replaced by `refresh` when the state file changed.

    `current()` is what a request calls: the published (view, snapshot) pair, refreshed first unless every worker
    serves the same file (see the module's docstring).
    `published()` is the pair as it stands. `refresh()` is called by a worker's ViewRefresher thread and by
    `current()`, serialized by a lock; the first refresh happens in the constructor, so a view exists before the
    first request.
    """

    def __init__(
        self,
        reader: StateReader,
        on_load: Optional[Callable[[], None]] = None,
        on_error: Optional[Callable[[], None]] = None,
        versions: Optional[ServedVersions] = None,
    ) -> None:
        self.reader = reader
        self.on_load = on_load
        self.on_error = on_error
        self.versions = versions
        # The published pair with what the shared version slots hold when every worker serves its file (None without
        # slots): one attribute, so a request never pairs a view with another view's expectation.
        self._published: Tuple[Tuple[Optional[SnapshotView], StateSnapshot], Optional[bytes]] = (
            (None, StateSnapshot()), None)
        self._last_error: Optional[Tuple[str, Any]] = None
        self._refresh_lock = threading.Lock()
        self.load_errors = 0
        self.refresh()

    def current(self) -> Tuple[Optional[SnapshotView], StateSnapshot]:
        published, expected = self._published
        if expected is not None and self.versions.all_serve(expected):  # type: ignore[union-attr]
            return published
        self.refresh()  # the reader's own stat tells whether the file changed
        return self._published[0]

    def published(self) -> Tuple[Optional[SnapshotView], StateSnapshot]:
        return self._published[0]

    def refresh(self) -> bool:
        """Look at the file once; True when a new view was published."""
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> bool:
        snapshot = self.reader.snapshot()
        published = self._published[0]
        view = published[0]
        built = False
        if snapshot.payload is not None and (view is None or view.loads < snapshot.loads):
            view = SnapshotView(snapshot.payload, snapshot.loads, snapshot.loaded_at, previous=view)
            built = True
            log.debug("loaded state file: %d symbols (load #%d)", view.count, view.loads)
        if built or published[1].error != snapshot.error or published[1].stat_key != snapshot.stat_key:
            expected = None
            if self.versions is not None:
                token = token_of(snapshot.stat_key)
                self.versions.announce(token)  # before any request can serve it
                expected = self.versions.expected(token)
            self._published = ((view, snapshot), expected)
        if built and self.on_load is not None:
            self.on_load()
        if snapshot.error is not None or self._last_error is not None:
            self._note_error(snapshot, view)
        return built

    def _note_error(self, snapshot: StateSnapshot, view: Optional[SnapshotView]) -> None:
        # One log line and one count per distinct failure (a missing file is one failure until it changes).
        key = (snapshot.error, snapshot.stat_key) if snapshot.error is not None else None
        if key == self._last_error:
            return
        self._last_error = key
        if key is None:
            log.info("state file %s is readable again", self.reader.path,
                     extra=event("state_file_recovered", path=self.reader.path))
            return
        self.load_errors += 1
        if self.on_error is not None:
            self.on_error()
        if view is not None:
            log.warning("%s; serving the last good state (%d symbols)", snapshot.error, view.count,
                        extra=event("state_file_error", path=self.reader.path, error=snapshot.error,
                                    serving=view.count))
        else:
            log.warning("%s; no state to serve yet", snapshot.error,
                        extra=event("state_file_error", path=self.reader.path, error=snapshot.error, serving=0))


class ViewRefresher(threading.Thread):
    """Calls views.refresh() every `interval` seconds in the background; a failure is logged, never fatal."""

    def __init__(self, views: StateViews, interval: float) -> None:
        super().__init__(name="state-refresher", daemon=True)
        self.views = views
        self.interval = interval
        self.stop_event = threading.Event()

    def run(self) -> None:
        wait = self.stop_event.wait
        refresh = self.views.refresh
        while not wait(self.interval):
            try:
                refresh()
            except Exception:
                log.exception("refreshing the state view failed; serving the previous one",
                              extra=event("refresh_failed"))
