"""The state-file contract shared by every binance-funding program.

The daemon is the only writer; the API, the health monitor and the comparison
tool are readers. The layout is the seed design's, with fields only added:

    {
      "funding_state": {
        "BTCUSDT": {"fundingRate": 0.0001, "markPrice": 91725.8, "indexPrice": 91769.8,
                    "nextFundingTime": 1764748800000, "updatedAt": 1764724344.15,
                    "eventTime": 1764724344000, "fundingIntervalHours": 8},
        ...
      },
      "connection_status": {"connected": true, "last_connected_time": ..., "reconnect_attempts": 0,
                            "messages_received": 36936, "last_message_time": ..., ...},
      "updated_at": 1764724344.15,
      "daemon_pid": 2580526,
      "universe": {"fetched_at": 1764724300.2, "symbols": {"XAUUSDT": {"contractType": "TRADIFI_PERPETUAL",
                   "underlyingType": "COMMODITY", "quoteAsset": "USDT", "marginAsset": "USDT"}, ...}},
      "delisted": {"OLDUSDT": 1764700000.0}
    }

Added keys (every reader must tolerate their absence: older writers and the
seed's file have none of them):
- per symbol: `contractType`, `underlyingType` (from the universe, once known);
- `universe`: the last good exchangeInfo universe (TRADING perpetuals) and when
  it was fetched; absent or null until the daemon has fetched one;
- `delisted`: symbol -> epoch seconds when it left the universe (or expired
  without a universe); entries are kept DELISTED_KEEP_SECONDS (7 days);
- connection_status: the universe, coverage, filtering and subscription
  counters listed in CONNECTION_STATUS_DEFAULTS below.

Writes are atomic (temp file in the same directory, fsync, rename), so a
reader sees either the old file or the new one, never a mix.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import funding_json

DEFAULT_STATE_FILE = "/var/lib/binance-funding/.funding_state.json"
STATE_FILE_MODE = 0o644

class StateFileError(Exception):
    """The state file is missing, unreadable or does not follow the contract."""


# The symbol record: every key, in the seed's order first, with its kind. "number" values are finite numbers
# (never booleans) or null; "integer" values are whole numbers (epoch milliseconds, hours). updatedAt (epoch
# seconds when the daemon stored the value) is the one required key; readers serve an integer that is not one
# as null rather than refuse the whole file.
NUMBER = "number"
INTEGER = "integer"
SETTLEMENT = "settlement"  # {"fundingTime": ms, "fundingRate": number, "markPrice": number|null, "eventTime": ms}
TEXT = "text"  # an upper-case name such as TRADIFI_PERPETUAL (letters, digits, underscores)
TEXT_PATTERN = re.compile(r"[A-Z0-9_]{1,40}")


@dataclass(frozen=True)
class RecordField:
    key: str
    kind: str
    meaning: str
    required: bool = False


SYMBOL_RECORD_FIELDS: Tuple[RecordField, ...] = (
    RecordField("fundingRate", NUMBER, "predicted funding rate of the current interval (null: no funding)"),
    RecordField("markPrice", NUMBER, "mark price"),
    RecordField("indexPrice", NUMBER, "index price (null until Binance sends one)"),
    RecordField("nextFundingTime", INTEGER, "next funding time, epoch milliseconds"),
    RecordField("updatedAt", NUMBER, "when the daemon stored this record, epoch seconds", required=True),
    RecordField("eventTime", INTEGER, "Binance's event time of the value, epoch milliseconds"),
    RecordField("fundingIntervalHours", INTEGER,
                "funding interval: REST fundingInfo (absent there: 8), or the spacing of T across a settlement "
                "(absent until known)"),
    RecordField("contractType", TEXT, "exchangeInfo contractType: PERPETUAL, TRADIFI_PERPETUAL, ... (absent until "
                "the daemon knows the universe)"),
    RecordField("underlyingType", TEXT, "exchangeInfo underlyingType: COIN, EQUITY, COMMODITY, INDEX (absent until "
                "the daemon knows the universe)"),
    RecordField("fundingRateCap", NUMBER, "adjustedFundingRateCap from fundingInfo (null where none is published)"),
    RecordField("fundingRateFloor", NUMBER,
                "adjustedFundingRateFloor from fundingInfo (null where none is published)"),
    RecordField("fundingIntervalChangedAt", INTEGER,
                "when the interval last changed, epoch milliseconds (the settlement when T revealed it)"),
    RecordField("lastSettlement", SETTLEMENT,
                "the stream's last value before the last settlement the daemon saw: "
                "{fundingTime, fundingRate, markPrice, eventTime}"),
)


def finite_number(value: Any) -> Optional[float]:
    """value as a float when it is a finite int or float (a bool is not a number); else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def is_finite_number(value: Any) -> bool:
    return finite_number(value) is not None


