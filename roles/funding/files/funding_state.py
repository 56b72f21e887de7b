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
      "daemon_pid": 2580526
    }

Writes are atomic (temp file in the same directory, fsync, rename), so a
reader sees either the old file or the new one, never a mix.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

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
) -> Dict[str, Any]:
    return {
        "funding_state": funding_state,
        "connection_status": connection_status,
        "updated_at": updated_at,
        "daemon_pid": daemon_pid,
    }


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    # Compact: the file is re-read on every change by every reader, so its size is latency.
    return funding_json.dumps(payload)


def temp_path_for(path: str, pid: Optional[int] = None) -> str:
    """The writer's temp file: same directory (so rename is atomic), PID in the name."""
    directory, name = os.path.split(os.path.abspath(path))
    stem = name.lstrip(".").rsplit(".", 1)[0]
    return os.path.join(directory, ".%s_%d.tmp" % (stem, os.getpid() if pid is None else pid))


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


def validate_payload(payload: Any) -> Dict[str, Any]:
    """Check a decoded state file against the contract; return it or raise StateFileError."""
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
    for symbol, record in funding_state.items():
        validate_symbol_record(symbol, record)
    return payload


def decode_state(data: bytes) -> Dict[str, Any]:
    try:
        payload = funding_json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateFileError("not valid JSON: %s" % exc) from None
    return validate_payload(payload)


def read_state(path: str) -> Dict[str, Any]:
    """Read and validate the state file once; raise StateFileError on any problem."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise StateFileError("state file %s does not exist" % path) from None
    except OSError as exc:
        raise StateFileError("cannot read state file %s: %s" % (path, exc.strerror or exc)) from None
    return decode_state(data)


@dataclass
class StateSnapshot:
    """The last good state a StateReader holds, and what happened on the last look."""

    payload: Optional[Dict[str, Any]] = None
    loaded_at: Optional[float] = None  # time.time() when payload was parsed
    error: Optional[str] = None  # why the current file could not be used, if it cannot
    loads: int = 0  # how many times the file was parsed
    stat_key: Optional[Tuple[int, int, int, int]] = field(default=None, repr=False)

    @property
    def funding_state(self) -> Dict[str, Dict[str, Any]]:
        return self.payload["funding_state"] if self.payload else {}

    @property
    def connection_status(self) -> Dict[str, Any]:
        return self.payload["connection_status"] if self.payload else {}


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
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key == self._snapshot.stat_key:
                return self._copy()
            self._snapshot.stat_key = key
            try:
                payload = read_state(self.path)
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
