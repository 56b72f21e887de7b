"""The simulated exchange's contract universe: which contracts exist, their exchangeInfo metadata and the mix.

The default size mirrors a live count of Binance's USDⓈ-M `exchangeInfo` (2026-08-22): 872 contracts listed, of which
570 `PERPETUAL` and 170 `TRADIFI_PERPETUAL` TRADING, 127 SETTLING, 1 PENDING_TRADING (plus a few dated quarterlies).
Any other size keeps the same proportions. Besides the listed contracts the market carries a few COIN-M rows
(`BTCUSD_PERP`, `st: 2`) that only ever appear on the all-market array, as observed on the real stream.
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

DEFAULT_CONTRACT_COUNT = 872
DEFAULT_FUNDING_INTERVAL_HOURS = 8
BASELINE_FUNDING_RATE = 0.0001
PERPETUAL_DELIVERY_DATE = 4_133_404_800_000  # 2100-12-25, what Binance gives perpetuals
ONBOARD_BASE_MS = 1_569_398_400_000  # 2019-09-25, BTCUSDT's onboardDate

TRADING, SETTLING, PENDING_TRADING = "TRADING", "SETTLING", "PENDING_TRADING"
PERPETUAL, TRADIFI_PERPETUAL = "PERPETUAL", "TRADIFI_PERPETUAL"
CURRENT_QUARTER, NEXT_QUARTER = "CURRENT_QUARTER", "NEXT_QUARTER"
COIN_M_PERPETUAL = "COIN_M_PERPETUAL"  # never listed here: the rows Binance leaks from COIN-M
UNDERLYING_TYPES = ("COIN", "EQUITY", "COMMODITY", "INDEX")
LISTABLE_CONTRACT_TYPES = (PERPETUAL, TRADIFI_PERPETUAL)
STREAM_TYPE_USDM, STREAM_TYPE_COINM = 1, 2

# Shares of the live count, applied to any --symbols size.
TRADIFI_SHARE = 170 / 872
SETTLING_SHARE = 127 / 872

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
# TradFi perpetuals: (symbol, price, underlyingType, underlyingSubType)
NAMED_TRADFI = (
    ("XAUUSDT", 4_050.0, "COMMODITY", "Metal"), ("XAGUSDT", 48.5, "COMMODITY", "Metal"),
    ("XPTUSDT", 1_580.0, "COMMODITY", "Metal"), ("XPDUSDT", 1_320.0, "COMMODITY", "Metal"),
    ("WTIUSDT", 61.0, "COMMODITY", "Energy"), ("NATGASUSDT", 3.4, "COMMODITY", "Energy"),
    ("TSLAUSDT", 420.0, "EQUITY", "Stock"), ("NVDAUSDT", 182.0, "EQUITY", "Stock"),
    ("AAPLUSDT", 252.0, "EQUITY", "Stock"), ("MSTRUSDT", 310.0, "EQUITY", "Stock"),
    ("COINUSDT", 285.0, "EQUITY", "Stock"), ("HOODUSDT", 112.0, "EQUITY", "Stock"),
    ("AMZNUSDT", 231.0, "EQUITY", "Stock"), ("GOOGLUSDT", 248.0, "EQUITY", "Stock"),
    ("METAUSDT", 705.0, "EQUITY", "Stock"), ("MSFTUSDT", 505.0, "EQUITY", "Stock"),
    ("AMDUSDT", 240.0, "EQUITY", "Stock"), ("PLTRUSDT", 180.0, "EQUITY", "Stock"),
    ("NFLXUSDT", 1_150.0, "EQUITY", "Stock"), ("INTCUSDT", 37.0, "EQUITY", "Stock"),
    ("US500USDT", 6_700.0, "INDEX", "Index"), ("NAS100USDT", 24_500.0, "INDEX", "Index"),
)
# (symbol, price, contractType, status): quarterlies; the September ones have been delivered (SETTLING).
DATED_CONTRACTS = (
    ("BTCUSDT_261225", 92_100.0, CURRENT_QUARTER, TRADING), ("ETHUSDT_261225", 3_170.0, CURRENT_QUARTER, TRADING),
    ("BTCUSDT_270326", 93_400.0, NEXT_QUARTER, TRADING), ("ETHUSDT_270326", 3_215.0, NEXT_QUARTER, TRADING),
    ("BTCUSDT_260925", 90_900.0, CURRENT_QUARTER, SETTLING), ("ETHUSDT_260925", 3_130.0, CURRENT_QUARTER, SETTLING),
)
DELIVERY_DATES = {"260925": 1_790_323_200_000, "261225": 1_798_185_600_000, "270326": 1_806_048_000_000}
COIN_M_ROWS = (("BTCUSD_PERP", 90_020.0), ("ETHUSD_PERP", 3_101.5), ("BNBUSD_PERP", 620.1))
CRYPTO_SUBTYPES = (["Layer-1"], ["Layer-2"], ["Meme"], ["AI"], ["DeFi"], ["Gaming"], ["Infrastructure"], [])
RESERVED_NAMES = {"USDT", "USDC", "BUSD"}


@dataclass
class SymbolSpec:
    """One contract (or COIN-M row). `status` and the stream flags change when a fault lists or delists it."""

    symbol: str
    quote_asset: str
    contract_type: str
    status: str
    underlying_type: str
    underlying_sub_type: List[str]
    base_price: float
    tick_decimals: int
    volatility: float
    funding_interval_hours: int  # the interval it has while TRADING (dated contracts never fund)
    funding_cap: float
    funding_target: float
    sticky_funding: bool
    omits_index: bool
    dated_rate_text: str  # what a row without funding carries in `r`: "" or "0.00000000"
    shard: int
    listed: bool = True  # in exchangeInfo (COIN-M rows are not)
    on_array: bool = True  # carried by !markPrice@arr
    silent: bool = False  # no stream rows at all (a delisting with rows=stop)
    onboard_date: int = ONBOARD_BASE_MS
    delivery_date: int = PERPETUAL_DELIVERY_DATE
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def perpetual_type(self) -> bool:
        return self.contract_type.endswith("PERPETUAL")

    @property
    def tradfi(self) -> bool:
        return self.contract_type == TRADIFI_PERPETUAL

    @property
    def funded(self) -> bool:
        """Its rows carry a funding rate and a next funding time."""
        return self.perpetual_type and (self.status == TRADING or not self.listed)

    @property
    def trading_perpetual(self) -> bool:
        """What a client must serve: a listed perpetual that trades."""
        return self.listed and self.status == TRADING and self.perpetual_type

    @property
    def stream_type(self) -> int:
        return STREAM_TYPE_USDM if self.listed else STREAM_TYPE_COINM

    @property
    def base_asset(self) -> str:
        pair = self.symbol.split("_")[0]
        return pair[:-len(self.quote_asset)] if pair.endswith(self.quote_asset) else pair


def tick_decimals_for(price: float) -> int:
    """About six significant digits, like Binance's tick sizes (BTC 0.1, ETH 0.01, DOGE 0.000001)."""
    return max(0, min(8, 5 - math.floor(math.log10(price))))