def is_whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def settlement_ok(value: Any) -> bool:
    """A lastSettlement object: whole-number fundingTime and eventTime, finite fundingRate, markPrice finite or null."""
    return (
        isinstance(value, dict)
        and is_whole_number(value.get("fundingTime"))
        and is_whole_number(value.get("eventTime"))
        and is_finite_number(value.get("fundingRate"))
        and (value.get("markPrice") is None or is_finite_number(value.get("markPrice")))
    )


def field_value_ok(field_: RecordField, value: Any) -> bool:
    """A non-null value of the field's kind."""
    if field_.kind == SETTLEMENT:
        return settlement_ok(value)
    if field_.kind == TEXT:
        return isinstance(value, str) and TEXT_PATTERN.fullmatch(value) is not None
    return is_whole_number(value) if field_.kind == INTEGER else is_finite_number(value)


_VALIDATED_FIELDS: Tuple[Tuple[str, bool], ...] = tuple(
    (f.key, f.required) for f in SYMBOL_RECORD_FIELDS if f.kind == NUMBER
)


def validate_symbol_record(symbol: str, record: Any) -> None:
    """Raise StateFileError unless record follows the contract (number keys finite or null, updatedAt present)."""
    if not isinstance(record, dict):
        raise StateFileError("funding_state[%r] is not an object" % symbol)
    for key, required in _VALIDATED_FIELDS:
        value = record.get(key)
        # The common case first, and cheap: readers validate every record of every file they load.
        if type(value) is float and math.isfinite(value):
            continue
        if value is None and not required:
            continue
        if finite_number(value) is None:
            problem = "is missing or not a number" if required else "is not a number"
            raise StateFileError("funding_state[%r].%s %s" % (symbol, key, problem))


CONTRACT_KEYS: Tuple[str, ...] = tuple(f.key for f in SYMBOL_RECORD_FIELDS if f.kind == TEXT)
UNIVERSE_KEY = "universe"
DELISTED_KEY = "delisted"
DELISTED_KEEP_SECONDS = 7 * 86400
# Reasons a stream row is not served (funding_universe.IGNORE_REASONS), each a connection_status counter.
IGNORED_STATUS_PREFIX = "items_ignored_"


