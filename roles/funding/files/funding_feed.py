"""Parsing of markPrice frames (the `!markPrice@arr` array and per-symbol streams) and merging them into the state.

Pure functions, no I/O: `parse_frame` turns the raw text of one WebSocket
frame into validated updates plus counts of what was rejected or skipped;
`merge_updates` folds those updates into the `funding_state` dict of the
state file. Binance pushes partial shards, so a push never replaces the whole
state, it only updates the symbols it carries.

Rules (see the reference notes on the real feed):
- a frame is either combined (`{"stream": "...markPrice...", "data": ...}`) or
  raw (the bare payload); the payload is the array of `!markPrice@arr` or the
  one object of a per-symbol `<symbol>@markPrice@1s` stream (`FrameResult.per_symbol`);
  invalid JSON, another stream or any other payload rejects the frame;
- `{"result": ..., "id": N}` / `{"error": {...}, "id": N}` is the server's answer
  to a SUBSCRIBE/UNSUBSCRIBE (`FrameResult.control`), not market data;
- an item is used only when `e == "markPriceUpdate"` (a `24hrTicker` also has a
  `p`, meaning *price change*), its symbol looks like a symbol, its prices are
  finite and positive and its numbers parse; unknown keys are ignored and a
  missing `i` is tolerated;
- an item without funding (`r` empty or `T == 0`: a dated contract) is skipped
  and counted apart from rejects;
- a bad item is counted and never costs the rest of its frame.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, MutableMapping, Optional, Tuple, Union

import funding_json
from funding_state import (
    CONTRACT_KEYS,
    SYMBOL_RECORD_FIELDS,
    RecordField,
    field_value_ok,
    finite_number,
    is_whole_number,
)
from funding_terms import FundingTerms, interval_from_spacing, terms_for

MARK_PRICE_EVENT = "markPriceUpdate"
SYMBOL_PATTERN = re.compile(r"[A-Z0-9_]{1,40}")
DECIMAL_PATTERN = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,3})?", re.ASCII)
MILLIS_PATTERN = re.compile(r"\d{1,15}", re.ASCII)

MAX_FRAME_CHARS = 16 * 1024 * 1024  # a real full push is ~200 KB
MAX_NUMBER_CHARS = 64
# Plausibility bounds: nothing real comes near them, garbage ("huge") does.
MAX_PRICE = 1e12
MAX_ABS_FUNDING_RATE = 1.0
MAX_MILLIS = 10**14  # year 5138
# How far ahead of the local clock a stored eventTime may be and still be trusted
# for ordering; beyond it (a bad clock or a bad frame) ordering is not enforced.
EVENT_TIME_FUTURE_TOLERANCE_MS = 300_000
DEFAULT_FUNDING_INTERVAL_HOURS = 8
TERMS_KEYS = ("fundingIntervalHours", "fundingRateCap", "fundingRateFloor")
NULLABLE_RESTORED_KEYS = ("indexPrice", "fundingRateCap", "fundingRateFloor")
# The stream's last value counts as the settled one only when it is at most this much older than the settlement.
STREAM_SETTLEMENT_MAX_GAP_MS = 120_000
DEFAULT_MAX_SYMBOLS = 5000
CONTRACT_RECORD_KEYS = CONTRACT_KEYS  # copied from the universe onto each record


@dataclass(frozen=True)
class MarkPriceUpdate:
    symbol: str
    mark_price: float
    index_price: Optional[float]  # None when the item had no `i`
    funding_rate: float
    next_funding_time: int  # ms
    event_time: int  # ms, the item's `E`
    market_marker: Optional[int] = None  # the undocumented `st` (1 USDⓈ-M, 2 COIN-M) when present


@dataclass(frozen=True)
class ControlReply:
    """The server's answer to a SUBSCRIBE/UNSUBSCRIBE: `error_code`/`error_message` set when it failed."""

    request_id: Any
    error_code: Optional[int] = None
    error_message: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error_code is None and self.error_message is None


@dataclass
class FrameResult:
    """What one frame held: the valid updates and why the rest was not used."""

    updates: List[MarkPriceUpdate] = field(default_factory=list)
    items_rejected: int = 0
    items_skipped_no_funding: int = 0
    frame_rejected: bool = False
    frame_reject_reason: Optional[str] = None
    reject_reasons: Counter = field(default_factory=Counter)
    skipped_symbols: List[str] = field(default_factory=list)  # symbols of the items skipped without funding
    per_symbol: bool = False  # the frame came from a per-symbol stream, not the all-market array
    control: Optional[ControlReply] = None

    def reject_item(self, reason: str) -> None:
        self.items_rejected += 1
        self.reject_reasons[reason] += 1