def _random_names(rng: random.Random, taken: set, count: int, lengths: Tuple[int, ...], thousands: float) -> List[str]:
    names: List[str] = []
    while len(names) < count:
        base = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.choice(lengths)))
        if rng.random() < thousands:
            base = "1000" + base
        if base in RESERVED_NAMES:
            continue
        symbol = base + "USDT"
        if symbol in taken:
            continue
        taken.add(symbol)
        names.append(symbol)
    return names


def mix_for(contract_count: int, tradfi_count: Optional[int] = None) -> Dict[str, int]:
    """How many contracts of each kind a universe of `contract_count` holds (never fewer than the named ones).

    `tradfi_count` overrides the TradFi share (e.g. more than 1024 contracts that only per-symbol streams carry).
    """
    dated_trading = sum(1 for entry in DATED_CONTRACTS if entry[3] == TRADING)
    dated_settling = len(DATED_CONTRACTS) - dated_trading
    wanted = round(contract_count * TRADIFI_SHARE) if tradfi_count is None else tradfi_count
    tradfi = max(len(NAMED_TRADFI), wanted)
    settling = max(dated_settling + 1, round(contract_count * SETTLING_SHARE))
    pending = 1
    named_crypto = len(MAJOR_USDT) + len(MAJOR_USDC)
    crypto = max(named_crypto, contract_count - tradfi - settling - pending - dated_trading)
    return {"crypto": crypto, "tradfi": tradfi, "settling_perpetual": settling - dated_settling,
            "dated_trading": dated_trading, "dated_settling": dated_settling, "pending": pending}


