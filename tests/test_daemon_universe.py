"""End to end (issue 12): the daemon against the simulated exchange's universe.

Every TRADING perpetual (TradFi included, which the all-market array does not carry) is served; nothing else is;
listings and delistings follow exchangeInfo without a reconnect; exchangeInfo failures never touch the stream;
per-symbol streams keep Binance's connection rules.
"""

from __future__ import annotations

import json
import time

import funding_state
import pytest
import test_daemon
from test_daemon import expected_record, free_port, stored_record

daemon_factory = test_daemon.daemon_factory  # the fixture, shared

COIN_M_ROW = "BTCUSD_PERP"
QUICK = {"FUNDING_ARRAY_GRACE_SECONDS": "0.5", "FUNDING_UNIVERSE_REFRESH_SECONDS": "2"}


def trading_perpetuals(sim):
    return sim.get_json("/_sim/universe")["tradingPerpetuals"]


def tradfi_symbols(sim):
    return set(sim.get_json("/_sim/universe")["tradfi"])


def assert_rules_kept(sim):
    limits = sim.status()["limits"]
    assert limits["peakMessagesPerSecondPerConnection"] <= 10, limits
    assert limits["policyClosesTotal"] == 0, limits
    assert limits["subscribesRefusedTooManyStreams"] == 0, limits
    return limits


def test_every_trading_perpetual_tradfi_included_is_served_with_exact_values_within_10_s_of_a_cold_start(
        simulator_factory, daemon_factory):
    # Binance's timings: the array every 3 s, per-symbol streams every 1 s; the daemon's defaults.
    sim = simulator_factory("--push-interval", "3", "--fast-push-interval", "1", fast=False).client
    universe = set(trading_perpetuals(sim))
    tradfi = tradfi_symbols(sim)
    assert len(tradfi) > 100 and tradfi <= universe
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, FUNDING_NO_DATA_SECONDS="30")
    started = time.monotonic()
    daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "every TRADING perpetual", timeout=10)
    full_after = time.monotonic() - started
    sim.set_fault("freeze")
    sim.wait_for_pushes(2, fast=True)
    values = sim.symbols()

    def exact(state):
        funding = state["funding_state"]
        return set(funding) == universe and all(
            stored_record(funding[s]) == expected_record(values[s]) for s in universe)

    state = daemon.wait_for_state(exact, "exact values of every perpetual", timeout=10)
    status = state["connection_status"]
    assert status["expected_symbols"] == len(universe) and status["missing_symbols"] == 0
    assert status["symbol_streams"] == len(tradfi), "measured: exactly the symbols the array leaves out"
    assert status["items_ignored_coin_m"] > 0 and COIN_M_ROW not in state["funding_state"]
    assert status["items_ignored_dated"] > 0 and status["items_ignored_settling"] > 0
    assert state["funding_state"]["XAUUSDT"]["contractType"] == "TRADIFI_PERPETUAL"
    assert state["funding_state"]["BTCUSDT"]["underlyingType"] == "COIN"
    assert state["universe"]["symbols"].keys() == universe
    assert status["connections_opened"] == 1 and status["stream_connections"] == 1
    limits = assert_rules_kept(sim)
    assert limits["peakSubscribeMessagesPerSecondPerConnection"] <= 5
    print("full coverage %.2f s after start; %d streams; peak control messages/s %d"
          % (full_after, status["symbol_streams"], limits["peakSubscribeMessagesPerSecondPerConnection"]))


def test_the_raw_stream_url_fills_its_gaps_too(simulator_factory, daemon_factory):
    # Raw frames: the array bare, a per-symbol payload a bare object, acknowledgements the same as on combined URLs.
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("ws"), rest_url=sim.rest_url, FUNDING_ARRAY_GRACE_SECONDS="0.5")
    universe = set(trading_perpetuals(sim))
    state = daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "every perpetual on the raw URL")
    assert state["connection_status"]["frames_rejected"] == 0
    assert state["funding_state"]["XAUUSDT"]["contractType"] == "TRADIFI_PERPETUAL"


