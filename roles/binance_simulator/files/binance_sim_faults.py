"""Fault switches of the simulated exchange, and the bad frames and items some of them inject.

A fault is set with a name and parameters (from `--fault NAME[=VALUE]` or `POST /_sim/fault`). Switches stay on until
turned off or cleared; `drop`, `list`, `delist` (and `rotate` without `after`) are one-shot actions the server
performs at once (a listing or delisting is a change of the market: clearing the faults does not undo it).
"""

from __future__ import annotations

import json
import math
import random
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

SWITCH_FAULTS = ("stall", "refuse", "malformed", "poison", "rest_outage", "rest_garbage", "freeze",
                 "exchange_info_outage", "exchange_info_garbage", "subscribe_error", "array_tradfi",
                 "funding_rest_limit")
ONE_SHOT_FAULTS = ("drop", "list", "delist", "funding_rate")
FAULT_NAMES = ("drop", "stall", "refuse", "malformed", "poison", "rotate", "rest_outage", "rest_skew",
               "rest_garbage", "freeze", "list", "delist", "exchange_info_outage", "exchange_info_garbage",
               "subscribe_error", "array_tradfi", "funding_rate", "funding_rest_limit")
# The parameter a bare `--fault NAME=VALUE` sets.
PRIMARY_PARAMETER = {"drop": "mode", "rotate": "after", "rest_skew": "percent", "poison": "oversize_every",
                     "list": "symbol", "delist": "symbol", "exchange_info_outage": "mode",
                     "exchange_info_garbage": "kind", "subscribe_error": "code", "array_tradfi": "underlyingType",
                     "funding_rate": "symbol", "funding_rest_limit": "status"}
DROP_MODES = ("abrupt", "close")
EXCHANGE_INFO_OUTAGE_MODES = ("503", "500", "429", "reset", "hang")
EXCHANGE_INFO_GARBAGE_KINDS = ("html", "truncated", "not_object", "no_symbols", "empty", "no_perpetuals",
                               "too_many", "malformed_entries", "shrunk")
DELIST_ROWS = ("no_funding", "stop")
LISTABLE_TYPES = ("PERPETUAL", "TRADIFI_PERPETUAL")
UNDERLYING_TYPES = ("COIN", "EQUITY", "COMMODITY", "INDEX")
SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{1,30}(USDT|USDC)$")
DEFAULT_SUBSCRIBE_ERROR_CODE = 2
TRUE_WORDS = {"1", "true", "on", "yes"}
FALSE_WORDS = {"0", "false", "off", "no"}
DEFAULT_OVERSIZE_EVERY = 10
OVERSIZED_FRAME_BYTES = 1_100_000


class FaultError(ValueError):
    """A fault request that names no fault or carries a bad parameter."""


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise FaultError(f"{name}: expected true or false, got {value!r}")