@dataclass(frozen=True)
class IntervalChange:
    symbol: str
    old_hours: int
    new_hours: int
    at_ms: int  # the settlement that revealed it, or when fundingInfo said so
    how: str  # "fundingInfo" or "nextFundingTime spacing"


@dataclass
class MergeResult:
    accepted: int = 0
    out_of_order: int = 0  # older than what is stored for the symbol: ignored
    over_symbol_limit: int = 0  # a new symbol beyond max_symbols: ignored
    settlements: int = 0  # records whose T moved past a settlement
    interval_changes: List[IntervalChange] = field(default_factory=list)
    revealed_intervals: Dict[str, int] = field(default_factory=dict)  # symbol -> interval proved by T spacing


def parse_decimal(value: Any) -> Optional[float]:
    """A finite float from a decimal string or a JSON number; None when it is anything else."""
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS or not DECIMAL_PATTERN.fullmatch(value):
            return None
        return finite_number(float(value))
    return finite_number(value)


def parse_millis(value: Any) -> Optional[int]:
    """A non-negative millisecond timestamp from an int or a digit string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and MILLIS_PATTERN.fullmatch(value):
        number = int(value)
    else:
        return None
    return number if 0 <= number < MAX_MILLIS else None


def _parse_price(value: Any) -> Optional[float]:
    price = parse_decimal(value)
    if price is None or price <= 0 or price > MAX_PRICE:
        return None
    return price


def _has_no_funding(item: Mapping[str, Any]) -> bool:
    rate = item.get("r")
    if isinstance(rate, str) and not rate.strip():
        return True
    next_funding = item.get("T")
    return parse_millis(next_funding) == 0


def parse_item(item: Any) -> Tuple[str, Union[MarkPriceUpdate, str]]:
    """Classify one array item: ("ok", update), ("skip", reason) or ("reject", reason)."""
    if not isinstance(item, dict):
        return "reject", "item is not an object"
    if item.get("e") != MARK_PRICE_EVENT:
        return "reject", "not a markPriceUpdate"
    symbol = item.get("s")
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        return "reject", "bad symbol"
    if _has_no_funding(item):
        return "skip", "no funding"
    mark_price = _parse_price(item.get("p"))
    if mark_price is None:
        return "reject", "bad mark price"
    index_price: Optional[float] = None
    raw_index = item.get("i")
    if raw_index is not None and raw_index != "":
        index_price = _parse_price(raw_index)
        if index_price is None:
            return "reject", "bad index price"
    funding_rate = parse_decimal(item.get("r"))
    if funding_rate is None or abs(funding_rate) > MAX_ABS_FUNDING_RATE:
        return "reject", "bad funding rate"
    next_funding_time = parse_millis(item.get("T"))
    if next_funding_time is None:
        return "reject", "bad next funding time"
    event_time = parse_millis(item.get("E"))
    if not event_time:
        return "reject", "bad event time"
    marker = item.get("st")
    market_marker = marker if isinstance(marker, int) and not isinstance(marker, bool) else None
    return "ok", MarkPriceUpdate(symbol, mark_price, index_price, funding_rate, next_funding_time, event_time,
                                 market_marker)


def _frame_items(payload: Any) -> Tuple[Optional[List[Any]], bool, Optional[str]]:
    """(items, per_symbol) of a combined or raw frame, or (None, False, why not)."""
    if isinstance(payload, list):
        return payload, False, None
    if isinstance(payload, dict) and "data" in payload:
        stream = payload.get("stream")
        if not isinstance(stream, str) or "markprice" not in stream.lower():
            return None, False, "not a markPrice stream: %.60r" % (stream,)
        data = payload["data"]
        if isinstance(data, dict) and not stream.startswith("!"):
            return [data], True, None
        if not isinstance(data, list):
            return None, False, "data is %s, not a list or an object" % type(data).__name__
        return data, False, None
    if isinstance(payload, dict) and "e" in payload:
        return [payload], True, None
    return None, False, "payload is %s, not a list" % type(payload).__name__


def _control_reply(payload: Any) -> Optional[ControlReply]:
    """The SUBSCRIBE/UNSUBSCRIBE answer a payload is, or None when it is something else."""
    if not isinstance(payload, dict) or "id" not in payload or not ("result" in payload or "error" in payload):
        return None
    error = payload.get("error")
    if error is None and "error" not in payload:
        return ControlReply(payload["id"])
    code: Optional[int] = -1
    message: Optional[str] = None
    if isinstance(error, dict):
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else -1
        raw_message = error.get("msg")
        message = raw_message[:200] if isinstance(raw_message, str) else None
    elif isinstance(error, str):
        message = error[:200]
    return ControlReply(payload["id"], code, message)


def parse_frame(raw: Union[str, bytes, bytearray]) -> FrameResult:
    """Validate one frame; never raises."""
    result = FrameResult()
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return _rejected_frame(result, "not UTF-8")
    if not isinstance(raw, str):
        return _rejected_frame(result, "not text")
    if len(raw) > MAX_FRAME_CHARS:
        return _rejected_frame(result, "oversized frame (%d chars)" % len(raw))
    try:
        payload = funding_json.loads(raw)
    except (ValueError, RecursionError):
        return _rejected_frame(result, "invalid JSON")
    control = _control_reply(payload)
    if control is not None:
        result.control = control
        return result
    items, per_symbol, reason = _frame_items(payload)
    if items is None:
        return _rejected_frame(result, reason or "unusable frame")
    result.per_symbol = per_symbol
    for item in items:
        verdict, value = parse_item(item)
        if verdict == "ok":
            result.updates.append(value)  # type: ignore[arg-type]
        elif verdict == "skip":
            result.items_skipped_no_funding += 1
            result.skipped_symbols.append(item["s"])
        else:
            result.reject_item(value)  # type: ignore[arg-type]
    return result


def _rejected_frame(result: FrameResult, reason: str) -> FrameResult:
    result.frame_rejected = True
    result.frame_reject_reason = reason
    return result


def _is_older(update: MarkPriceUpdate, record: Mapping[str, Any], now: float) -> bool:
    stored = record.get("eventTime")
    if not is_whole_number(stored):
        return False
    if stored > now * 1000 + EVENT_TIME_FUTURE_TOLERANCE_MS:
        return False  # an implausible stored time must not freeze the symbol
    return update.event_time < stored


def merge_updates(
    funding_state: MutableMapping[str, Dict[str, Any]],
    updates: Iterable[MarkPriceUpdate],
    now: float,
    funding_terms: Optional[Mapping[str, FundingTerms]] = None,
    max_symbols: int = DEFAULT_MAX_SYMBOLS,
    *,
    contracts: Optional[Mapping[str, Mapping[str, str]]] = None,
) -> MergeResult:
    """Fold updates into funding_state in place; every changed record is a new dict.

    Records are replaced rather than mutated so that a shallow copy of
    funding_state taken under a lock can be serialised outside it.
    `funding_terms` (from REST fundingInfo; a symbol absent from it has the
    defaults) sets fundingIntervalHours, fundingRateCap and fundingRateFloor;
    without it a record keeps the terms it had. `contracts` (the universe)
    sets contractType and underlyingType the same way.

    Settlements: when an item's `T` moves past the record's `T` and its event
    time is at or after the old `T`, the symbol settled at the old `T`. The
    record then keeps the last value seen before it as `lastSettlement` (when
    that value is at most STREAM_SETTLEMENT_MAX_GAP_MS older than the
    settlement), and the spacing of the two `T`s, when it proves an interval
    (funding_terms.interval_from_spacing), overrides the interval: it is the
    newest evidence. Every interval change is reported in `interval_changes`.
    """
    result = MergeResult()
    for update in updates:
        previous = funding_state.get(update.symbol)
        if previous is None:
            if len(funding_state) >= max_symbols:
                result.over_symbol_limit += 1
                continue
            previous = {}
        elif _is_older(update, previous, now):
            result.out_of_order += 1
            continue
        index_price = update.index_price if update.index_price is not None else previous.get("indexPrice")
        record: Dict[str, Any] = {
            "fundingRate": update.funding_rate,
            "markPrice": update.mark_price,
            "indexPrice": index_price,
            "nextFundingTime": update.next_funding_time,
            "updatedAt": now,
            "eventTime": update.event_time,
        }
        record.update(_terms_fields(update.symbol, previous, funding_terms))
        contract = contracts.get(update.symbol) if contracts is not None else None
        for key in CONTRACT_RECORD_KEYS:
            value = contract.get(key) if contract is not None else previous.get(key)
            if value:
                record[key] = value
        change_at = int(now * 1000)
        how = "fundingInfo"
        settled_at = _settled_at(previous, update)
        if settled_at is not None:
            result.settlements += 1
            last = _last_value_before(previous, settled_at)
            if last is not None:
                record["lastSettlement"] = last
            revealed = interval_from_spacing(settled_at, update.next_funding_time, update.event_time)
            if revealed is not None:
                result.revealed_intervals[update.symbol] = revealed
                if revealed != record.get("fundingIntervalHours"):
                    record["fundingIntervalHours"] = revealed
                    change_at, how = settled_at, "nextFundingTime spacing"
        if "lastSettlement" not in record and "lastSettlement" in previous:
            record["lastSettlement"] = previous["lastSettlement"]
        _note_interval_change(update.symbol, previous, record, (change_at, how), result)
        funding_state[update.symbol] = record
        result.accepted += 1
    return result


def _terms_fields(
    symbol: str, previous: Mapping[str, Any], funding_terms: Optional[Mapping[str, FundingTerms]]
) -> Dict[str, Any]:
    terms = terms_for(symbol, funding_terms)
    if terms is not None:
        return {"fundingIntervalHours": terms.interval_hours, "fundingRateCap": terms.cap,
                "fundingRateFloor": terms.floor}
    return {key: previous[key] for key in TERMS_KEYS if key in previous}


def _settled_at(previous: Mapping[str, Any], update: MarkPriceUpdate) -> Optional[int]:
    """The funding time the symbol settled at between `previous` and `update`, if it did."""
    settled = previous.get("nextFundingTime")
    if not is_whole_number(settled) or settled <= 0:
        return None
    if update.next_funding_time > settled and update.event_time >= settled:
        return settled
    return None


def _last_value_before(previous: Mapping[str, Any], settled_at: int) -> Optional[Dict[str, Any]]:
    event = previous.get("eventTime")
    rate = finite_number(previous.get("fundingRate"))
    if rate is None or not is_whole_number(event) or not 0 <= settled_at - event <= STREAM_SETTLEMENT_MAX_GAP_MS:
        return None
    if event >= settled_at:
        return None
    return {"fundingTime": settled_at, "fundingRate": rate, "markPrice": finite_number(previous.get("markPrice")),
            "eventTime": event}


def _note_interval_change(
    symbol: str, previous: Mapping[str, Any], record: Dict[str, Any], change: "Tuple[int, str]", result: Any
) -> None:
    at_ms, how = change
    old, new = previous.get("fundingIntervalHours"), record.get("fundingIntervalHours")
    if is_whole_number(old) and is_whole_number(new) and old != new:
        record["fundingIntervalChangedAt"] = at_ms
        result.interval_changes.append(IntervalChange(symbol, old, new, at_ms, how))
    elif "fundingIntervalChangedAt" in previous:
        record["fundingIntervalChangedAt"] = previous["fundingIntervalChangedAt"]


def apply_funding_terms(
    funding_state: MutableMapping[str, Dict[str, Any]], funding_terms: Mapping[str, FundingTerms], now: float
) -> "Tuple[int, List[IntervalChange]]":
    """Set every record's terms from a fundingInfo map (new dicts); (records changed, interval changes)."""
    changed = 0
    result = MergeResult()
    now_ms = int(now * 1000)
    for symbol, record in list(funding_state.items()):
        fields = _terms_fields(symbol, record, funding_terms)
        if all(record.get(key) == value and key in record for key, value in fields.items()):
            continue
        updated = dict(record, **fields)
        _note_interval_change(symbol, record, updated, (now_ms, "fundingInfo"), result)
        funding_state[symbol] = updated
        changed += 1
    return changed, result.interval_changes


def restore_funding_state(funding_state: Mapping[str, Any]) -> Tuple[Dict[str, Dict[str, Any]], int]:
    """The usable records of a previous (already contract-validated) state file, and how many were dropped.

    Records keep their old updatedAt, so they read as stale until refreshed.
    """
    restored: Dict[str, Dict[str, Any]] = {}
    dropped = 0
    for symbol, record in funding_state.items():
        if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol) or not isinstance(record, dict):
            dropped += 1
            continue
        mark_price = finite_number(record.get("markPrice"))
        if mark_price is None or mark_price <= 0:
            dropped += 1
            continue
        restored[symbol] = {f.key: record[f.key] for f in SYMBOL_RECORD_FIELDS if _restorable(f, record)}
    return restored, dropped


def _restorable(field_: RecordField, record: Mapping[str, Any]) -> bool:
    # A null indexPrice is what Binance's first frames carry, a null cap or floor is "none published"; any other null
    # is left out (the next frame sets it).
    if field_.key not in record:
        return False
    value = record[field_.key]
    return field_value_ok(field_, value) or (value is None and field_.key in NULLABLE_RESTORED_KEYS)