def test_a_listing_appears_and_a_delisting_disappears_within_one_refresh_without_a_reconnect(
        simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, **QUICK)
    universe = set(trading_perpetuals(sim))
    daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "every perpetual")
    sim.set_fault("list", symbol="NEWGOLDUSDT", contractType="TRADIFI_PERPETUAL", underlyingType="COMMODITY",
                  price=100.0)
    sim.set_fault("list", symbol="NEWCOINUSDT", contractType="PERPETUAL", underlyingType="COIN", price=2.0)
    sim.set_fault("delist", symbol="XAGUSDT")  # TradFi: its per-symbol stream is unsubscribed
    sim.set_fault("delist", symbol="ETHUSDT", rows="no_funding")
    listed = {"NEWGOLDUSDT", "NEWCOINUSDT"}
    gone = {"XAGUSDT", "ETHUSDT"}
    # One refresh is 2 s (+-10 %); a listing also waits for the array's grace (0.5 s) before its own stream.
    state = daemon.wait_for_state(
        lambda s: listed <= set(s["funding_state"]) and not gone & set(s["funding_state"]),
        "listing served and delisting removed", timeout=2.2 + 0.5 + 3)
    assert set(state["delisted"]) >= gone
    assert state["funding_state"]["NEWGOLDUSDT"]["contractType"] == "TRADIFI_PERPETUAL"
    status = state["connection_status"]
    assert status["connections_opened"] == 1, "no reconnect"
    assert status["symbols_removed"] >= 2
    connections = sim.get_json("/_sim/connections")
    print(json.dumps(connections)[:300])
    daemon.wait_for(lambda: "xagusdt@markPrice@1s" not in json.dumps(sim.get_json("/_sim/connections")),
                    "XAGUSDT unsubscribed", timeout=5)
    assert "UNSUBSCRIBE 1 streams" in daemon.log
    later = daemon.wait_for_state(lambda s: s["connection_status"]["items_ignored_settling"] > 0,
                                  "ETHUSDT's rows (still on the array, SETTLING) ignored as settling")
    assert "ETHUSDT" not in later["funding_state"]
    assert_rules_kept(sim)


@pytest.mark.parametrize("mode", ["503", "hang"])
def test_exchange_info_failing_at_start_never_delays_the_stream_and_the_universe_comes_later(
        simulator_factory, daemon_factory, mode):
    sim = simulator_factory("--fault", "exchange_info_outage=%s" % mode).client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, **QUICK)
    state = daemon.wait_for_symbols(500, timeout=5)
    status = state["connection_status"]
    assert status["universe_known"] is False and "universe" not in state
    assert set(state["funding_state"]) & {COIN_M_ROW}, "no universe: the streams' rows are served as they come"
    daemon.wait_for_log(r"exchangeInfo failed", timeout=15)
    sim.clear_fault("exchange_info_outage")
    universe = set(trading_perpetuals(sim))
    state = daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "universe applied, TradFi served",
                                  timeout=60)
    assert state["connection_status"]["universe_errors"] >= 1
    assert state["connection_status"]["connections_opened"] == 1
    assert daemon.log.count("exchangeInfo failed:") == 1, "logged once per episode"


def test_exchange_info_failing_later_keeps_the_universe_and_the_data(simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, **QUICK)
    universe = set(trading_perpetuals(sim))
    daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "every perpetual")
    sim.set_fault("exchange_info_outage", mode="500")
    before = daemon.state()["connection_status"]["messages_received"]
    state = daemon.wait_for_state(lambda s: s["connection_status"]["universe_errors"] >= 2, "two failed refreshes",
                                  timeout=40)
    assert set(state["funding_state"]) == universe
    assert state["connection_status"]["expected_symbols"] == len(universe)
    assert state["connection_status"]["messages_received"] > before
    assert max(time.time() - r["updatedAt"] for r in state["funding_state"].values()) < 5