def _as_number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool):
        raise FaultError(f"{name}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FaultError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise FaultError(f"{name}: must be between {low:g} and {high:g}, got {value!r}")
    return number


def parse_fault_flag(text: str) -> Tuple[str, Dict[str, Any]]:
    """`NAME` or `NAME=VALUE` (VALUE is the fault's primary parameter, or on/off for a switch)."""
    name, separator, value = text.partition("=")
    name = name.strip()
    if name not in FAULT_NAMES:
        raise FaultError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
    if not separator:
        return name, {}
    parameter = PRIMARY_PARAMETER.get(name, "on")
    return name, {parameter: value.strip()}


class FaultState:
    """The switches currently on, with their validated parameters."""

    def __init__(self) -> None:
        self.active: Dict[str, Dict[str, Any]] = {}

    def is_on(self, name: str) -> bool:
        return name in self.active

    def param(self, name: str, key: str, default: Any = None) -> Any:
        return self.active.get(name, {}).get(key, default)

    @property
    def skew_percent(self) -> float:
        return float(self.param("rest_skew", "percent", 0.0))

    def clear(self) -> None:
        self.active.clear()

    def describe(self) -> Dict[str, Dict[str, Any]]:
        return {name: dict(params) for name, params in sorted(self.active.items())}

    def apply(self, name: str, params: Mapping[str, Any]) -> Dict[str, Any]:
        """Validate and record one fault request. Returns the action for the server:

        `{"fault": name, "on": bool, ...params}`; for one-shot faults the server acts on it, nothing is recorded.
        """
        if name not in FAULT_NAMES:
            raise FaultError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
        params = dict(params)
        turn_on = _as_bool(params.pop("on", True), "on")
        action: Dict[str, Any] = {"fault": name, "on": turn_on}
        if name == "drop":
            mode = str(params.pop("mode", "abrupt"))
            if mode not in DROP_MODES:
                raise FaultError(f"mode: expected one of {', '.join(DROP_MODES)}, got {mode!r}")
            action["mode"] = mode
        elif name == "rotate":
            after = params.pop("after", None)
            if after is not None and after != "":
                action["after"] = _as_number(after, "after", 0.0, 10 * 86400.0)
        elif name == "rest_skew":
            percent = _as_number(params.pop("percent", 0.0 if not turn_on else None), "percent", -90.0, 1000.0)
            action["percent"] = percent
            action["on"] = turn_on = turn_on and percent != 0.0
        elif name == "poison":
            every = params.pop("oversize_every", DEFAULT_OVERSIZE_EVERY)
            action["oversize_every"] = int(_as_number(every, "oversize_every", 0, 1_000_000))
        elif name in ("list", "delist"):
            action.update(_listing_params(name, params))
        elif name == "exchange_info_outage":
            action["mode"] = _choice(params.pop("mode", "503"), "mode", EXCHANGE_INFO_OUTAGE_MODES)
        elif name == "exchange_info_garbage":
            action["kind"] = _choice(params.pop("kind", "html"), "kind", EXCHANGE_INFO_GARBAGE_KINDS)
        elif name == "subscribe_error":
            action["code"] = int(_as_number(params.pop("code", DEFAULT_SUBSCRIBE_ERROR_CODE), "code", -100000, 100000))
            action["msg"] = str(params.pop("msg", "Invalid request: subscription refused (simulated)"))[:200]
            action["count"] = int(_as_number(params.pop("count", 0), "count", 0, 1_000_000))
        elif name == "funding_rate":
            symbol = str(params.pop("symbol", "") or "").strip().upper()
            if not SYMBOL_PATTERN.match(symbol):
                raise FaultError(f"funding_rate: symbol is required (like BTCUSDT), got {symbol!r}")
            action["symbol"] = symbol
            action["rate"] = _as_number(params.pop("rate", None), "rate", -0.5, 0.5)
        elif name == "funding_rest_limit":
            status = int(_as_number(params.pop("status", 429), "status", 418, 429))
            if status not in (418, 429):
                raise FaultError("status: expected 429 or 418")
            action["status"] = status
            action["retry_after"] = int(_as_number(params.pop("retry_after", 30), "retry_after", 0, 3 * 86400))
        elif name == "array_tradfi":
            kinds = str(params.pop("underlyingType", "ALL")).upper().split(",")
            for kind in kinds:
                if kind not in UNDERLYING_TYPES + ("ALL",):
                    raise FaultError(f"underlyingType: expected ALL or one of {', '.join(UNDERLYING_TYPES)}, "
                                     f"got {kind!r}")
            action["underlyingType"] = ",".join(kinds)
        if params:
            raise FaultError(f"{name}: unknown parameter(s) {', '.join(sorted(params))}")

        if name in ONE_SHOT_FAULTS or (name == "rotate" and "after" not in action):
            return action
        if name == "exchange_info_outage" and turn_on:
            self.active.pop("exchange_info_garbage", None)  # one answer at a time
        if name == "exchange_info_garbage" and turn_on:
            self.active.pop("exchange_info_outage", None)
        if turn_on:
            self.active[name] = {key: value for key, value in action.items() if key not in ("fault", "on")}
        else:
            self.active.pop(name, None)
        return action


def _choice(value: Any, name: str, allowed: Tuple[str, ...]) -> str:
    text = str(value).strip()
    if text not in allowed:
        raise FaultError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return text


def _listing_params(name: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """list: symbol (default: a fresh name), contractType, underlyingType, price, fundingIntervalHours.
    delist: symbol (required), rows (no_funding | stop)."""
    symbol = str(params.pop("symbol", "") or "").strip().upper()
    if symbol and not SYMBOL_PATTERN.match(symbol):
        raise FaultError(f"symbol: expected something like NEWCOINUSDT, got {symbol!r}")
    if name == "delist":
        if not symbol:
            raise FaultError("delist: symbol is required")
        return {"symbol": symbol, "rows": _choice(params.pop("rows", "no_funding"), "rows", DELIST_ROWS)}
    contract_type = str(params.pop("contractType", "") or "").strip().upper()
    underlying = str(params.pop("underlyingType", "") or "").strip().upper()
    if not contract_type:
        contract_type = "TRADIFI_PERPETUAL" if underlying and underlying != "COIN" else "PERPETUAL"
    contract_type = _choice(contract_type, "contractType", LISTABLE_TYPES)
    underlying = _choice(underlying or ("COIN" if contract_type == "PERPETUAL" else "EQUITY"), "underlyingType",
                         UNDERLYING_TYPES)
    action: Dict[str, Any] = {"symbol": symbol, "contractType": contract_type, "underlyingType": underlying}
    if params.get("price") not in (None, ""):
        action["price"] = _as_number(params.pop("price"), "price", 1e-8, 1e9)
    params.pop("price", None)
    if params.get("fundingIntervalHours") not in (None, ""):
        hours = int(_as_number(params.pop("fundingIntervalHours"), "fundingIntervalHours", 1, 8))
        if hours not in (1, 4, 8):
            raise FaultError("fundingIntervalHours: expected 1, 4 or 8")
        action["fundingIntervalHours"] = hours
    params.pop("fundingIntervalHours", None)
    return action


# --- injected content ---------------------------------------------------------------------------------------------


def malformed_frames(counter: int, combined: bool, stream_name: str) -> List[Any]:
    """Two bad frames per push, cycling through the kinds a client must survive (str = text, bytes = binary)."""
    prefix = '{"stream":"%s","data":' % stream_name if combined else ""
    suffix = "}" if combined else ""
    catalogue: List[Any] = [
        prefix + '[{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"9',  # truncated JSON
        "this is not json",
        (prefix + "{}" + suffix) if combined else "{}",  # object instead of a list
        (prefix + '"oops"' + suffix) if combined else '"oops"',
        (prefix + "null" + suffix) if combined else "null",
        '{"stream":"%s"}' % stream_name if combined else "42",  # no data / a bare number
        prefix + '[{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":NaN,"r":"0.0001","T":1}]' + suffix,  # bare NaN
        bytes(random.Random(counter).getrandbits(8) for _ in range(64)),  # binary junk
        "",
        "[" * 50_000,  # deeply nested
    ]
    start = (2 * counter) % len(catalogue)
    return [catalogue[start], catalogue[(start + 1) % len(catalogue)]]


def poisoned_items(victims: List[str], event_time: int, counter: int) -> List[Any]:
    """Items that must never change a mark price. `victims` are real symbols of the shard being pushed."""
    if not victims:
        victims = ["BTCUSDT"]

    def victim(offset: int) -> str:
        return victims[(counter + offset) % len(victims)]

    def mark(offset: int, **overrides: Any) -> Dict[str, Any]:
        item: Dict[str, Any] = {
            "e": "markPriceUpdate", "E": event_time, "s": victim(offset), "p": "1.00000000",
            "P": "1.00000000", "i": "1.00000000", "r": "0.00010000", "T": event_time + 3_600_000,
        }
        item.update(overrides)
        return item

    items: List[Any] = [
        # A 24hrTicker's `p` is the 24 h price change, not a mark price.
        {"e": "24hrTicker", "E": event_time, "s": victim(0), "p": "-1234.50000000", "P": "-1.370",
         "w": "90120.1", "c": "88765.4", "Q": "0.010", "o": "89999.9", "h": "91000.0", "l": "88000.0",
         "v": "123456.789", "q": "11111111111.11", "O": event_time - 86_400_000, "C": event_time, "F": 1, "L": 2,
         "n": 2},
        {"e": "24hrTicker", "E": event_time, "s": victim(1), "p": "0.00420000", "P": "2.5", "c": "0.17"},
        mark(2, p="NaN"),
        mark(3, p="Infinity"),
        mark(4, p="-Infinity"),
        mark(5, p="-42.00000000"),
        mark(6, p="0"),
        mark(7, p="0.00000000"),
        mark(8, p="1e308"),
        mark(9, p="1" + "0" * 400),
        mark(10, p=["90000.1"]),
        mark(11, p={"value": "90000.1"}),
        mark(12, p=True),
        mark(13, p=None),
        mark(14, p="ninety thousand"),
        mark(15, i="NaN"),
        mark(16, i=[1]),
        mark(17, r="NaN"),
        mark(18, r={"rate": 1}),
        mark(19, T="soon"),
        mark(20, T=[1]),
        mark(21, E="yesterday"),
        {key: value for key, value in mark(22, p="12.34000000").items() if key != "s"},
        mark(23, s=""),
        mark(24, s=12345),
        mark(25, s=["BTCUSDT"]),
        mark(26, s="X" * 300 + "USDT", p="1.50000000"),
        mark(27, e=None, p="2.00000000"),
        {"e": "markPriceUpdate"},
        "markPriceUpdate",
        17,
        None,
        [mark(28, p="3.00000000")],
    ]
    return items


def oversized_frame(combined: bool, stream_name: str, event_time: int) -> str:
    """A syntactically valid push above 1 MB whose only item is poisoned."""
    padding = "x" * OVERSIZED_FRAME_BYTES
    array = '[{"e":"24hrTicker","E":%d,"s":"BTCUSDT","p":"-999.00000000","pad":"%s"}]' % (event_time, padding)
    return '{"stream":"%s","data":%s}' % (stream_name, array) if combined else array


def fault_summary(action: Mapping[str, Any]) -> str:
    details = ", ".join(f"{key}={value}" for key, value in action.items() if key not in ("fault", "on"))
    state = "on" if action.get("on", True) else "off"
    return f"{action['fault']} {state}" + (f" ({details})" if details else "")


def parse_bool_text(text: Optional[str]) -> bool:
    """For query-string parameters."""
    return _as_bool(text if text is not None else True, "on")


def exchange_info_garbage(kind: str, good_body: str) -> Tuple[int, str, str]:
    """(status, body, content type) of a bad exchangeInfo answer; `good_body` is the real answer's JSON."""
    if kind == "html":
        return 200, "<!DOCTYPE html><html><body><h1>System maintenance</h1></body></html>\n", "text/html"
    if kind == "truncated":
        return 200, good_body[: len(good_body) // 2], "application/json"
    payload = json.loads(good_body)
    symbols = payload["symbols"]
    if kind == "not_object":
        return 200, json.dumps(symbols[:3]), "application/json"
    if kind == "no_symbols":
        del payload["symbols"]
    elif kind == "empty":
        payload["symbols"] = []
    elif kind == "no_perpetuals":
        payload["symbols"] = [entry for entry in symbols if not entry["contractType"].endswith("PERPETUAL")]
    elif kind == "too_many":
        template = next(entry for entry in symbols if entry["contractType"] == "PERPETUAL")
        payload["symbols"] = symbols + [dict(template, symbol="FAKE%05dUSDT" % n, pair="FAKE%05dUSDT" % n)
                                        for n in range(5_001)]
    elif kind == "malformed_entries":
        bad: List[Any] = [
            None, 17, "BTCUSDT", [], {},
            {"symbol": 123, "contractType": "PERPETUAL", "status": "TRADING"},
            {"symbol": "NOSTATUSUSDT", "contractType": "PERPETUAL"},
            {"symbol": "BADTYPEUSDT", "contractType": ["PERPETUAL"], "status": "TRADING"},
            {"symbol": "", "contractType": "PERPETUAL", "status": "TRADING"},
            {"symbol": "X" * 300 + "USDT", "contractType": "PERPETUAL", "status": "TRADING"},
            {"symbol": "LOWER-case usdt", "contractType": "PERPETUAL", "status": "TRADING"},
        ]
        payload["symbols"] = bad[:6] + symbols + bad[6:]
    elif kind == "shrunk":
        perpetuals = [entry for entry in symbols if entry["contractType"].endswith("PERPETUAL")
                      and entry["status"] == "TRADING"]
        keep = {entry["symbol"] for entry in perpetuals[: len(perpetuals) // 3]} | {"BTCUSDT", "ETHUSDT"}
        payload["symbols"] = [entry for entry in symbols if entry["symbol"] in keep]
    return 200, json.dumps(payload, separators=(",", ":")), "application/json"