# connection_status keys. The first five are the seed's; the rest were added.
CONNECTION_STATUS_DEFAULTS: Dict[str, Any] = {
    "connected": False,
    "last_connected_time": None,
    "reconnect_attempts": 0,
    "messages_received": 0,
    "last_message_time": None,
    "last_data_time": None,
    "last_disconnect_time": None,
    "disconnected_since": None,
    "last_disconnect_reason": None,
    "frames_rejected": 0,
    "items_rejected": 0,
    "items_skipped_no_funding": 0,
    "connections_opened": 0,
    "items_out_of_order": 0,
    "rotations": 0,
    "state_write_errors": 0,
    "last_state_write_error": None,
    "ws_url": None,
    "daemon_started_at": None,
    # universe and coverage (issue 12)
    "universe_known": False,
    "universe_fetched_at": None,  # when the universe in use was fetched (epoch seconds)
    "universe_refreshes": 0,  # exchangeInfo answers applied
    "universe_errors": 0,  # exchangeInfo requests that failed or answered garbage
    "universe_last_error": None,
    "universe_bad_entries": 0,  # malformed entries skipped in the last answer
    "universe_held_back": False,  # a new universe removing > half of the symbols waits for a second answer
    "expected_symbols": None,  # symbols in the universe; None while it is unknown
    "missing_symbols": None,  # universe symbols without fresh data; None while the universe is unknown
    "coverage_low_since": None,  # start of the current spell under the coverage threshold (epoch seconds)
    "items_ignored_coin_m": 0,
    "items_ignored_settling": 0,
    "items_ignored_not_trading": 0,
    "items_ignored_dated": 0,
    "items_ignored_unknown": 0,
    "symbols_removed": 0,  # symbols removed because they left the universe or expired
    # per-symbol streams that fill the gaps of the all-market array
    "symbol_streams": 0,  # per-symbol streams subscribed and acknowledged on the serving connections
    "symbol_streams_wanted": 0,
    "stream_connections": 0,  # open serving connections (the all-market one plus overflow ones)
    "subscribe_messages": 0,  # SUBSCRIBE/UNSUBSCRIBE messages sent
    "subscribe_errors": 0,  # error answers and unanswered requests
    # funding terms and settlements (issue 14)
    "interval_changes": 0,
    "funding_info_errors": 0,
    "last_funding_info_time": None,
}


def new_connection_status(**overrides: Any) -> Dict[str, Any]:
    """A connection_status dict with every key present."""
    status = dict(CONNECTION_STATUS_DEFAULTS)
    status.update(overrides)
    return status


def build_payload(
    funding_state: Mapping[str, Mapping[str, Any]],
    connection_status: Mapping[str, Any],
    updated_at: float,
    daemon_pid: int,
    *,
    universe: Union[Mapping[str, Any], "EncodedJson", None] = None,
    delisted: Optional[Mapping[str, float]] = None,
) -> Dict[str, Any]:
    payload: Dict[str, Any] = {
        "funding_state": funding_state,
        "connection_status": connection_status,
        "updated_at": updated_at,
        "daemon_pid": daemon_pid,
    }
    if universe is not None:
        payload[UNIVERSE_KEY] = universe
    if delisted is not None:
        payload[DELISTED_KEY] = delisted
    return payload


def universe_of(payload: Mapping[str, Any]) -> Optional[Dict[str, Dict[str, str]]]:
    """symbol -> contract facts of a state file's universe; None when it has none or it is unusable."""
    universe = payload.get(UNIVERSE_KEY)
    if not isinstance(universe, dict):
        return None
    symbols = universe.get("symbols")
    if not isinstance(symbols, dict) or not symbols:
        return None
    return {s: c for s, c in symbols.items() if isinstance(s, str) and isinstance(c, dict)}


def universe_fetched_at(payload: Mapping[str, Any]) -> Optional[float]:
    universe = payload.get(UNIVERSE_KEY)
    fetched = universe.get("fetched_at") if isinstance(universe, dict) else None
    return float(fetched) if is_finite_number(fetched) else None


def delisted_of(payload: Mapping[str, Any]) -> Dict[str, float]:
    """symbol -> when it was delisted; bad entries are left out."""
    delisted = payload.get(DELISTED_KEY)
    if not isinstance(delisted, dict):
        return {}
    return {s: float(t) for s, t in delisted.items() if isinstance(s, str) and is_finite_number(t)}