def test_bad_exchange_info_keeps_the_last_good_universe(simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, **QUICK)
    universe = set(trading_perpetuals(sim))
    daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "every perpetual")
    errors = 0
    for kind in ("html", "truncated", "not_object", "no_symbols", "empty", "no_perpetuals", "too_many"):
        sim.set_fault("exchange_info_garbage", kind=kind)
        state = daemon.wait_for_state(lambda s, n=errors: s["connection_status"]["universe_errors"] > n,
                                      "%s refused" % kind, timeout=40)
        errors = state["connection_status"]["universe_errors"]
        assert set(state["funding_state"]) == universe, kind
        assert set(state["universe"]["symbols"]) == universe, kind
    sim.set_fault("exchange_info_garbage", kind="malformed_entries")
    state = daemon.wait_for_state(lambda s: s["connection_status"]["universe_bad_entries"] > 0,
                                  "malformed entries skipped and counted")
    assert set(state["funding_state"]) == universe
    assert daemon.log.count("exchangeInfo failed:") == 1, "one episode, logged once"


def test_a_universe_removing_more_than_half_applies_only_when_a_second_refresh_agrees(simulator_factory,
                                                                                       daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, FUNDING_ARRAY_GRACE_SECONDS="0.5",
                            FUNDING_UNIVERSE_REFRESH_SECONDS="3")
    universe = set(trading_perpetuals(sim))
    daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "every perpetual")
    sim.set_fault("exchange_info_garbage", kind="shrunk")
    held = daemon.wait_for_state(lambda s: s["connection_status"]["universe_held_back"], "large removal held back",
                                 timeout=10)
    assert set(held["funding_state"]) == universe, "nothing removed on the first answer"
    shrunk = daemon.wait_for_state(lambda s: len(s["funding_state"]) < len(universe) / 2,
                                   "applied after the second agreeing answer", timeout=10)
    assert shrunk["connection_status"]["universe_held_back"] is False
    assert len(shrunk["delisted"]) > len(universe) / 2
    assert "kept the current universe until the next refresh agrees" in daemon.log


def test_a_restart_without_rest_keeps_the_universe_and_prunes_the_loaded_state(simulator_factory, daemon_factory,
                                                                                 tmp_path):
    sim = simulator_factory().client
    first = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, **QUICK)
    universe = set(trading_perpetuals(sim))
    first.wait_for_state(lambda s: set(s["funding_state"]) == universe, "every perpetual")
    assert first.terminate() == 0
    payload = funding_state.read_state(str(first.state_file))
    # A record the universe does not list (left over from an older version, say) and an old delisting.
    payload["funding_state"]["JUNKUSDT"] = dict(payload["funding_state"]["BTCUSDT"])
    payload["delisted"] = {"OLDUSDT": time.time() - 100, "ANCIENTUSDT": time.time() - 8 * 86400}
    funding_state.write_state_atomic(str(first.state_file), payload)
    dead_rest = "http://127.0.0.1:%d" % free_port()
    second = daemon_factory(sim.ws_url("stream"), rest_url=dead_rest, state_file=first.state_file,
                            FUNDING_ARRAY_GRACE_SECONDS="0.5")
    state = second.wait_for_state(
        lambda s: s["daemon_pid"] == second.process.pid and s["connection_status"]["symbol_streams"] > 0,
        "the second daemon fills the gaps from the persisted universe")
    assert "JUNKUSDT" not in state["funding_state"]
    assert state["connection_status"]["universe_known"] is True
    assert state["connection_status"]["expected_symbols"] == len(universe)
    assert set(state["delisted"]) == {"OLDUSDT"}, "kept 7 days, no longer"
    fresh = second.wait_for_state(
        lambda s: all(time.time() - s["funding_state"][x]["updatedAt"] < 5 for x in universe),
        "every perpetual fresh, TradFi included, without REST")
    assert set(fresh["funding_state"]) == universe
    assert "exchangeInfo failed" in second.log


