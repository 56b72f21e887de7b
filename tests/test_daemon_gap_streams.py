"""In-process tests of funding_daemon_gap_streams: which symbols get their own stream, on which connection."""

from __future__ import annotations

import json
import logging
import threading
import time

import funding_daemon_log
import funding_state
import funding_subscriptions
import funding_universe
import pytest
from funding_daemon_connection import Connection
from funding_daemon_feed import FeedState
from funding_daemon_gap_streams import ARRAY_PUSHES_MEASURED, GapStreams
from funding_daemon_slots import Backoff, Slot, overflow_url

URL = "wss://fstream.binance.com/market/stream?streams=!markPrice@arr"
GRACE = 5.0
E = 1_764_724_344_000
T = 1_764_748_800_000


def universe_of(*symbols):
    return funding_universe.parse_exchange_info({"symbols": [
        {"symbol": s, "contractType": "PERPETUAL", "status": "TRADING", "underlyingType": "COIN",
         "quoteAsset": "USDT", "marginAsset": "USDT"} for s in symbols]})


def array_push(feed, *symbols):
    feed.apply_frame(json.dumps({"stream": "!markPrice@arr", "data": [
        {"e": "markPriceUpdate", "E": E, "s": s, "p": "1.5", "i": "1.4", "r": "0.0001", "T": T} for s in symbols]}))


def open_connection(feed, slot, number):
    """A connection as the supervisor sees it once open and delivering (its thread never started)."""
    connection = Connection(number, slot.url, "connect", feed, wake=threading.Event(), connect_timeout=1.0,
                            carries_array=slot.carries_array, streams=slot.streams)
    connection.state = Connection.OPEN
    connection.opened_at = connection.first_data_at = time.monotonic()
    slot.primary = connection
    return connection


def names(*symbols):
    return frozenset(funding_subscriptions.stream_name(s) for s in symbols)


@pytest.fixture
def feed():
    return FeedState({}, funding_state.new_connection_status())


@pytest.fixture
def slots(feed):
    slot = Slot(0, URL, Backoff(1.0, 60.0))
    open_connection(feed, slot, 1)
    return [slot]


@pytest.fixture
def gap_streams(feed):
    return GapStreams(feed, URL, GRACE, lambda: Backoff(1.0, 60.0))


def after_grace(slots):
    return slots[0].primary.opened_at + GRACE + 1


def test_nothing_is_subscribed_before_the_array_pushed_twice_in_the_current_spell(feed, slots, gap_streams):
    feed.apply_universe(universe_of("AUSDT", "XAUUSDT"), 1.0)
    gap_streams.reconcile(slots, after_grace(slots))  # the spell starts here
    for _ in range(ARRAY_PUSHES_MEASURED - 1):
        array_push(feed, "AUSDT")
        gap_streams.reconcile(slots, after_grace(slots))
        assert gap_streams.stream_slot == {} and slots[0].streams == frozenset()
    array_push(feed, "AUSDT")
    gap_streams.reconcile(slots, after_grace(slots))
    assert gap_streams.stream_slot == {"XAUUSDT": 0}
    assert slots[0].streams == names("XAUUSDT") == slots[0].primary.subscriptions.wanted


def test_no_stream_is_planned_without_a_universe_or_while_the_array_does_not_deliver(feed, slots, gap_streams):
    gap_streams.reconcile(slots, after_grace(slots))
    for _ in range(ARRAY_PUSHES_MEASURED):
        array_push(feed, "AUSDT")
    gap_streams.reconcile(slots, after_grace(slots))
    assert gap_streams.stream_slot == {}, "no universe: nothing to measure against"
    feed.apply_universe(universe_of("AUSDT", "XAUUSDT"), 1.0)
    slots[0].primary.first_data_at = None  # open, but the array never arrived on it
    gap_streams.reconcile(slots, after_grace(slots))
    assert gap_streams.array_spell(slots[0]) is None and gap_streams.stream_slot == {}


def more_gaps_than_one_connection_carries(feed, slots, gap_streams):
    """1 100 universe symbols the array never brings (it brings AUSDT only), measured over its pushes; their names."""
    missing = ["S%04dUSDT" % n for n in range(1100)]
    feed.apply_universe(universe_of("AUSDT", *missing), 1.0)
    gap_streams.reconcile(slots, after_grace(slots))
    for _ in range(ARRAY_PUSHES_MEASURED):
        array_push(feed, "AUSDT")
    gap_streams.reconcile(slots, after_grace(slots))
    return missing


def test_gaps_beyond_one_connection_open_an_overflow_slot_on_the_same_path_family(feed, slots, gap_streams):
    missing = more_gaps_than_one_connection_carries(feed, slots, gap_streams)
    assert len(slots) == 2 and slots[1].url == overflow_url(URL) and slots[1].primary is None
    assert len(slots[0].streams) == funding_subscriptions.MAX_STREAMS_PER_CONNECTION - 1, "slot 0 carries the array"
    assert len(slots[1].streams) == 1100 - len(slots[0].streams)
    assert slots[0].streams | slots[1].streams == names(*missing)


def test_symbols_leaving_the_universe_lose_their_stream_and_an_emptied_overflow_connection_closes(
        feed, slots, gap_streams, caplog):
    more_gaps_than_one_connection_carries(feed, slots, gap_streams)
    kept = sorted(s for s, index in gap_streams.stream_slot.items() if index == 0)[:3]
    overflow = open_connection(feed, slots[1], 2)
    caplog.set_level(logging.INFO, logger=funding_daemon_log.PROGRAM)
    feed.apply_universe(universe_of("AUSDT", *kept), 2.0)
    gap_streams.reconcile(slots, after_grace(slots))
    assert gap_streams.stream_slot == {s: 0 for s in kept}, "the ones kept stay where they are"
    assert slots[0].streams == names(*kept) and slots[1].streams == frozenset()
    assert overflow.closing and slots[0].primary.closing is False
    assert "%d symbols left the universe: unsubscribing" % (1100 - len(kept)) in caplog.text
