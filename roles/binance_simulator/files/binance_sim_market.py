"""The simulated USDⓈ-M futures market: random-walk quotes of the universe's contracts and their wire formats.

One `Market` is shared by every connection and by REST, so what the streams push and what REST reports agree:
a quote changes only when a tick advances it, and a tick's values are the ones pushed.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any, Dict, Iterable, List, Optional

from binance_sim_funding import FundingClock, FundingLedger, late_ms, prefill, switch_interval
from binance_sim_universe import (
    ASSETS,
    BASELINE_FUNDING_RATE,
    DEFAULT_FUNDING_INTERVAL_HOURS,
    LISTABLE_CONTRACT_TYPES,
    PERPETUAL,
    RATE_LIMITS,
    SETTLING,
    TRADIFI_PERPETUAL,
    TRADING,
    UNDERLYING_TYPES,
    SymbolSpec,
    build_universe,
    exchange_info_entry,
    make_spec,
)

HOUR_MS = 3_600_000
INTEREST_RATE_TEXT = "0.00010000"
NO_FUNDING_RATE_TEXT = "0.00000000"


class Quote:
    """The values of one symbol as last published (pushed), with their wire texts."""

    __slots__ = ("mark", "index", "settle", "rate", "basis", "next_funding_time", "event_time",
                 "mark_text", "index_text", "settle_text", "rate_text", "item", "encoded")

    def __init__(self) -> None:
        self.mark = 0.0
        self.index = 0.0
        self.settle = 0.0
        self.rate = 0.0
        self.basis = 0.0
        self.next_funding_time = 0
        self.event_time = 0
        self.mark_text = ""
        self.index_text = ""
        self.settle_text = ""
        self.rate_text = ""
        self.item: Dict[str, Any] = {}
        self.encoded = ""  # the item as JSON, made on first use after each publish


def format_price(value: float, decimals: int) -> str:
    """Binance sends prices rounded to the tick and printed with 8 decimals."""
    return "%.8f" % round(value, decimals)


def format_rate(value: float) -> str:
    text = "%.8f" % value
    return "0.00000000" if text == "-0.00000000" else text


def next_funding_time_ms(now_ms: int, interval_hours: int) -> int:
    """The next funding boundary strictly after now, aligned to UTC multiples of the interval."""
    period = interval_hours * HOUR_MS
    return (now_ms // period + 1) * period


class MarketError(ValueError):
    """A listing or delisting that the market cannot perform."""


class Market:
    """Shared market state. `tick(shard)` advances and publishes one shard; everything else reads.

    Every symbol belongs to one of `shard_count` shards and is ticked with it; the all-market array carries the
    symbols whose spec says `on_array` (plus, while `array_tradfi` is set, TradFi contracts of those underlyings).
    """

    shard_count = 2

    def __init__(self, seed: int, symbol_count: int, now_ms: int, tradfi_count: Optional[int] = None, *,
                 funding_period_seconds: Optional[float] = None, funding_history_hours: float = 0.0) -> None:
        self.seed = seed
        self.funding_clock = FundingClock(funding_period_seconds)
        self.ledger = FundingLedger()
        self.rng = random.Random(seed ^ 0x5EED)
        self.listing_rng = random.Random(seed ^ 0x11571)
        universe = build_universe(seed, symbol_count, tradfi_count)
        self.specs: Dict[str, SymbolSpec] = {spec.symbol: spec for spec in universe}
        self.quotes: Dict[str, Quote] = {}
        self.shards: List[List[str]] = [[] for _ in range(self.shard_count)]
        self.array_shards: List[List[str]] = [[] for _ in range(self.shard_count)]
        self.array_tradfi: Optional[set] = None  # underlying types of TradFi contracts put on the array
        self.frozen = False
        self.ticks = 0
        self.version = 0  # bumps whenever exchangeInfo or the array's membership changes
        self.changes: List[Dict[str, Any]] = []  # listings and delistings made at run time
        self._encoded: Dict[int, str] = {}  # shard -> its JSON array, until the shard next changes
        self._exchange_info_symbols: Optional[str] = None
        for spec in self.specs.values():
            self._add_quote(spec, now_ms)
        self._rebuild_array()
        if funding_history_hours > 0:
            prefill(self.ledger, self.specs.values(), self.funding_clock, now_ms, hours=funding_history_hours,
                    seed=seed)

    def _add_quote(self, spec: SymbolSpec, now_ms: int) -> None:
        self.shards[spec.shard].append(spec.symbol)
        quote = Quote()
        quote.mark = spec.base_price * math.exp(self.rng.gauss(0.0, 0.01))
        quote.basis = self.rng.gauss(0.0, 0.0004)
        quote.rate = BASELINE_FUNDING_RATE if spec.sticky_funding else spec.funding_target
        self.quotes[spec.symbol] = quote
        self._publish(spec, quote, now_ms)

    # --- membership ---------------------------------------------------------------------------------------------

    def carried_by_array(self, spec: SymbolSpec) -> bool:
        if spec.silent:
            return False
        if spec.tradfi and self.array_tradfi is not None:
            return spec.underlying_type in self.array_tradfi or "ALL" in self.array_tradfi
        return spec.on_array

    def streamable(self, spec: SymbolSpec) -> bool:
        """Whether `<symbol>@markPrice` delivers rows: every listed contract that has not gone silent."""
        return spec.listed and not spec.silent

    def _rebuild_array(self) -> None:
        for shard in range(self.shard_count):
            self.array_shards[shard] = [s for s in self.shards[shard] if self.carried_by_array(self.specs[s])]
        self._encoded.clear()
        self._exchange_info_symbols = None
        self.version += 1

    def set_array_tradfi(self, underlying_types: Optional[Iterable[str]]) -> None:
        self.array_tradfi = None if underlying_types is None else {u.upper() for u in underlying_types}
        self._rebuild_array()

    def list_symbol(self, symbol: str, *, contract_type: str, underlying_type: str, now_ms: int,
                    price: Optional[float] = None, interval_hours: Optional[int] = None) -> SymbolSpec:
        """A new TRADING contract (or a SETTLING one trading again), on exchangeInfo and its streams at once."""
        if contract_type not in LISTABLE_CONTRACT_TYPES:
            raise MarketError(f"contractType must be one of {', '.join(LISTABLE_CONTRACT_TYPES)}")
        if underlying_type not in UNDERLYING_TYPES:
            raise MarketError(f"underlyingType must be one of {', '.join(UNDERLYING_TYPES)}")
        spec = self.specs.get(symbol)
        if spec is not None:
            if not spec.listed or spec.status == TRADING:
                raise MarketError(f"{symbol} is already listed and trading" if spec.listed
                                  else f"{symbol} is a COIN-M row; it cannot be listed here")
            spec.status, spec.silent = TRADING, False
            action = "relisted"
        else:
            quote_asset = "USDC" if symbol.endswith("USDC") else "USDT"
            sub_type = {"COIN": "Layer-1", "EQUITY": "Stock", "COMMODITY": "Metal", "INDEX": "Index"}[underlying_type]
            spec = make_spec(self.listing_rng, symbol, price or 10 ** self.listing_rng.uniform(-1.0, 2.5),
                             quote_asset=quote_asset, contract_type=contract_type, status=TRADING,
                             underlying_type=underlying_type, sub_type=[sub_type], named=False,
                             position=len(self.specs), interval=interval_hours)
            spec.on_array = contract_type == PERPETUAL
            spec.onboard_date = now_ms
            spec.shard = len(self.specs) % self.shard_count
            self.specs[symbol] = spec
            self._add_quote(spec, now_ms)
            action = "listed"
        self._publish(spec, self.quotes[symbol], now_ms)
        self._rebuild_array()
        self.changes.append({"action": action, "symbol": symbol, "contractType": spec.contract_type,
                             "underlyingType": spec.underlying_type, "time": now_ms})
        return spec

    def delist_symbol(self, symbol: str, now_ms: int, rows: str = "no_funding") -> SymbolSpec:
        """TRADING → SETTLING. rows=no_funding: its rows keep flowing with r "0.00000000" and T 0; rows=stop: none."""
        spec = self.specs.get(symbol)
        if spec is None or not spec.listed:
            raise MarketError(f"{symbol} is not a listed contract")
        if spec.status != TRADING:
            raise MarketError(f"{symbol} is {spec.status}, not TRADING")
        spec.status = SETTLING
        spec.silent = rows == "stop"
        self._publish(spec, self.quotes[symbol], now_ms)
        self._rebuild_array()
        self.changes.append({"action": "delisted", "symbol": symbol, "rows": rows, "time": now_ms})
        return spec

    # --- counts -------------------------------------------------------------------------------------------------

    @property
    def symbol_count(self) -> int:
        """Contracts in exchangeInfo."""
        return sum(1 for spec in self.specs.values() if spec.listed)

    @property
    def perpetual_count(self) -> int:
        """TRADING perpetuals in exchangeInfo (TradFi included): what a client must serve."""
        return sum(1 for spec in self.specs.values() if spec.trading_perpetual)

    def universe(self) -> Dict[str, Any]:
        """Who is who: the lists a test compares a client against."""
        specs = list(self.specs.values())
        array = [s for shard in self.array_shards for s in shard]
        trading = sorted(s.symbol for s in specs if s.trading_perpetual)
        lists = {
            "tradingPerpetuals": trading,
            "tradfi": sorted(s.symbol for s in specs if s.trading_perpetual and s.tradfi),
            "arraySymbols": sorted(array),
            "arrayPerpetuals": sorted(s for s in array if self.specs[s].trading_perpetual),
            "notOnArray": sorted(s.symbol for s in specs if s.trading_perpetual and not self.carried_by_array(s)),
            "settling": sorted(s.symbol for s in specs if s.listed and s.status == SETTLING),
            "pendingTrading": sorted(s.symbol for s in specs if s.listed and s.status not in (TRADING, SETTLING)),
            "dated": sorted(s.symbol for s in specs if s.listed and not s.perpetual_type),
            "coinM": sorted(s.symbol for s in specs if not s.listed),
        }
        counts = {name: len(values) for name, values in lists.items()}
        counts["exchangeInfo"] = self.symbol_count
        by_type: Dict[str, int] = {}
        for spec in specs:
            if spec.trading_perpetual:
                key = f"{spec.contract_type}/{spec.underlying_type}"
                by_type[key] = by_type.get(key, 0) + 1
        return {**lists, "counts": counts, "tradingPerpetualsByType": by_type, "changes": list(self.changes),
                "version": self.version}

    # --- ticks --------------------------------------------------------------------------------------------------

    def tick(self, shard: int, now_ms: int) -> None:
        """Random-walk every symbol of one shard and publish its new values (unless frozen)."""
        self.ticks += 1
        if self.frozen:
            return
        gauss = self.rng.gauss
        for symbol in self.shards[shard]:
            spec = self.specs[symbol]
            quote = self.quotes[symbol]
            if quote.next_funding_time and now_ms >= quote.next_funding_time and spec.funded:
                self.settle(spec, quote, now_ms)
            deviation = math.log(quote.mark / spec.base_price)
            step = gauss(0.0, spec.volatility) - 0.002 * deviation
            quote.mark = spec.base_price * math.exp(max(-0.5, min(0.5, deviation + step)))
            quote.basis = max(-0.004, min(0.004, 0.9 * quote.basis + gauss(0.0, 0.0002)))
            if spec.funded and not spec.sticky_funding:
                rate = quote.rate + 0.05 * (spec.funding_target - quote.rate) + gauss(0.0, 0.00002)
                quote.rate = max(-spec.funding_cap, min(spec.funding_cap, rate))
            self._publish(spec, quote, now_ms)
        self._encoded.pop(shard, None)

    def _publish(self, spec: SymbolSpec, quote: Quote, now_ms: int) -> None:
        quote.event_time = now_ms
        quote.mark_text = format_price(quote.mark, spec.tick_decimals)
        quote.index = quote.mark / (1.0 + quote.basis)
        quote.index_text = "%.8f" % quote.index
        quote.settle = quote.index * (1.0 + quote.basis * 0.1)
        quote.settle_text = "%.8f" % quote.settle
        if not spec.funded:
            quote.rate_text = spec.dated_rate_text if not spec.perpetual_type else NO_FUNDING_RATE_TEXT
            quote.next_funding_time = 0
        else:
            quote.rate_text = format_rate(quote.rate)
            quote.next_funding_time = self.funding_clock.next_time(now_ms, spec.funding_interval_hours)
        item: Dict[str, Any] = {
            "e": "markPriceUpdate",
            "E": now_ms,
            "s": spec.symbol,
            "p": quote.mark_text,
            "ap": quote.mark_text,
            "P": quote.settle_text,
            "i": quote.index_text,
            "r": quote.rate_text,
            "T": quote.next_funding_time,
            "st": spec.stream_type,
        }
        if spec.omits_index:
            del item["i"]
        quote.item = item
        quote.encoded = ""

    # --- funding -----------------------------------------------------------------------------------------------

    def settle(self, spec: SymbolSpec, quote: Quote, now_ms: int) -> None:
        """Every funding time up to now: the live rate (last published) is settled; T moves on by the interval."""
        funding_time = quote.next_funding_time
        while 0 < funding_time <= now_ms:
            if spec.trading_perpetual:  # COIN-M rows on the array keep their T moving, but USDⓈ-M REST has no rows
                self.ledger.record(spec.symbol, funding_time + late_ms(spec.symbol), quote.rate_text, quote.mark_text)
                self.ledger.settled_live += 1
                switch_interval(spec, float(quote.rate_text), self.ledger, funding_time)
            funding_time = self.funding_clock.next_time(funding_time, spec.funding_interval_hours)
        quote.next_funding_time = funding_time

    def set_funding_rate(self, symbol: str, rate: float, now_ms: int) -> SymbolSpec:
        """Hold a symbol's rate at `rate` (clamped to its cap and floor) from now on; published at once."""
        spec = self.specs.get(symbol)
        if spec is None or not spec.trading_perpetual:
            raise MarketError(f"{symbol} is not a trading perpetual")
        quote = self.quotes[symbol]
        quote.rate = max(-spec.funding_cap, min(spec.funding_cap, rate))
        spec.funding_target = quote.rate
        spec.sticky_funding = True
        self._publish(spec, quote, now_ms)
        self._encoded.pop(spec.shard, None)
        return spec

    def funding_rates(self, symbol: Optional[str], start: Optional[int], end: Optional[int], limit: int,
                      now_ms: int) -> List[Dict[str, Any]]:
        return self.ledger.query(symbol, start, end, limit, now_ms)

    # --- wire formats -------------------------------------------------------------------------------------------

    def shard_items(self, shard: int) -> List[Dict[str, Any]]:
        return [self.quotes[symbol].item for symbol in self.array_shards[shard]]

    def array_perpetuals(self, shard: int) -> List[str]:
        return [symbol for symbol in self.array_shards[shard] if self.specs[symbol].trading_perpetual]

    def encode_shard(self, shard: int) -> str:
        encoded = self._encoded.get(shard)
        if encoded is None:
            encoded = self._encoded[shard] = json.dumps(self.shard_items(shard), separators=(",", ":"))
        return encoded

    def encode_item(self, symbol: str) -> str:
        """One symbol's latest row as JSON (the payload of `<symbol>@markPrice`)."""
        quote = self.quotes[symbol]
        if not quote.encoded:
            quote.encoded = json.dumps(quote.item, separators=(",", ":"))
        return quote.encoded

    def encode_exchange_info(self, now_ms: int) -> str:
        if self._exchange_info_symbols is None:
            entries = [exchange_info_entry(spec) for spec in self.specs.values() if spec.listed]
            self._exchange_info_symbols = json.dumps(entries, separators=(",", ":"))
        head = json.dumps({"timezone": "UTC", "serverTime": now_ms, "futuresType": "U_MARGINED",
                           "rateLimits": RATE_LIMITS, "exchangeFilters": [], "assets": ASSETS},
                          separators=(",", ":"))
        return head[:-1] + ',"symbols":' + self._exchange_info_symbols + "}"

    def rest_symbol(self, symbol: str) -> bool:
        """Whether USDⓈ-M REST knows the symbol (premiumIndex): listed and not gone silent."""
        spec = self.specs.get(symbol)
        return spec is not None and spec.listed and not spec.silent

    def premium_index_entry(self, symbol: str, skew_percent: float = 0.0) -> Dict[str, Any]:
        spec = self.specs[symbol]
        quote = self.quotes[symbol]
        mark_text = quote.mark_text
        if skew_percent:
            mark_text = format_price(quote.mark * (1.0 + skew_percent / 100.0), spec.tick_decimals)
        return {
            "symbol": symbol,
            "markPrice": mark_text,
            "indexPrice": quote.index_text,
            "estimatedSettlePrice": quote.settle_text,
            "lastFundingRate": quote.rate_text if spec.funded else "",
            "interestRate": INTEREST_RATE_TEXT if spec.funded else "",
            "nextFundingTime": quote.next_funding_time,
            "time": quote.event_time,
        }

    def premium_index(self, skew_percent: float = 0.0) -> List[Dict[str, Any]]:
        return [self.premium_index_entry(symbol, skew_percent) for symbol in self.specs if self.rest_symbol(symbol)]

    def funding_info(self) -> List[Dict[str, Any]]:
        """Only symbols whose interval differs from the default 8 h, like Binance's adjusted-symbols list."""
        return [
            {
                "symbol": spec.symbol,
                "adjustedFundingRateCap": "%.8f" % spec.funding_cap,
                "adjustedFundingRateFloor": "%.8f" % -spec.funding_cap,
                "fundingIntervalHours": spec.funding_interval_hours,
                "disclaimer": False,
            }
            for spec in self.specs.values()
            if spec.trading_perpetual and spec.funding_interval_hours != DEFAULT_FUNDING_INTERVAL_HOURS
        ]

    def snapshot(self, symbols: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, Any]]:
        """The values last pushed, as numbers parsed from the exact texts that went on the wire.

        `perpetual` is true for what a client must serve (a TRADING perpetual of exchangeInfo, TradFi included);
        `onArray` says whether !markPrice@arr carries the symbol; `listed` whether exchangeInfo lists it.
        """
        result: Dict[str, Dict[str, Any]] = {}
        for symbol in symbols if symbols is not None else self.specs:
            spec = self.specs[symbol]
            quote = self.quotes[symbol]
            result[symbol] = {
                "markPrice": float(quote.mark_text),
                "indexPrice": float(quote.index_text),
                "estimatedSettlePrice": float(quote.settle_text),
                "fundingRate": float(quote.rate_text) if spec.funded else None,
                "nextFundingTime": quote.next_funding_time,
                "eventTime": quote.event_time,
                "perpetual": spec.trading_perpetual,
                "fundingIntervalHours": spec.funding_interval_hours if spec.funded else None,
                "quoteAsset": spec.quote_asset,
                "contractType": spec.contract_type,
                "status": spec.status,
                "underlyingType": spec.underlying_type,
                "listed": spec.listed,
                "onArray": self.carried_by_array(spec),
                "streamType": spec.stream_type,
                "category": _category(spec),
                "indexInStream": not spec.omits_index,
                "shard": spec.shard,
            }
        return result


def _category(spec: SymbolSpec) -> str:
    if not spec.listed:
        return "coin-m"
    if not spec.perpetual_type:
        return "dated"
    if spec.tradfi:
        return {"EQUITY": "equity", "COMMODITY": "commodity", "INDEX": "index"}.get(spec.underlying_type, "tradfi")
    return "crypto"


__all__ = ["Market", "MarketError", "Quote", "build_universe", "format_price", "format_rate", "next_funding_time_ms",
           "TRADIFI_PERPETUAL", "PERPETUAL"]