def _funding_profile(rng: random.Random, interval: int) -> Tuple[float, float, bool]:
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
    return cap, max(-cap, min(cap, target)), sticky


def make_spec(rng: random.Random, symbol: str, price: float, *, quote_asset: str, contract_type: str, status: str,
              underlying_type: str, sub_type: List[str], named: bool, position: int,
              interval: Optional[int] = None) -> SymbolSpec:
    if interval is None:
        if contract_type == TRADIFI_PERPETUAL:
            interval = rng.choice((4, 8)) if not named else (8 if underlying_type != "EQUITY" else rng.choice((4, 8)))
        elif named:
            interval = DEFAULT_FUNDING_INTERVAL_HOURS
        else:
            interval = rng.choices((8, 4, 1), weights=(70, 22, 8))[0]
    cap, target, sticky = _funding_profile(rng, interval)
    suffix = symbol.split("_")[1] if "_" in symbol and contract_type != COIN_M_PERPETUAL else ""
    return SymbolSpec(
        symbol=symbol,
        quote_asset=quote_asset,
        contract_type=contract_type,
        status=status,
        underlying_type=underlying_type,
        underlying_sub_type=list(sub_type),
        base_price=price,
        tick_decimals=tick_decimals_for(price),
        volatility=0.0003 if named else rng.uniform(0.0004, 0.0025),
        funding_interval_hours=interval,
        funding_cap=cap,
        funding_target=target,
        sticky_funding=sticky,
        omits_index=(not named and position % 97 == 13),
        dated_rate_text="" if position % 2 == 0 else "0.00000000",
        # Uneven shards like the real stream's alternating 744/191-entry pushes.
        shard=0 if rng.random() < 0.8 else 1,
        onboard_date=ONBOARD_BASE_MS + int(rng.uniform(0, 2_200) * 86_400_000) if not named else ONBOARD_BASE_MS,
        delivery_date=DELIVERY_DATES.get(suffix, PERPETUAL_DELIVERY_DATE),
    )


