"""The simulated USDⓈ-M futures market: symbol universe, random-walk quotes and their wire formats.

One `Market` is shared by every connection and by REST, so what the streams push and what REST reports agree:
a quote changes only when a tick advances it, and a tick's values are the ones pushed.
"""

from __future__ import annotations

import json
import math
import random
import string
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional

HOUR_MS = 3_600_000
DEFAULT_FUNDING_INTERVAL_HOURS = 8
INTEREST_RATE_TEXT = "0.00010000"
BASELINE_FUNDING_RATE = 0.0001

# (symbol, price) of well-known USDT perpetuals, at late-2026-like levels.
MAJOR_USDT = (
    ("BTCUSDT", 90_000.0), ("ETHUSDT", 3_100.0), ("SOLUSDT", 140.0), ("BNBUSDT", 620.0), ("DOGEUSDT", 0.15),
    ("XRPUSDT", 2.1), ("ADAUSDT", 0.62), ("AVAXUSDT", 24.0), ("LINKUSDT", 14.5), ("DOTUSDT", 4.4),
    ("LTCUSDT", 86.0), ("TRXUSDT", 0.26), ("TONUSDT", 3.1), ("SUIUSDT", 2.8), ("NEARUSDT", 2.9),
    ("APTUSDT", 5.4), ("ARBUSDT", 0.36), ("OPUSDT", 0.62), ("INJUSDT", 12.5), ("ATOMUSDT", 4.6),
    ("FILUSDT", 2.4), ("ETCUSDT", 16.0), ("BCHUSDT", 450.0), ("UNIUSDT", 7.6), ("AAVEUSDT", 225.0),
    ("HBARUSDT", 0.18), ("XLMUSDT", 0.31), ("ICPUSDT", 5.1), ("WLDUSDT", 1.2), ("ENAUSDT", 0.45),
    ("TIAUSDT", 2.2), ("SEIUSDT", 0.24), ("PENDLEUSDT", 3.9), ("JUPUSDT", 0.48), ("WIFUSDT", 0.72),
    ("1000PEPEUSDT", 0.0085), ("1000SHIBUSDT", 0.0125), ("1000BONKUSDT", 0.018), ("1000FLOKIUSDT", 0.08),
    ("1000SATSUSDT", 0.000042), ("1000LUNCUSDT", 0.052), ("1000XECUSDT", 0.021), ("1000000MOGUSDT", 0.62),
    ("1MBABYDOGEUSDT", 0.0012), ("1000RATSUSDT", 0.035),
)
MAJOR_USDC = (
    ("BTCUSDC", 90_010.0), ("ETHUSDC", 3_101.0), ("SOLUSDC", 140.1), ("BNBUSDC", 620.3), ("DOGEUSDC", 0.1501),
    ("XRPUSDC", 2.101), ("ADAUSDC", 0.6202), ("LINKUSDC", 14.51), ("AVAXUSDC", 24.02), ("LTCUSDC", 86.05),
    ("SUIUSDC", 2.801), ("WIFUSDC", 0.7203), ("1000PEPEUSDC", 0.008502), ("ENAUSDC", 0.4502), ("BCHUSDC", 450.2),
)
METAL_PERPS = (("XAUUSDT", 4_050.0), ("XAGUSDT", 48.5), ("XPTUSDT", 1_580.0), ("XPDUSDT", 1_320.0))
EQUITY_PERPS = (
    ("TSLAUSDT", 420.0), ("NVDAUSDT", 182.0), ("AAPLUSDT", 252.0), ("MSTRUSDT", 310.0), ("COINUSDT", 285.0),
    ("HOODUSDT", 112.0), ("AMZNUSDT", 231.0), ("GOOGLUSDT", 248.0), ("METAUSDT", 705.0), ("MSFTUSDT", 505.0),
)
DATED_CONTRACTS = (
    ("BTCUSDT_260925", 90_900.0), ("BTCUSDT_261225", 92_100.0), ("ETHUSDT_260925", 3_130.0),
    ("ETHUSDT_261225", 3_170.0), ("BNBUSDT_260925", 626.0), ("SOLUSDT_261225", 142.5),
    ("BTCUSDC_260925", 90_950.0), ("ETHUSDC_261225", 3_172.0),
)
RESERVED_NAMES = {"USDT", "USDC", "BUSD"}


