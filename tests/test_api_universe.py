"""The API's view of the contract universe (issue 12): contract types on records, filters, 404 delisted, coverage
in /funding/health and /metrics. The server runs as systemd runs it; the state files are written here."""

from __future__ import annotations

import time

import pytest
from test_api_support import (
    api,  # noqa: F401  (module fixture)
    api_workdir,  # noqa: F401  (module fixture)
    assert_json_error,
    assert_json_response,
    metric,
    record,
    write_state,
)

PERP = {"contractType": "PERPETUAL", "underlyingType": "COIN", "quoteAsset": "USDT", "marginAsset": "USDT"}
GOLD = {"contractType": "TRADIFI_PERPETUAL", "underlyingType": "COMMODITY", "quoteAsset": "USDT",
        "marginAsset": "USDT"}
TSLA = {"contractType": "TRADIFI_PERPETUAL", "underlyingType": "EQUITY", "quoteAsset": "USDT", "marginAsset": "USDT"}


def universe_of(count):
    universe = {"BTCUSDT": PERP, "XAUUSDT": GOLD, "TSLAUSDT": TSLA}
    for i in range(count - 3):
        universe["GEN%04dUSDT" % i] = PERP
    return universe


def records_for(universe, now, skip=(), age=1.0):
    return {s: record(now, age=age, contractType=c["contractType"], underlyingType=c["underlyingType"])
            for s, c in universe.items() if s not in skip}


def test_records_carry_contract_and_underlying_type(api):  # noqa: F811
    now = time.time()
    universe = universe_of(3)
    write_state(api.state_file, records_for(universe, now), universe=universe)
    body = assert_json_response(api.get("/funding/XAUUSDT"))
    assert body["contractType"] == "TRADIFI_PERPETUAL" and body["underlyingType"] == "COMMODITY"


def test_funding_filters_on_contract_type_and_underlying_type(api):  # noqa: F811
    now = time.time()
    universe = universe_of(10)
    write_state(api.state_file, records_for(universe, now), universe=universe)
    tradfi = assert_json_response(api.get("/funding?contractType=TRADIFI_PERPETUAL"))
    assert [r["symbol"] for r in tradfi["data"]] == ["TSLAUSDT", "XAUUSDT"]
    assert tradfi["matched"] == 2 and tradfi["total"] == 10
    equity = assert_json_response(api.get("/funding?contractType=tradifi_perpetual&underlyingType=EQUITY"))
    assert [r["symbol"] for r in equity["data"]] == ["TSLAUSDT"]
    coins = assert_json_response(api.get("/funding?underlyingType=COIN&limit=3"))
    assert coins["matched"] == 8 and coins["count"] == 3
    assert assert_json_response(api.get("/funding?underlyingType=INDEX"))["matched"] == 0, "known but absent"


@pytest.mark.parametrize("query", ["contractType=CURRENT_QUARTER", "contractType=NOPE", "underlyingType=STOCK",
                                   "contractType=TRADIFI-PERPETUAL", "underlyingType=" + "X" * 41])
def test_unknown_type_filter_values_are_400_json(api, query):  # noqa: F811
    now = time.time()
    universe = universe_of(3)
    write_state(api.state_file, records_for(universe, now), universe=universe)
    body = assert_json_error(api.get("/funding?" + query), 400)
    assert body["error"] in ("bad_contractType", "bad_underlyingType")


def test_a_delisted_symbol_answers_404_delisted_with_the_time(api):  # noqa: F811
    now = time.time()
    universe = universe_of(3)
    write_state(api.state_file, records_for(universe, now), universe=universe, delisted={"OLDUSDT": now - 60})
    body = assert_json_error(api.get("/funding/oldusdt"), 404)
    assert body["error"] == "delisted" and body["symbol"] == "OLDUSDT"
    assert body["delistedAt"] == pytest.approx(now - 60)
    assert "delisted at" in body["detail"]
    assert assert_json_error(api.get("/funding/TYPOUSDT"), 404)["error"] == "not_found"


def test_health_reports_full_coverage_of_the_universe(api):  # noqa: F811
    now = time.time()
    universe = universe_of(200)
    write_state(api.state_file, records_for(universe, now), universe=universe, daemon_started_at=now - 1000)
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 200, body
    assert body["expectedSymbolCount"] == body["symbolCount"] == 200
    assert body["missingSymbolCount"] == 0 and body["missingSymbols"] == []
    assert body["tradifiSymbolCount"] == 2 and body["universeKnown"] is True and body["warnings"] == []
    assert metric(api, "funding_symbols_expected") == 200
    assert metric(api, "funding_symbols_served") == 200
    assert metric(api, "funding_symbols_missing") == 0


def test_coverage_under_99_percent_past_the_grace_is_503_naming_the_missing(api):  # noqa: F811
    now = time.time()
    universe = universe_of(200)
    missing = ["GEN%04dUSDT" % i for i in range(25)]
    write_state(api.state_file, records_for(universe, now, skip=missing), universe=universe,
                daemon_started_at=now - 1000, coverage_low_since=now - 500)
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 503
    assert body["missingSymbolCount"] == 25 and body["missingSymbols"] == missing[:20]
    assert [r for r in body["reasons"] if r.startswith("coverage: 175 of 200 perpetuals")]
    assert metric(api, "funding_symbols_missing") == 25 and metric(api, "funding_symbols_served") == 175


def test_low_coverage_within_the_grace_stays_200_but_is_reported(api):  # noqa: F811
    now = time.time()
    universe = universe_of(200)
    missing = ["GEN%04dUSDT" % i for i in range(25)]
    write_state(api.state_file, records_for(universe, now, skip=missing), universe=universe,
                daemon_started_at=now - 1000, coverage_low_since=now - 10)
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 200, body
    assert body["missingSymbolCount"] == 25


def test_a_stale_universe_symbol_counts_as_missing(api):  # noqa: F811
    now = time.time()
    universe = universe_of(100)
    symbols = records_for(universe, now)
    symbols["XAUUSDT"] = record(now, age=500.0, contractType="TRADIFI_PERPETUAL", underlyingType="COMMODITY")
    write_state(api.state_file, symbols, universe=universe, daemon_started_at=now - 1000)
    body = assert_json_response(api.get("/funding/health"))
    assert body["missingSymbols"] == ["XAUUSDT"] and body["symbolCount"] == 100


def test_without_a_universe_health_says_so_and_stays_200(api):  # noqa: F811
    now = time.time()
    write_state(api.state_file, {"BTCUSDT": record(now)}, daemon_started_at=now - 1000)
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 200, body
    assert body["universeKnown"] is False and body["expectedSymbolCount"] is None
    assert body["missingSymbolCount"] is None
    assert [w for w in body["warnings"] if w.startswith("universe_unknown:")]
    assert metric(api, "funding_symbols_expected") is None and metric(api, "funding_universe_known") == 0


def test_ignored_rows_are_exported_by_reason(api):  # noqa: F811
    now = time.time()
    universe = universe_of(3)
    write_state(api.state_file, records_for(universe, now), universe=universe, items_ignored_coin_m=7,
                items_ignored_unknown=2, symbol_streams=170, stream_connections=1)
    assert metric(api, "funding_daemon_items_ignored_total", reason="coin_m") == 7
    assert metric(api, "funding_daemon_items_ignored_total", reason="unknown") == 2
    assert metric(api, "funding_daemon_items_ignored_total", reason="settling") == 0
    assert metric(api, "funding_daemon_symbol_streams") == 170
