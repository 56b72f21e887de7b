"""In-process tests of the daemon's universe handling (issue 12): filtering, delistings, expiry, gap measurement."""

from __future__ import annotations

import json
import time

import funding_daemon_feed
import funding_state
import funding_universe
import pytest
from funding_daemon_slots import overflow_url

E = 1_764_724_344_000
T = 1_764_748_800_000


def item(symbol, **extra):
    return {"e": "markPriceUpdate", "E": E, "s": symbol, "p": "1.5", "i": "1.4", "r": "0.0001", "T": T, **extra}


def array_frame(*items):
    return json.dumps({"stream": "!markPrice@arr", "data": list(items)})


def universe_of(*entries):
    return funding_universe.parse_exchange_info({"symbols": [
        {"symbol": s, "contractType": t, "status": st, "underlyingType": "COIN", "quoteAsset": "USDT",
         "marginAsset": "USDT"} for s, t, st in entries]})


@pytest.fixture
def feed():
    return funding_daemon_feed.FeedState({}, funding_state.new_connection_status())


def test_rows_outside_the_universe_are_ignored_and_counted_by_reason(feed):
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING"), ("OLDUSDT", "PERPETUAL", "SETTLING"),
                                    ("AUSDT_260925", "CURRENT_QUARTER", "TRADING")), 1.0)
    feed.apply_frame(array_frame(item("AUSDT"), item("OLDUSDT"), item("NOPEUSDT"), item("BTCUSD_PERP", st=2),
                                 item("AUSDT_260925", r="", T=0)))
    assert set(feed.funding) == {"AUSDT"}
    assert feed.funding["AUSDT"]["contractType"] == "PERPETUAL"
    status = feed.status
    counts = {r: status["items_ignored_" + r] for r in funding_universe.IGNORE_REASONS}
    assert counts == {"coin_m": 1, "settling": 1, "not_trading": 0, "dated": 1, "unknown": 1}


def test_without_a_universe_every_row_is_served(feed):
    feed.apply_frame(array_frame(item("AUSDT"), item("NOPEUSDT")))
    assert set(feed.funding) == {"AUSDT", "NOPEUSDT"}


def test_a_new_universe_removes_and_notes_delisted_symbols_and_forgets_relisted_ones(feed):
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING"), ("BUSDT", "PERPETUAL", "TRADING")), 1.0)
    feed.apply_frame(array_frame(item("AUSDT"), item("BUSDT")))
    change = feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING"), ("BUSDT", "PERPETUAL", "SETTLING")),
                                 2.0)
    assert change.left == ["BUSDT"] and change.removed == ["BUSDT"]
    assert set(feed.funding) == {"AUSDT"} and set(feed.delisted) == {"BUSDT"}
    assert feed.status["symbols_removed"] == 1
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING"), ("BUSDT", "PERPETUAL", "TRADING")), 3.0)
    assert feed.delisted == {}


def test_a_first_universe_drops_records_that_never_were_contracts_without_noting_them(feed):
    feed.apply_frame(array_frame(item("AUSDT"), item("JUNKUSDT"), item("OLDUSDT")))
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING"), ("OLDUSDT", "PERPETUAL", "SETTLING")), 1.0)
    assert set(feed.funding) == {"AUSDT"}
    assert set(feed.delisted) == {"OLDUSDT"}, "listed as SETTLING: delisted; never listed: just dropped"


def test_delisted_entries_are_kept_seven_days():
    now = time.time()
    delisted = {"A": now - 7 * 86400 + 60, "B": now - 7 * 86400 - 60}
    assert funding_daemon_feed.prune_delisted(delisted, now) == 1 and set(delisted) == {"A"}