@dataclass
class SymbolSpec:
    """What never changes about a symbol during a run."""

    symbol: str
    quote_asset: str
    category: str  # crypto | metal | equity | dated
    base_price: float
    tick_decimals: int
    volatility: float
    funding_interval_hours: Optional[int]  # None for dated contracts (no funding)
    funding_cap: float
    funding_target: float
    sticky_funding: bool
    omits_index: bool
    dated_rate_text: str  # what a dated contract carries in `r`: "" or "0.00000000"
    shard: int

    @property
    def perpetual(self) -> bool:
        return self.funding_interval_hours is not None


class Quote:
    """The values of one symbol as last published (pushed), with their wire texts."""

    __slots__ = ("mark", "index", "settle", "rate", "basis", "next_funding_time", "event_time",
                 "mark_text", "index_text", "settle_text", "rate_text", "item")

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


def tick_decimals_for(price: float) -> int:
    """About six significant digits, like Binance's tick sizes (BTC 0.1, ETH 0.01, DOGE 0.000001)."""
    return max(0, min(8, 5 - math.floor(math.log10(price))))


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


def _random_names(rng: random.Random, taken: set, count: int) -> List[str]:
    names: List[str] = []
    while len(names) < count:
        length = rng.choice((3, 3, 4, 4, 4, 5, 5, 6))
        base = "".join(rng.choice(string.ascii_uppercase) for _ in range(length))
        if rng.random() < 0.08:
            base = "1000" + base
        if base in RESERVED_NAMES:
            continue
        symbol = base + "USDT"
        if symbol in taken:
            continue
        taken.add(symbol)
        names.append(symbol)
    return names


def build_universe(seed: int, symbol_count: int) -> List[SymbolSpec]:
    """A deterministic symbol universe of about `symbol_count` contracts (never fewer than the named ones)."""
    rng = random.Random(seed)
    named: List[tuple] = []
    named += [(s, p, "USDT", "crypto") for s, p in MAJOR_USDT]
    named += [(s, p, "USDC", "crypto") for s, p in MAJOR_USDC]
    named += [(s, p, "USDT", "metal") for s, p in METAL_PERPS]
    named += [(s, p, "USDT", "equity") for s, p in EQUITY_PERPS]
    named += [(s, p, s.split("_")[0][-4:], "dated") for s, p in DATED_CONTRACTS]
    taken = {entry[0] for entry in named}
    generated = _random_names(rng, taken, max(0, symbol_count - len(named)))
    # A few generated USDT names also trade against USDC, like on the real exchange.
    entries = list(named)
    for index, symbol in enumerate(generated):
        price = 10 ** rng.uniform(-4.3, 2.7)
        if index % 17 == 5:
            usdc = symbol[:-4] + "USDC"
            if usdc not in taken:
                taken.add(usdc)
                entries.append((usdc, price, "USDC", "crypto"))
                continue
        entries.append((symbol, price, "USDT", "crypto"))

    specs: List[SymbolSpec] = []
    named_symbols = {entry[0] for entry in named}
    for position, (symbol, price, quote_asset, category) in enumerate(entries):
        is_named = symbol in named_symbols
        if category == "dated":
            interval: Optional[int] = None
        elif is_named:
            interval = DEFAULT_FUNDING_INTERVAL_HOURS if category != "equity" else rng.choice((4, 8))
        else:
            interval = rng.choices((8, 4, 1), weights=(70, 22, 8))[0]
        if interval == 1:
            cap = 0.005
        elif interval == 4:
            cap = rng.choice((0.02, 0.03))
        else:
            cap = rng.choice((0.02, 0.02, 0.03, 0.0075))
        sticky = rng.random() < 0.45
        if rng.random() < 0.15:
            target = -rng.uniform(0.00005, 0.0008)
        else:
            target = BASELINE_FUNDING_RATE + rng.uniform(-0.00005, 0.0004)
        volatility = 0.0003 if is_named else rng.uniform(0.0004, 0.0025)
        specs.append(SymbolSpec(
            symbol=symbol,
            quote_asset=quote_asset,
            category=category,
            base_price=price,
            tick_decimals=tick_decimals_for(price),
            volatility=volatility,
            funding_interval_hours=interval,
            funding_cap=cap,
            funding_target=max(-cap, min(cap, target)),
            sticky_funding=sticky,
            omits_index=(not is_named and position % 97 == 13),
            dated_rate_text="" if position % 2 == 0 else "0.00000000",
            # Uneven shards like the real stream's alternating 744/191-entry pushes.
            shard=0 if rng.random() < 0.8 else 1,
        ))
    if all(spec.shard == 0 for spec in specs) or all(spec.shard == 1 for spec in specs):
        specs[-1].shard = 1 - specs[0].shard
    return specs


