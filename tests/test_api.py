"""The HTTP API over real HTTP: every endpoint and status code, against state files written here."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import (
    api,  # noqa: F401  (module fixture)
    api_workdir,  # noqa: F401  (module fixture)
    assert_json_error,
    assert_json_response,
    fresh_symbols,
    raw_request,
    record,
    start_api,
    wait_until,
    write_state,
)

SEED_RECORD_FIELDS = {"symbol", "markPrice", "fundingRate", "nextFundingTime", "indexPrice", "updatedAt", "ageSeconds"}
SEED_HEALTH_FIELDS = {
    "status",
    "websocketConnected",
    "symbolCount",
    "uptimeSeconds",
    "lastConnectedTime",
    "messagesReceived",
    "reconnectAttempts",
    "oldestDataAgeSeconds",
    "newestDataAgeSeconds",
}


@pytest.fixture
def state(api):  # noqa: F811
    """The state file of the running server, reset to a fresh healthy state for each test."""
    write_state(api.state_file, fresh_symbols())
    return api.state_file


def metrics(api):  # noqa: F811
    reply = api.get("/metrics")
    assert reply.status == 200
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode("utf-8"))}
    return reply, families


def sample(families, name, **labels):
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


# --- GET / -----------------------------------------------------------------------------------------------------


def test_root_names_the_service_version_and_endpoints(api, state):  # noqa: F811
    reply = api.get("/")
    assert reply.status == 200
    body = assert_json_response(reply)
    assert body["service"] == "Binance Funding Rate API"
    assert body["version"]
    assert "/funding/health" in body["endpoints"] and "/metrics" in body["endpoints"]


# --- GET /funding/health -----------------------------------------------------------------------------------------


def test_health_is_200_with_every_seed_field_when_connected_and_fresh(api, state):  # noqa: F811
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 200, body
    assert SEED_HEALTH_FIELDS <= set(body)
    assert body["status"] == "healthy" and body["reasons"] == []
    assert body["websocketConnected"] is True
    assert body["symbolCount"] == 3
    assert body["messagesReceived"] == 1234
    assert body["stateFileError"] is None and body["servingLastGoodState"] is False
    assert 0.5 <= body["newestDataAgeSeconds"] <= body["oldestDataAgeSeconds"]
    assert body["oldestDataAgeSeconds"] < 60


def test_health_is_503_when_the_daemon_reports_disconnected(api, state):  # noqa: F811
    write_state(state, fresh_symbols(), connected=False)
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 503
    assert body["status"] == "unhealthy" and body["websocketConnected"] is False
    assert [r for r in body["reasons"] if r.startswith("disconnected")]


def test_health_is_503_when_the_daemon_has_been_disconnected_longer_than_the_grace(api, state):  # noqa: F811
    write_state(state, fresh_symbols(), connected=False, last_disconnect_time=time.time() - 40)
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 503 and body["reconnecting"] is False
    assert [r for r in body["reasons"] if r.startswith("disconnected") and "for 40 s" in r]


def test_health_stays_200_during_a_reconnect_shorter_than_the_grace(api, state):  # noqa: F811
    write_state(state, fresh_symbols(), connected=False, last_disconnect_time=time.time() - 1)
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 200, body
    assert body["websocketConnected"] is False and body["reconnecting"] is True and body["reasons"] == []


def test_failed_reconnect_attempts_do_not_restart_the_grace_of_a_long_outage(api, state):  # noqa: F811
    now = time.time()
    write_state(state, fresh_symbols(), connected=False, disconnected_since=now - 120, last_disconnect_time=now - 1)
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 503 and body["reconnecting"] is False
    assert [r for r in body["reasons"] if r.startswith("disconnected") and "for 120 s" in r]


def test_a_path_that_is_not_utf8_is_400_not_a_silently_repaired_symbol(api, state):  # noqa: F811
    for path in ("/funding/BTC%FFUSDT", "/funding/%FF%FE", "/%C0%AF"):
        reply = api.get(path)
        body = assert_json_response(reply)
        assert reply.status == 400 and body["error"] == "invalid_path", (path, reply.status, body)


def test_health_is_503_when_the_newest_data_is_older_than_the_threshold(api, state):  # noqa: F811
    now = time.time()
    write_state(state, {"BTCUSDT": record(now, age=500), "ETHUSDT": record(now, age=200)})
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 503
    assert [r for r in body["reasons"] if r.startswith("stale")]
    assert body["newestDataAgeSeconds"] >= 200 and body["oldestDataAgeSeconds"] >= 500


def test_health_is_503_with_no_symbols_and_the_empty_state_serves_nothing(api, state):  # noqa: F811
    write_state(state, {})
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 503
    assert body["symbolCount"] == 0 and body["newestDataAgeSeconds"] is None
    assert [r for r in body["reasons"] if r.startswith("no_symbols")]
    assert_json_error(api.get("/funding/BTCUSDT"), 404)
    listing = assert_json_response(api.get("/funding"))
    assert listing["data"] == [] and listing["total"] == 0


@pytest.mark.parametrize("damage", ["corrupt", "missing", "not_a_contract"])
def test_a_broken_state_file_keeps_the_last_good_data_and_health_says_so(api, state, damage):  # noqa: F811
    assert api.get("/funding/health").status == 200
    if damage == "corrupt":
        state.write_bytes(b'{"funding_state": {"BTCUSDT": ')
    elif damage == "missing":
        state.unlink()
    else:
        state.write_text('{"funding_state": [], "connection_status": {}, "updated_at": 1}')
    reply = api.get("/funding/health")
    body = assert_json_response(reply)
    assert reply.status == 503
    assert body["stateFileError"] and body["servingLastGoodState"] is True
    assert [r for r in body["reasons"] if r.startswith("state_file")]
    assert body["symbolCount"] == 3
    symbol = api.get("/funding/BTCUSDT")
    assert symbol.status == 200 and symbol.json()["markPrice"] == 91897.67414493
    listing = assert_json_response(api.get("/funding"))
    assert listing["stateFileError"] == body["stateFileError"] and listing["total"] == 3

    write_state(state, {"BTCUSDT": record(time.time(), price=1.5)})
    recovered = api.get("/funding/health").json()
    assert recovered["status"] == "healthy" and recovered["stateFileError"] is None
    assert api.get("/funding/BTCUSDT").json()["markPrice"] == 1.5


def test_last_good_data_ages_into_503_while_the_file_stays_corrupt(api_workdir):  # noqa: F811
    state_file = Path(api_workdir) / "short-threshold.json"
    write_state(state_file, {"BTCUSDT": record(time.time(), age=0.0)})
    server = start_api(state_file, env={"FUNDING_STALE_SECONDS": "2"})
    try:
        # Fresh again once the server is up (its start may take longer than the 2 s threshold on a busy machine).
        write_state(state_file, {"BTCUSDT": record(time.time(), age=0.0)})
        assert wait_until(lambda: server.get("/funding/BTCUSDT").status == 200, deadline=1.5)
        state_file.write_bytes(b"garbage")
        # Without a new good file the served copy crosses FUNDING_STALE_SECONDS (2 s here) and turns stale.
        reply = None
        end = time.monotonic() + 30
        while time.monotonic() < end:
            reply = server.get("/funding/BTCUSDT")
            if reply.status != 200:
                break
            time.sleep(0.1)
        assert reply is not None and reply.status == 503
        assert reply.json()["error"] == "stale" and reply.json()["staleThresholdSeconds"] == 2
        health = server.get("/funding/health").json()
        assert [r.split(":")[0] for r in health["reasons"]] == ["state_file", "stale"]
    finally:
        server.close()


# --- GET /funding/{symbol} ---------------------------------------------------------------------------------------


def test_symbol_returns_the_seed_record_with_its_age(api, state):  # noqa: F811
    reply = api.get("/funding/BTCUSDT")
    body = assert_json_response(reply)
    assert reply.status == 200
    assert SEED_RECORD_FIELDS <= set(body)
    assert body["symbol"] == "BTCUSDT"
    assert body["markPrice"] == 91897.67414493 and body["fundingRate"] == 0.00001864
    assert body["nextFundingTime"] == 1764748800000 and body["fundingIntervalHours"] == 8
    assert body["ageSeconds"] == pytest.approx(time.time() - body["updatedAt"], abs=5)
    assert body["ageSeconds"] >= 2.0


def test_symbol_lookup_is_case_insensitive(api, state):  # noqa: F811
    for target in ("/funding/btcusdt", "/funding/BtcUsdt"):
        reply = api.get(target)
        assert reply.status == 200 and reply.json()["symbol"] == "BTCUSDT"


def test_unknown_symbol_is_404_json(api, state):  # noqa: F811
    body = assert_json_error(api.get("/funding/NOPEUSDT"), 404)
    assert body["symbol"] == "NOPEUSDT"


def test_stale_symbol_is_503_and_still_carries_its_data_and_age(api, state):  # noqa: F811
    now = time.time()
    write_state(state, {"BTCUSDT": record(now, age=0.5), "OLDUSDT": record(now, age=181.0, price=7.0)})
    reply = api.get("/funding/oldusdt")
    body = assert_json_error(reply, 503)
    assert body["error"] == "stale"
    assert body["symbol"] == "OLDUSDT" and body["markPrice"] == 7.0
    assert body["ageSeconds"] >= 181.0 and body["staleThresholdSeconds"] == 180


@pytest.mark.parametrize(
    "target",
    [
        "/funding/BTC-USDT",
        "/funding/" + "A" * 41,
        "/funding/BTC%20USDT",
        "/funding/%C3%9F",  # "ß".upper() would be "SS"
        "/funding/BTCUSDT%0A",
        "/funding/%00",
    ],
)
def test_invalid_symbol_is_400_json(api, state, target):  # noqa: F811
    body = assert_json_error(api.get(target), 400)
    assert body["error"] == "invalid_symbol"


def test_a_40_character_symbol_is_valid_and_simply_unknown(api, state):  # noqa: F811
    assert_json_error(api.get("/funding/" + "A" * 40), 404)


def test_health_and_batch_cannot_be_shadowed_by_a_symbol(api, state):  # noqa: F811
    now = time.time()
    write_state(state, {"HEALTH": record(now), "BATCH": record(now), "BTCUSDT": record(now)})
    assert "status" in assert_json_response(api.get("/funding/health"))
    assert_json_error(api.get("/funding/batch"), 400)
    for target in ("/funding/HEALTH", "/funding/Batch"):
        assert assert_json_error(api.get(target), 404)["error"] == "reserved"


def test_no_state_ever_loaded_gives_503_not_404(api_workdir):  # noqa: F811
    missing = Path(api_workdir) / "never-written.json"
    server = start_api(missing)
    try:
        health = server.get("/funding/health")
        body = assert_json_response(health)
        assert health.status == 503 and body["stateFileError"] and body["servingLastGoodState"] is False
        assert body["symbolCount"] == 0
        assert [r.split(":")[0] for r in body["reasons"]] == ["state_file", "no_symbols"]
        for target in ("/funding/BTCUSDT", "/funding", "/funding/batch?symbols=BTCUSDT"):
            assert assert_json_error(server.get(target), 503)["error"] == "no_state"
        write_state(missing, fresh_symbols())
        # Picked up in the background within milliseconds; no request waits for it.
        assert wait_until(lambda: server.get("/funding/BTCUSDT").status == 200, deadline=5)
    finally:
        server.close()


# --- GET /funding/batch --------------------------------------------------------------------------------------------


def test_batch_returns_found_and_names_the_missing(api, state):  # noqa: F811
    reply = api.get("/funding/batch?symbols=btcusdt,ETHUSDT,NOPEUSDT,BTCUSDT")
    body = assert_json_response(reply)
    assert reply.status == 200
    assert [d["symbol"] for d in body["data"]] == ["BTCUSDT", "ETHUSDT"]
    assert body["found"] == 2 and body["missing"] == 1 and body["total"] == 3
    assert body["missingSymbols"] == ["NOPEUSDT"] and body["staleSymbols"] == []
    assert all(SEED_RECORD_FIELDS <= set(d) for d in body["data"])


def test_batch_keeps_stale_entries_with_200_and_lists_them(api, state):  # noqa: F811
    now = time.time()
    write_state(state, {"BTCUSDT": record(now), "OLDUSDT": record(now, age=300)})
    reply = api.get("/funding/batch?symbols=BTCUSDT,OLDUSDT")
    body = assert_json_response(reply)
    assert reply.status == 200
    assert body["found"] == 2 and body["staleSymbols"] == ["OLDUSDT"]
    assert [d["ageSeconds"] >= 300 for d in body["data"]] == [False, True]


def test_batch_of_1000_symbols_from_2000_is_answered(api, state):  # noqa: F811
    write_state(state, fresh_symbols(count=2000))
    names = ["GEN%04dUSDT" % i for i in range(0, 2000, 2)]
    reply = api.get("/funding/batch?symbols=" + ",".join(names))
    body = assert_json_response(reply)
    assert reply.status == 200
    assert body["found"] == 1000 and body["missing"] == 0 and body["total"] == 1000
    assert [d["symbol"] for d in body["data"]] == names


def test_batch_of_1001_symbols_is_400(api, state):  # noqa: F811
    names = ["S%dUSDT" % i for i in range(1001)]
    body = assert_json_error(api.get("/funding/batch?symbols=" + ",".join(names)), 400)
    assert body["error"] == "too_many_symbols"


def test_batch_with_an_overlong_query_is_414_json(api, state):  # noqa: F811
    assert_json_error(api.get("/funding/batch?symbols=" + "A," * 25000), 414)


def test_a_request_target_beyond_what_granian_parses_is_414_and_closed(api, state):  # noqa: F811
    # Granian answers it itself, without a JSON body (the README says so); never a 5xx, never a hang.
    reply = api.get("/funding/batch?symbols=" + "A" * 100_000)
    assert reply.status == 414 and reply.header("connection") == "close"


def test_a_request_head_beyond_the_buffer_is_431_and_closed(api, state):  # noqa: F811
    reply = raw_request(api.port, b"GET /funding/BTCUSDT HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n")
    assert reply.status == 431 and reply.header("connection") == "close"


@pytest.mark.parametrize("query", ["", "?symbols=", "?symbols=,,,", "?other=BTCUSDT"])
def test_batch_without_symbols_is_400(api, state, query):  # noqa: F811
    assert_json_error(api.get("/funding/batch" + query), 400)


def test_batch_with_an_invalid_symbol_is_400_and_names_it(api, state):  # noqa: F811
    body = assert_json_error(api.get("/funding/batch?symbols=BTCUSDT,BAD-ONE"), 400)
    assert body["invalidSymbols"] == ["BAD-ONE"]


# --- GET /funding ----------------------------------------------------------------------------------------------


def test_listing_returns_all_2000_symbols_sorted_by_name(api, state):  # noqa: F811
    write_state(state, fresh_symbols(count=2000))
    reply = api.get("/funding")
    body = assert_json_response(reply)
    assert reply.status == 200
    assert body["count"] == body["total"] == body["matched"] == 2003
    names = [d["symbol"] for d in body["data"]]
    assert names == sorted(names)
    assert all(SEED_RECORD_FIELDS <= set(d) for d in body["data"])


def test_listing_has_the_funding_interval_only_where_the_state_has_it(api, state):  # noqa: F811
    data = {d["symbol"]: d for d in api.get("/funding").json()["data"]}
    assert data["BTCUSDT"]["fundingIntervalHours"] == 8
    assert data["ETHUSDT"]["fundingIntervalHours"] == 4
    assert "fundingIntervalHours" not in data["SOLUSDC"]


def test_listing_filters_by_quote_asset(api, state):  # noqa: F811
    assert [d["symbol"] for d in api.get("/funding?quote=usdc").json()["data"]] == ["SOLUSDC"]
    body = api.get("/funding?quote=USDT").json()
    assert [d["symbol"] for d in body["data"]] == ["BTCUSDT", "ETHUSDT"]
    assert body["matched"] == 2 and body["total"] == 3


def test_listing_sorts_by_funding_rate_both_ways_and_limits(api, state):  # noqa: F811
    ascending = [d["symbol"] for d in api.get("/funding?sort=fundingRate").json()["data"]]
    assert ascending == ["ETHUSDT", "BTCUSDT", "SOLUSDC"]
    descending = api.get("/funding?sort=-fundingRate&limit=2").json()
    assert [d["symbol"] for d in descending["data"]] == ["SOLUSDC", "BTCUSDT"]
    assert descending["count"] == 2 and descending["matched"] == 3


@pytest.mark.parametrize(
    "query", ["sort=price", "sort=", "limit=0", "limit=-1", "limit=abc", "limit=" + "9" * 5000, "quote=US-DT"]
)
def test_listing_with_bad_parameters_is_400(api, state, query):  # noqa: F811
    if query == "sort=":
        # An empty sort means the default, not an error.
        assert api.get("/funding?" + query).status == 200
        return
    assert_json_error(api.get("/funding?" + query), 400)


def test_listing_lists_stale_symbols(api, state):  # noqa: F811
    now = time.time()
    write_state(state, {"BTCUSDT": record(now), "OLDUSDT": record(now, age=1000)})
    body = api.get("/funding").json()
    assert body["staleSymbols"] == ["OLDUSDT"] and body["count"] == 2


# --- freshness --------------------------------------------------------------------------------------------------


def test_every_write_is_visible_on_the_very_next_request(api, state):  # noqa: F811
    now = time.time()
    for price in range(1, 31):
        write_state(state, {"BTCUSDT": record(now, price=float(price))}, now=now)
        assert api.get("/funding/BTCUSDT").json()["markPrice"] == float(price)


def test_an_unchanged_file_is_parsed_once(api, state):  # noqa: F811
    api.get("/funding/BTCUSDT")
    _, before = metrics(api)
    for _ in range(20):
        assert api.get("/funding/BTCUSDT").status == 200
    _, after = metrics(api)
    assert sample(after, "funding_state_loads_total") == sample(before, "funding_state_loads_total")
    write_state(state, fresh_symbols())
    api.get("/funding/BTCUSDT")
    _, changed = metrics(api)
    assert sample(changed, "funding_state_loads_total") == sample(before, "funding_state_loads_total") + 1


# --- GET /metrics -----------------------------------------------------------------------------------------------


def test_metrics_parse_as_prometheus_text_with_the_documented_content_type(api, state):  # noqa: F811
    reply, families = metrics(api)
    assert reply.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    for name in (
        "funding_symbols",
        "funding_oldest_data_age_seconds",
        "funding_newest_data_age_seconds",
        "funding_daemon_connected",
        "funding_daemon_messages_received",
        "funding_daemon_frames_rejected",
        "funding_daemon_items_rejected",
        "funding_daemon_reconnect_attempts",
        "funding_state_load_errors",
        "funding_api_requests",
    ):
        assert name in families, name
        assert families[name].documentation, name
    assert families["funding_api_requests"].type == "counter"
    assert sample(families, "funding_symbols") == 3
    assert sample(families, "funding_daemon_connected") == 1
    assert sample(families, "funding_daemon_messages_received_total") == 1234
    assert sample(families, "funding_oldest_data_age_seconds") >= sample(families, "funding_newest_data_age_seconds")


def test_metrics_report_daemon_rejects_and_tolerate_their_absence(api, state):  # noqa: F811
    write_state(state, fresh_symbols(), frames_rejected=7, items_rejected=9, connections_opened=3)
    _, families = metrics(api)
    assert sample(families, "funding_daemon_frames_rejected_total") == 7
    assert sample(families, "funding_daemon_items_rejected_total") == 9
    assert sample(families, "funding_daemon_connections_opened_total") == 3
    # A daemon that does not write those keys (the seed's) still gives parseable metrics, without the samples.
    state.write_text('{"funding_state": {}, "connection_status": {"connected": true}, "updated_at": %f}' % time.time())
    _, families = metrics(api)
    assert sample(families, "funding_daemon_frames_rejected_total") is None
    assert sample(families, "funding_symbols") == 0


def test_metrics_count_requests_by_route_template_and_status(api, state):  # noqa: F811
    _, before = metrics(api)
    api.get("/funding/BTCUSDT")
    api.get("/funding/ETHUSDT")
    api.get("/funding/NOPEUSDT")
    api.get("/no/such/route")
    api.get("/funding/BTCUSDT", method="DELETE")
    _, after = metrics(api)

    def delta(route, status):
        return (sample(after, "funding_api_requests_total", route=route, status=status) or 0) - (
            sample(before, "funding_api_requests_total", route=route, status=status) or 0
        )

    assert delta("/funding/{symbol}", "200") == 2
    assert delta("/funding/{symbol}", "404") == 1
    assert delta("other", "404") == 1
    assert delta("other", "405") == 1


def test_metrics_count_each_state_file_failure_once(api, state):  # noqa: F811
    _, before = metrics(api)
    state.write_bytes(b"{broken")
    for _ in range(5):
        api.get("/funding/BTCUSDT")
    _, broken = metrics(api)
    assert sample(broken, "funding_state_file_ok") == 0
    assert sample(broken, "funding_state_load_errors_total") == sample(before, "funding_state_load_errors_total") + 1
    write_state(state, fresh_symbols())
    _, fixed = metrics(api)
    assert sample(fixed, "funding_state_file_ok") == 1


# --- HTTP behaviour --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/nope", "/funding/", "/funding/BTCUSDT/extra", "/FUNDING/BTCUSDT", "/metrics/x"])
def test_unknown_route_is_404_json(api, state, target):  # noqa: F811
    assert_json_error(api.get(target), 404)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_methods_other_than_get_and_head_are_405_json_with_allow(api, state, method):  # noqa: F811
    reply = api.get("/funding/BTCUSDT", method=method)
    assert_json_error(reply, 405)
    assert reply.header("allow") == "GET, HEAD"


def test_head_answers_like_get_without_a_body(api, state):  # noqa: F811
    reply = api.get("/funding/BTCUSDT", method="HEAD")
    assert reply.status == 200 and reply.body == b""
    assert reply.header("content-type") == "application/json"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /funding/BTCUSDT HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /funding/BTCUSDT HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET /funding/BTCUSDT HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n",
    ],
)
def test_requests_granian_cannot_parse_get_a_4xx_and_a_closed_connection(api, state, request_bytes):  # noqa: F811
    # Answered by Granian before the application sees them: a 4xx with an empty body (documented), never a 5xx.
    reply = raw_request(api.port, request_bytes)
    assert 400 <= reply.status < 500, reply
    assert reply.header("connection") == "close" and reply.body == b""


def test_a_declared_body_over_the_limit_is_413_json(api, state):  # noqa: F811
    request = b"GET /funding/BTCUSDT HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
    assert_json_error(raw_request(api.port, request), 413)


def test_responses_name_the_service_not_the_server_software(api, state):  # noqa: F811
    for target in ("/funding/BTCUSDT", "/nope", "/funding/health"):
        assert api.get(target).header("server") == "binance-funding"


def test_no_access_log_at_info(api, state):  # noqa: F811
    for _ in range(5):
        api.get("/funding/BTCUSDT")
    api.get("/funding/NOPEUSDT")
    assert "BTCUSDT" not in api.log() and "NOPEUSDT" not in api.log()
    assert os.path.getsize(api.log_path) < 4000  # a few key=value lines (start, state file), no access log