def test_without_a_universe_symbols_expire_counted_from_the_start_at_the_earliest(feed):
    feed.apply_frame(array_frame(item("AUSDT"), item("BUSDT")))
    feed.funding["BUSDT"] = dict(feed.funding["BUSDT"], updatedAt=time.time() - 7200)
    assert feed.expire_symbols(3600, started_at=time.time() - 10) == [], "the daemon started 10 s ago"
    assert feed.expire_symbols(3600, started_at=time.time() - 7200) == ["BUSDT"]
    assert set(feed.funding) == {"AUSDT"} and "BUSDT" in feed.delisted
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING")), 1.0)
    feed.funding["AUSDT"] = dict(feed.funding["AUSDT"], updatedAt=0.0)
    assert feed.expire_symbols(3600, started_at=0.0) == [], "with a universe, only the universe decides"


def test_gaps_are_universe_symbols_the_array_did_not_deliver_within_the_grace(feed):
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING"), ("XAUUSDT", "TRADIFI_PERPETUAL", "TRADING")),
                        1.0)
    since = time.monotonic()
    feed.apply_frame(array_frame(item("AUSDT")))
    assert feed.gap_symbols(since, 5.0, since + 1.0) == frozenset(), "still within the grace"
    assert feed.gap_symbols(since, 5.0, since + 6.0) == {"XAUUSDT"}
    feed.apply_frame(json.dumps({"stream": "xauusdt@markPrice@1s", "data": item("XAUUSDT")}))
    assert feed.gap_symbols(since, 5.0, since + 6.0) == {"XAUUSDT"}, "a per-symbol stream is not the array"
    assert feed.funding["XAUUSDT"]["contractType"] == "TRADIFI_PERPETUAL"


def test_a_symbol_the_array_stops_carrying_becomes_a_gap_after_the_absence_limit(feed):
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING"), ("BUSDT", "PERPETUAL", "TRADING")), 1.0)
    since = time.monotonic()
    feed.apply_frame(array_frame(item("AUSDT"), item("BUSDT")))
    later = since + funding_daemon_feed.ARRAY_ABSENCE_SECONDS + 1
    feed.array_seen["AUSDT"] = later - 1  # still carried; BUSDT was last seen at `since`
    assert feed.gap_symbols(since, 5.0, since + 6.0) == frozenset()
    assert feed.gap_symbols(since, 5.0, later) == {"BUSDT"}


def test_a_listing_waits_for_its_own_grace_before_it_counts_as_a_gap(feed):
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING")), 1.0)
    since = time.monotonic() - 100
    feed.apply_frame(array_frame(item("AUSDT")))
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING"), ("NEWUSDT", "PERPETUAL", "TRADING")), 2.0)
    now = time.monotonic()
    assert feed.gap_symbols(since, 5.0, now) == frozenset(), "listed just now: the array gets its chance"
    assert feed.gap_symbols(since, 5.0, now + 6.0) == {"NEWUSDT"}


@pytest.mark.parametrize(("url", "overflow"), [
    ("wss://fstream.binance.com/market/stream?streams=!markPrice@arr", "wss://fstream.binance.com/market/stream"),
    ("wss://fstream.binance.com/market/ws/!markPrice@arr@1s", "wss://fstream.binance.com/market/ws"),
])
def test_overflow_connections_use_the_same_path_family_without_the_array(url, overflow):
    assert overflow_url(url) == overflow


def test_the_state_file_carries_the_universe_and_the_delisted_map(feed):
    feed.apply_universe(universe_of(("AUSDT", "PERPETUAL", "TRADING")), 123.0)
    feed.delisted["OLDUSDT"] = time.time()
    payload = funding_state.decode_state(funding_state.encode_payload(feed.payload()))
    assert funding_state.universe_of(payload) == {"AUSDT": {"contractType": "PERPETUAL", "underlyingType": "COIN",
                                                            "quoteAsset": "USDT", "marginAsset": "USDT"}}
    assert funding_state.universe_fetched_at(payload) == 123.0
    assert set(funding_state.delisted_of(payload)) == {"OLDUSDT"}