class Market:
    """Shared market state. `tick(shard)` advances and publishes one shard; everything else reads."""

    shard_count = 2

    def __init__(self, seed: int, symbol_count: int, now_ms: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed ^ 0x5EED)
        self.specs: Dict[str, SymbolSpec] = {spec.symbol: spec for spec in build_universe(seed, symbol_count)}
        self.quotes: Dict[str, Quote] = {}
        self.shards: List[List[str]] = [[] for _ in range(self.shard_count)]
        self.frozen = False
        self.ticks = 0
        self._encoded: Dict[int, str] = {}  # shard -> its JSON array, until the shard next changes
        for spec in self.specs.values():
            self.shards[spec.shard].append(spec.symbol)
            quote = Quote()
            quote.mark = spec.base_price * math.exp(self.rng.gauss(0.0, 0.01))
            quote.basis = self.rng.gauss(0.0, 0.0004)
            quote.rate = BASELINE_FUNDING_RATE if spec.sticky_funding else spec.funding_target
            self.quotes[spec.symbol] = quote
            self._publish(spec, quote, now_ms)

    @property
    def symbol_count(self) -> int:
        return len(self.specs)

    @property
    def perpetual_count(self) -> int:
        return sum(1 for spec in self.specs.values() if spec.perpetual)

    def tick(self, shard: int, now_ms: int) -> None:
        """Random-walk every symbol of one shard and publish its new values (unless frozen)."""
        self.ticks += 1
        if self.frozen:
            return
        gauss = self.rng.gauss
        for symbol in self.shards[shard]:
            spec = self.specs[symbol]
            quote = self.quotes[symbol]
            deviation = math.log(quote.mark / spec.base_price)
            step = gauss(0.0, spec.volatility) - 0.002 * deviation
            quote.mark = spec.base_price * math.exp(max(-0.5, min(0.5, deviation + step)))
            quote.basis = max(-0.004, min(0.004, 0.9 * quote.basis + gauss(0.0, 0.0002)))
            if spec.perpetual and not spec.sticky_funding:
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
        if spec.funding_interval_hours is None:
            quote.rate_text = spec.dated_rate_text
            quote.next_funding_time = 0
        else:
            quote.rate_text = format_rate(quote.rate)
            quote.next_funding_time = next_funding_time_ms(now_ms, spec.funding_interval_hours)
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
            "st": "0",
        }
        if spec.omits_index:
            del item["i"]
        quote.item = item

    # --- wire formats -------------------------------------------------------------------------------------------

    def shard_items(self, shard: int) -> List[Dict[str, Any]]:
        return [self.quotes[symbol].item for symbol in self.shards[shard]]

    def encode_shard(self, shard: int) -> str:
        encoded = self._encoded.get(shard)
        if encoded is None:
            encoded = self._encoded[shard] = json.dumps(self.shard_items(shard), separators=(",", ":"))
        return encoded

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
            "lastFundingRate": quote.rate_text if spec.perpetual else "",
            "interestRate": INTEREST_RATE_TEXT if spec.perpetual else "",
            "nextFundingTime": quote.next_funding_time,
            "time": quote.event_time,
        }

    def premium_index(self, skew_percent: float = 0.0) -> List[Dict[str, Any]]:
        return [self.premium_index_entry(symbol, skew_percent) for symbol in self.specs]

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
            if spec.perpetual and spec.funding_interval_hours != DEFAULT_FUNDING_INTERVAL_HOURS
        ]

    def snapshot(self, symbols: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, Any]]:
        """The values last pushed, as numbers parsed from the exact texts that went on the wire."""
        result: Dict[str, Dict[str, Any]] = {}
        for symbol in symbols if symbols is not None else self.specs:
            spec = self.specs[symbol]
            quote = self.quotes[symbol]
            result[symbol] = {
                "markPrice": float(quote.mark_text),
                "indexPrice": float(quote.index_text),
                "estimatedSettlePrice": float(quote.settle_text),
                "fundingRate": float(quote.rate_text) if spec.perpetual else None,
                "nextFundingTime": quote.next_funding_time,
                "eventTime": quote.event_time,
                "perpetual": spec.perpetual,
                "fundingIntervalHours": spec.funding_interval_hours,
                "quoteAsset": spec.quote_asset,
                "category": spec.category,
                "indexInStream": not spec.omits_index,
                "shard": spec.shard,
            }
        return result