def build_universe(seed: int, contract_count: int, tradfi_count: Optional[int] = None) -> List[SymbolSpec]:
    """A deterministic universe of about `contract_count` listed contracts, plus the COIN-M rows."""
    rng = random.Random(seed)
    mix = mix_for(contract_count, tradfi_count)
    taken = {s for s, _ in MAJOR_USDT} | {s for s, _ in MAJOR_USDC} | {entry[0] for entry in NAMED_TRADFI}
    taken |= {entry[0] for entry in DATED_CONTRACTS} | {s for s, _ in COIN_M_ROWS}
    specs: List[SymbolSpec] = []

    def add(symbol: str, price: float, quote: str, kind: Tuple[str, str, str], sub_type: List[str], *,
            named: bool) -> SymbolSpec:
        contract_type, status, underlying = kind
        spec = make_spec(rng, symbol, price, quote_asset=quote, contract_type=contract_type, status=status,
                         underlying_type=underlying, sub_type=sub_type, named=named, position=len(specs))
        specs.append(spec)
        return spec

    for symbol, price in MAJOR_USDT:
        add(symbol, price, "USDT", (PERPETUAL, TRADING, "COIN"), ["Layer-1"], named=True)
    for symbol, price in MAJOR_USDC:
        add(symbol, price, "USDC", (PERPETUAL, TRADING, "COIN"), ["Layer-1"], named=True)
    generated_crypto = mix["crypto"] - len(MAJOR_USDT) - len(MAJOR_USDC)
    for index, name in enumerate(_random_names(rng, taken, generated_crypto, (3, 3, 4, 4, 4, 5, 5, 6), 0.08)):
        price = 10 ** rng.uniform(-4.3, 2.7)
        symbol, quote = name, "USDT"
        if index % 17 == 5 and name[:-4] + "USDC" not in taken:  # a few also trade against USDC
            symbol, quote = name[:-4] + "USDC", "USDC"
            taken.add(symbol)
        add(symbol, price, quote, (PERPETUAL, TRADING, "COIN"), rng.choice(CRYPTO_SUBTYPES), named=False)

    for symbol, price, underlying, sub_type in NAMED_TRADFI:
        add(symbol, price, "USDT", (TRADIFI_PERPETUAL, TRADING, underlying), [sub_type], named=True)
    for symbol in _random_names(rng, taken, mix["tradfi"] - len(NAMED_TRADFI), (2, 3, 3, 4, 4), 0.0):
        underlying = rng.choices(("EQUITY", "COMMODITY", "INDEX"), weights=(85, 10, 5))[0]
        sub_type = {"EQUITY": "Stock", "COMMODITY": "Metal", "INDEX": "Index"}[underlying]
        add(symbol, 10 ** rng.uniform(0.8, 3.2), "USDT", (TRADIFI_PERPETUAL, TRADING, underlying), [sub_type],
            named=False)

    for symbol, price, contract_type, status in DATED_CONTRACTS:
        add(symbol, price, symbol.split("_")[0][-4:], (contract_type, status, "COIN"), [], named=True)

    delisted = _random_names(rng, taken, mix["settling_perpetual"] + mix["pending"], (3, 4, 4, 5, 6), 0.05)
    for index, symbol in enumerate(delisted[:mix["settling_perpetual"]]):
        spec = add(symbol, 10 ** rng.uniform(-4.0, 1.5), "USDT", (PERPETUAL, SETTLING, "COIN"),
                   rng.choice(CRYPTO_SUBTYPES), named=False)
        spec.on_array = index % 3 == 0  # some SETTLING rows still flow on the array, without funding
    for symbol in delisted[mix["settling_perpetual"]:]:
        spec = add(symbol, 10 ** rng.uniform(-3.0, 0.5), "USDT", (PERPETUAL, PENDING_TRADING, "COIN"), ["Layer-1"],
                   named=False)
        spec.on_array = False
        spec.onboard_date = PERPETUAL_DELIVERY_DATE // 2  # "soon"

    for spec in specs:
        if spec.tradfi:
            spec.on_array = False  # Binance: the all-market stream does not include TradFi contracts

    for symbol, price in COIN_M_ROWS:
        spec = add(symbol, price, "USD", (COIN_M_PERPETUAL, TRADING, "COIN"), [], named=True)
        spec.listed = False

    array_shards = {spec.shard for spec in specs if spec.on_array}
    if len(array_shards) < 2:
        first = next(spec for spec in specs if spec.on_array)
        last = next(spec for spec in reversed(specs) if spec.on_array)
        last.shard = 1 - first.shard
    return specs


def exchange_info_entry(spec: SymbolSpec) -> Dict[str, Any]:
    """One `symbols[]` entry of GET /fapi/v1/exchangeInfo, with Binance's keys."""
    tick = "%.*f" % (spec.tick_decimals, 10 ** -spec.tick_decimals) if spec.tick_decimals else "1"
    quantity_precision = max(0, min(3, 3 - spec.tick_decimals // 2))
    step = "%.*f" % (quantity_precision, 10 ** -quantity_precision) if quantity_precision else "1"
    return {
        "symbol": spec.symbol,
        "pair": spec.symbol.split("_")[0],
        "contractType": spec.contract_type,
        "deliveryDate": spec.delivery_date,
        "onboardDate": spec.onboard_date,
        "status": spec.status,
        "maintMarginPercent": "2.5000",
        "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base_asset,
        "quoteAsset": spec.quote_asset,
        "marginAsset": spec.quote_asset,
        "pricePrecision": spec.tick_decimals,
        "quantityPrecision": quantity_precision,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": spec.underlying_type,
        "underlyingSubType": list(spec.underlying_sub_type),
        "settlePlan": 0,
        "triggerProtect": "0.0500",
        "liquidationFee": "0.012500",
        "marketTakeBound": "0.05",
        "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "tickSize": tick, "minPrice": tick, "maxPrice": "%.*f" % (
                spec.tick_decimals, spec.base_price * 100)},
            {"filterType": "LOT_SIZE", "stepSize": step, "minQty": step, "maxQty": "1000000"},
            {"filterType": "MIN_NOTIONAL", "notional": "5"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
             "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                       "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
        "permissionSets": ["GRID", "COPY"],
    }


RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]
ASSETS = [
    {"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"},
    {"asset": "USDC", "marginAvailable": True, "autoAssetExchange": "-10000"},
    {"asset": "BTC", "marginAvailable": True, "autoAssetExchange": "-0.10000000"},
]
