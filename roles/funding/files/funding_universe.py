"""The contract universe: which symbols Binance trades today as perpetuals, from REST exchangeInfo.

Pure functions, no I/O. `parse_exchange_info` turns the body of
`GET /fapi/v1/exchangeInfo` into a `Universe` (symbol -> contract facts) plus
why every other listed symbol is not a contract to serve, or raises
`UniverseError` when the answer as a whole is unusable (not an object, no
`symbols` list, no perpetual at all, more than MAX_LISTED_SYMBOLS entries).
A malformed entry is skipped and counted, never fatal.

A symbol belongs to the universe when its `status` is `TRADING` and its
`contractType` ends in `PERPETUAL` (`PERPETUAL`, `TRADIFI_PERPETUAL`, and any
later perpetual type Binance adds).

`UniverseGate` decides when a freshly parsed universe replaces the current
one: at once, unless it would remove more than half of the known symbols, in
which case it waits for a second, agreeing answer (a broken answer must not
wipe the state).

`ignore_reason` names why a stream row is not served once a universe is known:
"coin_m" (a row marked `st: 2`), "settling" (listed, status SETTLING),
"not_trading" (listed, another status such as PENDING_TRADING), "dated" (listed
with a delivery contract type) or "unknown" (not listed at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Mapping, Optional, Tuple

TRADING = "TRADING"
SETTLING = "SETTLING"
PERPETUAL_SUFFIX = "PERPETUAL"
MAX_LISTED_SYMBOLS = 5000
SYMBOL_PATTERN = re.compile(r"[A-Z0-9_]{1,40}")
FIELD_PATTERN = re.compile(r"[A-Z0-9_]{1,40}")
# The facts kept per contract; exactly the keys of each universe entry.
CONTRACT_KEYS = ("contractType", "underlyingType", "quoteAsset", "marginAsset")
# Names the API accepts in its filters even before a universe lists them (binance-protocol.md section 4).
KNOWN_CONTRACT_TYPES = ("PERPETUAL", "TRADIFI_PERPETUAL")
KNOWN_UNDERLYING_TYPES = ("COIN", "EQUITY", "COMMODITY", "INDEX")
TRADIFI_CONTRACT_TYPE = "TRADIFI_PERPETUAL"

# Reasons a row is ignored (the label values of funding_daemon_items_ignored_total).
IGNORE_COIN_M = "coin_m"
IGNORE_SETTLING = "settling"
IGNORE_NOT_TRADING = "not_trading"
IGNORE_DATED = "dated"
IGNORE_UNKNOWN = "unknown"
IGNORE_REASONS = (IGNORE_COIN_M, IGNORE_SETTLING, IGNORE_NOT_TRADING, IGNORE_DATED, IGNORE_UNKNOWN)
COIN_M_MARKER = 2  # `st` of a COIN-M row seen on the USDⓈ-M array

Contract = Dict[str, str]


class UniverseError(ValueError):
    """The exchangeInfo answer as a whole cannot be used; the last good universe stays."""


@dataclass
class Universe:
    """The TRADING perpetuals (symbol -> contract facts) and why the other listed symbols are excluded."""

    contracts: Dict[str, Contract]
    excluded: Dict[str, str] = field(default_factory=dict)  # listed symbol -> ignore reason
    bad_entries: int = 0
    bad_entry_example: Optional[str] = None

    @property
    def symbols(self) -> FrozenSet[str]:
        return frozenset(self.contracts)

    def tradifi_count(self) -> int:
        return sum(1 for c in self.contracts.values() if c.get("contractType") == TRADIFI_CONTRACT_TYPE)


def is_perpetual(contract_type: str) -> bool:
    return contract_type.endswith(PERPETUAL_SUFFIX)


def _field(entry: Mapping[str, Any], key: str, required: bool) -> Optional[str]:
    value = entry.get(key)
    if value is None or value == "":
        if required:
            raise ValueError("%s is missing" % key)
        return ""
    if not isinstance(value, str) or not FIELD_PATTERN.fullmatch(value):
        raise ValueError("%s is %.40r" % (key, value))
    return value


def parse_entry(entry: Any) -> Tuple[str, str, Contract]:
    """(symbol, status, contract facts) of one `symbols[]` entry; ValueError when it is malformed."""
    if not isinstance(entry, dict):
        raise ValueError("entry is %s, not an object" % type(entry).__name__)
    symbol = entry.get("symbol")
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValueError("symbol is %.40r" % (symbol,))
    try:
        status = _field(entry, "status", True)
        contract = {
            "contractType": _field(entry, "contractType", True),
            "underlyingType": _field(entry, "underlyingType", False),
            "quoteAsset": _field(entry, "quoteAsset", True),
            "marginAsset": _field(entry, "marginAsset", False),
        }
    except ValueError as exc:
        raise ValueError("%s: %s" % (symbol, exc)) from None
    return symbol, status or "", contract  # type: ignore[return-value]


def parse_exchange_info(body: Any, max_symbols: int = MAX_LISTED_SYMBOLS) -> Universe:
    """The universe of one exchangeInfo body; UniverseError when the body as a whole is unusable."""
    if not isinstance(body, dict):
        raise UniverseError("exchangeInfo is %s, not an object" % type(body).__name__)
    entries = body.get("symbols")
    if not isinstance(entries, list):
        raise UniverseError("exchangeInfo has no symbols list")
    if len(entries) > max_symbols:
        raise UniverseError("exchangeInfo lists %d symbols (more than %d)" % (len(entries), max_symbols))
    universe = Universe(contracts={})
    for entry in entries:
        try:
            symbol, status, contract = parse_entry(entry)
        except ValueError as exc:
            universe.bad_entries += 1
            if universe.bad_entry_example is None:
                universe.bad_entry_example = str(exc)
            continue
        if symbol in universe.contracts or symbol in universe.excluded:
            universe.bad_entries += 1
            if universe.bad_entry_example is None:
                universe.bad_entry_example = "%s listed twice" % symbol
            continue
        if not is_perpetual(contract["contractType"]):
            universe.excluded[symbol] = IGNORE_DATED
        elif status == TRADING:
            universe.contracts[symbol] = contract
        elif status == SETTLING:
            universe.excluded[symbol] = IGNORE_SETTLING
        else:
            universe.excluded[symbol] = IGNORE_NOT_TRADING
    if not universe.contracts:
        raise UniverseError("exchangeInfo lists no TRADING perpetual (%d entries, %d malformed)"
                            % (len(entries), universe.bad_entries))
    return universe


def ignore_reason(symbol: str, market_marker: Optional[int], excluded: Mapping[str, str]) -> str:
    """Why a row for `symbol` (outside the universe) is not served."""
    if market_marker == COIN_M_MARKER:
        return IGNORE_COIN_M
    return excluded.get(symbol, IGNORE_UNKNOWN)


@dataclass(frozen=True)
class GateDecision:
    apply: bool
    removed: FrozenSet[str]
    added: FrozenSet[str]
    held_back: bool = False  # a large removal waiting for a second answer


class UniverseGate:
    """Applies a new universe at once, except one that removes more than half of the known symbols:
    that one waits until the next refresh brings the same symbol set again."""

    def __init__(self, max_removed_fraction: float = 0.5) -> None:
        self.max_removed_fraction = max_removed_fraction
        self._held: Optional[FrozenSet[str]] = None

    @property
    def holding(self) -> bool:
        return self._held is not None

    def decide(self, current: Optional[FrozenSet[str]], candidate: FrozenSet[str]) -> GateDecision:
        if current is None:
            self._held = None
            return GateDecision(True, frozenset(), candidate)
        removed = current - candidate
        added = candidate - current
        if current and len(removed) > len(current) * self.max_removed_fraction:
            if self._held == candidate:
                self._held = None
                return GateDecision(True, removed, added)
            self._held = candidate
            return GateDecision(False, removed, added, held_back=True)
        self._held = None
        return GateDecision(True, removed, added)