class EncodedJson(bytes):
    """A payload value already encoded as compact JSON (the universe: unchanged between refreshes, encoded once)."""


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    # Compact: the file is re-read on every change by every reader, so its size is latency.
    encoded = [(key, value) for key, value in payload.items() if isinstance(value, EncodedJson)]
    if not encoded:
        return funding_json.dumps(payload)
    head = funding_json.dumps({k: v for k, v in payload.items() if not isinstance(v, EncodedJson)})
    parts = [head[:-1]]
    for key, value in encoded:
        parts.append(b"%s%s:%s" % (b"," if len(head) > 2 else b"", funding_json.dumps(key), bytes(value)))
        head = b"{.}"  # every later part follows a member
    parts.append(b"}")
    return b"".join(parts)


def temp_path_for(path: str, pid: Optional[int] = None) -> str:
    """The writer's temp file: same directory (so rename is atomic), PID in the name."""
    directory, name = os.path.split(os.path.abspath(path))
    stem = name.lstrip(".").rsplit(".", 1)[0]
    return os.path.join(directory, ".%s_%d.tmp" % (stem, os.getpid() if pid is None else pid))


class _RisingClock:
    """time.time_ns(), but never the same value twice nor a smaller one than before (in this process)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


_next_mtime_ns = _RisingClock()


def write_state_atomic(path: str, payload: Mapping[str, Any]) -> int:
    """Write payload to path atomically; return the number of bytes written.

    On any error the temp file is removed, the previous file is left intact,
    and the OSError/ValueError propagates to the caller.
    """
    data = encode_payload(payload)
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, STATE_FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, STATE_FILE_MODE)
            # Readers tell versions apart by stat (file_stat_key): a freed inode number is soon reused and the
            # kernel's file times advance only once per clock tick, so two writes within one tick could look the
            # same. A nanosecond mtime that only grows makes every version's key its own.
            stamp = _next_mtime_ns()
            os.utime(fd, ns=(stamp, stamp))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(data)


def validate_payload(payload: Any, previous: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Check a decoded state file against the contract; return it or raise StateFileError.

    `previous`: the funding_state of the last file that passed. An entry equal to its entry there is not checked
    again, and the previous (equal) object takes its place, so readers can tell unchanged symbols by identity.
    """
    if not isinstance(payload, dict):
        raise StateFileError("top level is %s, not an object" % type(payload).__name__)
    funding_state = payload.get("funding_state")
    if not isinstance(funding_state, dict):
        raise StateFileError("funding_state is missing or not an object")
    status = payload.get("connection_status")
    if not isinstance(status, dict):
        raise StateFileError("connection_status is missing or not an object")
    if not is_finite_number(payload.get("updated_at")):
        raise StateFileError("updated_at is missing or not a number")
    isfinite = math.isfinite
    previous = previous or {}
    for symbol, record in funding_state.items():
        known = previous.get(symbol)
        if known is not None and known == record:
            funding_state[symbol] = known  # an existing key: the dict does not change size while iterated
            continue
        if type(record) is dict:
            # Fast path, the daemon's records: the four NUMBER fields are floats with a finite sum (so each is
            # finite). Anything else (ints, nulls, NaN, a sum that overflows) takes the exact check. It keeps a
            # 1 000-symbol check near 0.2 ms, inside the API's reload budget.
            get = record.get
            u, f, m, i = get("updatedAt"), get("fundingRate"), get("markPrice"), get("indexPrice")
            if type(u) is float is type(f) is type(m) is type(i) and isfinite(u + f + m + i):
                continue
        validate_symbol_record(symbol, record)
    return payload