def test_more_than_1024_per_symbol_streams_open_a_second_connection(simulator_factory, daemon_factory):
    sim = simulator_factory("--tradfi", "1100", "--push-interval", "1", "--fast-push-interval", "0.5").client
    universe = set(trading_perpetuals(sim))
    not_on_array = sim.get_json("/_sim/universe")["counts"]["notOnArray"]
    assert not_on_array > 1024
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, FUNDING_ARRAY_GRACE_SECONDS="2",
                            FUNDING_NO_DATA_SECONDS="10")
    state = daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "every perpetual", timeout=60)
    status = daemon.wait_for_state(lambda s: s["connection_status"]["symbol_streams"] == not_on_array,
                                   "every stream acknowledged")["connection_status"]
    assert status["stream_connections"] == 2 and status["connections_opened"] == 2
    per_connection = sorted(sim.status()["streamsPerConnection"].values())
    assert per_connection == [not_on_array - 1023, 1024], "1 array + 1023 on the first, the rest on the second"
    assert "(overflow 1)" in daemon.log
    limits = assert_rules_kept(sim)
    assert limits["peakSubscribeMessagesPerSecondPerConnection"] <= 5
    assert len(state["funding_state"]) == len(universe)


def test_rotation_keeps_tradfi_symbols_fresh_throughout(simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, FUNDING_ARRAY_GRACE_SECONDS="0.5",
                            FUNDING_ROTATE_SECONDS="4")
    tradfi = tradfi_symbols(sim)
    daemon.wait_for_state(lambda s: tradfi <= set(s["funding_state"]), "TradFi served")
    lag = []  # per sample: how much older the oldest TradFi record is than the oldest array record
    deadline = time.monotonic() + 60
    while daemon.log.count("closed after rotation") < 2 and time.monotonic() < deadline:
        state = daemon.state()
        if state is not None:
            now = time.time()
            ages = {s: now - r["updatedAt"] for s, r in state["funding_state"].items()}
            lag.append(max(ages[s] for s in tradfi) - max(a for s, a in ages.items() if s not in tradfi))
        time.sleep(0.05)
    log = daemon.log
    assert log.count("closed after rotation") >= 2, log[-3000:]
    # The old connection closes only once the new one has every per-symbol stream acknowledged.
    assert log.count("(%d symbol streams moved)" % len(tradfi)) >= 2, log[-3000:]
    # Per-symbol pushes come every 0.1 s and the array's every 0.2 s: a rotation that lost the streams, even for
    # a moment, would leave TradFi records older than the array's (load slows both alike).
    assert lag and max(lag) < 1.0, max(lag)
    assert "reconnecting in" not in log
    assert_rules_kept(sim)


def test_subscription_errors_are_logged_with_their_code_and_retried_without_costing_the_array(
        simulator_factory, daemon_factory):
    sim = simulator_factory("--fault", "subscribe_error=3").client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, FUNDING_ARRAY_GRACE_SECONDS="0.5")
    array = set(sim.get_json("/_sim/universe")["arrayPerpetuals"])
    daemon.wait_for_state(lambda s: array <= set(s["funding_state"]), "array symbols served")
    daemon.wait_for_log(r"SUBSCRIBE of \d+ streams refused \(code 3", timeout=15)
    sim.clear_fault("subscribe_error")
    universe = set(trading_perpetuals(sim))
    state = daemon.wait_for_state(lambda s: set(s["funding_state"]) == universe, "retried until served",
                                  timeout=30)
    assert state["connection_status"]["subscribe_errors"] >= 1
    assert state["connection_status"]["connections_opened"] == 1, "the all-market stream was never dropped"