def decode_state(data: bytes, previous: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    try:
        payload = funding_json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFileError("not valid JSON: %s" % exc) from None
    return validate_payload(payload, previous)


def read_state_bytes(path: str) -> Tuple[bytes, "StatKey"]:
    """The state file's bytes and the stat key of the very file they were read from; StateFileError if unreadable."""
    try:
        with open(path, "rb") as handle:
            key = file_stat_key(os.fstat(handle.fileno()))
            return handle.read(), key
    except FileNotFoundError:
        raise StateFileError("state file %s does not exist" % path) from None
    except OSError as exc:
        raise StateFileError("cannot read state file %s: %s" % (path, exc.strerror or exc)) from None


def read_state(path: str, previous: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Read and validate the state file once; raise StateFileError on any problem (`previous`: validate_payload)."""
    return decode_state(read_state_bytes(path)[0], previous)


StatKey = Tuple[int, int, int, int]  # see file_stat_key


@dataclass
class StateSnapshot:
    """The last good state a StateReader holds, and what happened on the last look."""

    payload: Optional[Dict[str, Any]] = None
    loaded_at: Optional[float] = None  # time.time() when payload was parsed
    error: Optional[str] = None  # why the current file could not be used, if it cannot
    loads: int = 0  # how many times the file was parsed
    stat_key: Optional[StatKey] = field(default=None, repr=False)

    @property
    def funding_state(self) -> Dict[str, Dict[str, Any]]:
        return self.payload["funding_state"] if self.payload else {}

    @property
    def connection_status(self) -> Dict[str, Any]:
        return self.payload["connection_status"] if self.payload else {}


def file_stat_key(st: os.stat_result) -> StatKey:
    """What identifies one version of the state file: the writer renames a new inode into place, so a change of
    (device, inode, size, mtime) means a new complete file."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class StateReader:
    """Re-reads the state file only when it changed (by stat), keeping the last good copy.

    Thread-safe. Because the writer renames a new inode into place, a change of
    (inode, size, mtime) means a new complete file; an unchanged stat means the
    parsed copy is still current, so an unchanged file is never parsed twice.
    """

    def __init__(self, path: str, clock: Any = None) -> None:
        self.path = path
        self._clock = clock or time.time
        self._lock = threading.Lock()
        self._snapshot = StateSnapshot()

    def snapshot(self) -> StateSnapshot:
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                self._snapshot.error = "state file %s does not exist" % self.path
                self._snapshot.stat_key = None
                return self._copy()
            except OSError as exc:
                self._snapshot.error = "cannot stat state file %s: %s" % (self.path, exc.strerror or exc)
                self._snapshot.stat_key = None
                return self._copy()
            key = file_stat_key(st)
            if key == self._snapshot.stat_key:
                return self._copy()
            self._snapshot.stat_key = key
            try:
                # The key of what is parsed is the key of the file opened: it may have been replaced since the stat.
                data, self._snapshot.stat_key = read_state_bytes(self.path)
                last = self._snapshot.payload
                payload = decode_state(data, last["funding_state"] if last else None)
            except StateFileError as exc:
                self._snapshot.error = str(exc)
                return self._copy()
            self._snapshot.payload = payload
            self._snapshot.loaded_at = self._clock()
            self._snapshot.error = None
            self._snapshot.loads += 1
            return self._copy()

    def _copy(self) -> StateSnapshot:
        # The payload dict is replaced, never mutated, so sharing it is safe.
        s = self._snapshot
        return StateSnapshot(s.payload, s.loaded_at, s.error, s.loads, s.stat_key)


def disconnected_for(status: Mapping[str, Any], now: float) -> Optional[float]:
    """None while the daemon reports itself connected; else seconds since it lost the connection.

    `disconnected_since` is the start of the down spell (failed reconnect attempts do not move it); a writer that
    does not record it falls back to its last disconnect, and one that said nothing counts as down for ever.
    """
    if status.get("connected") is True:
        return None
    since = finite_number(status.get("disconnected_since"))
    if since is None:
        since = finite_number(status.get("last_disconnect_time"))
    return math.inf if since is None else max(0.0, now - since)


def age_seconds(timestamp: Any, now: float) -> Optional[float]:
    """Seconds from an epoch timestamp to now, never negative; None when it is not a finite number."""
    when = finite_number(timestamp)
    return None if when is None else max(0.0, now - when)
