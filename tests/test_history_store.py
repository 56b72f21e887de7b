"""The settlement history without a simulator: the store, the REST budget, the lag rule and the history endpoints."""

from __future__ import annotations

import io
import json
import sqlite3
import time

import funding_health
import funding_history
import pytest
from funding_api_app import ApiConfig, build_app
from funding_api_metrics import RequestCounter
from funding_api_view import StateViews
from funding_history import HistoryError, HistoryReader, HistoryWriter, Settlement
from funding_rest_budget import RestBudget, read_budget_file, retry_after_seconds
from funding_state import StateReader
from test_api_support import call, record, write_state

H = 3_600_000
T0 = 1_764_748_800_000


def rest(symbol, t, rate, price=100.0):
    return Settlement(symbol, t, rate, price, funding_history.SOURCE_REST)


def stream(symbol, t, rate, price=100.0):
    return Settlement(symbol, t, rate, price, funding_history.SOURCE_STREAM)


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "history.sqlite3")


# --- store -------------------------------------------------------------------------------------------------------


def test_a_new_database_is_wal_at_the_current_schema_version(db):
    with HistoryWriter(db):
        pass
    connection = sqlite3.connect(db)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA user_version").fetchone()[0] == funding_history.SCHEMA_VERSION


def test_rest_rows_replace_stream_rows_and_stream_rows_never_replace_rest_ones(db):
    with HistoryWriter(db) as writer:
        assert writer.add_stream([stream("AUSDT", T0, 0.0003), stream("BUSDT", T0, 0.0002)], 1) == 2
        assert writer.add_rest([rest("AUSDT", T0, 0.00031)], 2) == 1
        assert writer.add_stream([stream("AUSDT", T0, 0.0009)], 3) == 0
        assert writer.add_rest([rest("AUSDT", T0, 0.00031)], 4) == 0, "an identical REST row writes nothing"
    rows = {r.symbol: r for r in HistoryReader(db).at(T0)}
    assert (rows["AUSDT"].funding_rate, rows["AUSDT"].source) == (0.00031, "rest")
    assert (rows["BUSDT"].funding_rate, rows["BUSDT"].source) == (0.0002, "stream")


def test_a_reported_time_a_few_ms_late_belongs_to_its_settlement(db):
    assert funding_history.settlement_slot(T0 + 5) == T0 and funding_history.settlement_slot(T0 - 3) == T0
    with HistoryWriter(db) as writer:
        writer.add_stream([stream("AUSDT", T0, 0.0003)], 1)
        writer.add_rest([Settlement("AUSDT", funding_history.settlement_slot(T0 + 5), 0.0003, 1.0, "rest", T0 + 5)],
                        2)
    assert [(r.funding_time, r.source) for r in HistoryReader(db).at(T0 + 5)] == [(T0, "rest")]


def test_symbol_rows_are_newest_first_within_bounds_and_limit(db):
    with HistoryWriter(db) as writer:
        writer.add_rest([rest("AUSDT", T0 + i * H, i * 1e-5) for i in range(10)], 1)
    reader = HistoryReader(db)
    assert [r.funding_time for r in reader.symbol_rows("AUSDT", None, None, 3)] == [T0 + 9 * H, T0 + 8 * H,
                                                                                   T0 + 7 * H]
    assert [r.funding_time for r in reader.symbol_rows("AUSDT", T0 + 2 * H, T0 + 4 * H, 100)] == [
        T0 + 4 * H, T0 + 3 * H, T0 + 2 * H]


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(db):
    with HistoryWriter(db):
        with pytest.raises(funding_history.HistoryBusy):
            HistoryWriter(db).open()
    with HistoryWriter(db):
        pass


def test_a_newer_schema_is_refused_by_the_writer_and_the_readers(db):
    with HistoryWriter(db):
        pass
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(HistoryError, match="newer"):
        HistoryWriter(db).open()
    with pytest.raises(HistoryError, match="schema version 99"):
        HistoryReader(db).facts()


def test_a_reader_never_writes_and_a_missing_database_is_a_clear_error(db):
    with pytest.raises(HistoryError, match="does not exist"):
        HistoryReader(db).facts()
    with HistoryWriter(db) as writer:
        writer.add_rest([rest("AUSDT", T0, 0.0001)], 1)
    reader = HistoryReader(db)
    with pytest.raises(sqlite3.OperationalError):
        reader._db().execute("DELETE FROM settlements")
    assert reader.facts().last_settlement_ms == T0


def test_prune_deletes_only_rows_older_than_the_cutoff(db):
    with HistoryWriter(db) as writer:
        writer.add_rest([rest("AUSDT", T0 + i * H, 0.0001) for i in range(5)], 1)
        assert writer.prune(T0 + 2 * H) == 2
    assert [r.funding_time for r in HistoryReader(db).symbol_rows("AUSDT", None, None, 10)][-1] == T0 + 2 * H


# --- REST budget -------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_the_budget_never_allows_more_than_its_requests_in_any_window(tmp_path):
    clock = Clock()
    path = str(tmp_path / "budget.json")
    taken = []
    for _ in range(3000):  # 50 minutes in 1 s steps, a fresh process (load from the file) every 60 s
        if int(clock.now) % 60 == 0 or not taken:
            budget = RestBudget(path, 120, 300.0, clock)
            budget.load()
        while budget.take():
            taken.append(clock.now)
        clock.now += 1.0
    worst = max(sum(1 for t in taken if start <= t < start + 300) for start in taken)
    assert worst <= 120
    assert len(taken) >= 120 * 50 / 5 * 0.5 - 60, "and it does let requests through at its rate (%d)" % len(taken)


def test_retry_after_is_kept_across_runs(tmp_path):
    clock = Clock()
    path = str(tmp_path / "budget.json")
    budget = RestBudget(path, 120, 300.0, clock)
    budget.load()
    assert budget.take()
    assert budget.refused(429, "30") == 30.0
    again = RestBudget(path, 120, 300.0, clock)
    again.load()
    assert not again.take() and 29.0 < again.wait_seconds() <= 30.0
    clock.now += 31
    assert again.take()
    saved = read_budget_file(path)
    assert saved["throttled_total"] == 1 and saved["requests_total"] == 2


@pytest.mark.parametrize(("header", "status", "seconds"), [
    ("17", 429, 17.0), (None, 429, 60.0), ("soon", 429, 60.0), (None, 418, 120.0), ("-5", 418, 120.0),
    ("999999999", 418, 3 * 86400.0), ("0", 429, 1.0),
])
def test_retry_after_values(header, status, seconds):
    assert retry_after_seconds(header, status) == seconds


def test_an_unreadable_budget_file_starts_empty_not_full(tmp_path):
    path = tmp_path / "budget.json"
    path.write_text("{garbage")
    budget = RestBudget(str(path), 120, 300.0, Clock())
    budget.load()
    assert budget.load_problem and not budget.take()


# --- lag rule ----------------------------------------------------------------------------------------------------


def test_history_lag_is_measured_against_the_latest_settlement_the_state_proves():
    now_ms = T0 + 30 * 60_000
    records = [(T0 + 8 * H, 8, None), (T0 + H, 1, T0)]
    expected = funding_health.latest_expected_settlement(records, now_ms)
    assert expected == (T0, 8) or expected == (T0, 1)
    up_to_date = funding_health.judge_history_lag((T0, 1), T0)
    assert up_to_date.lag_seconds == 0 and not up_to_date.lagging
    behind = funding_health.judge_history_lag((T0, 1), T0 - 3 * H)
    assert behind.lag_seconds == 3 * 3600 and behind.threshold_seconds == 2 * 3600 and behind.lagging
    assert not funding_health.judge_history_lag((T0, 8), T0 - 3 * H).lagging
    assert not funding_health.judge_history_lag(None, T0).lagging


# --- endpoints ---------------------------------------------------------------------------------------------------

NOW = (T0 + 2 * H) / 1000.0 + 100


@pytest.fixture
def app(tmp_path, db):
    with HistoryWriter(db) as writer:
        writer.add_rest([rest("AUSDT", T0 - i * H, (i - 3) * 1e-5, 10.0 + i) for i in range(1, 2000)], 1)
        writer.add_rest([rest("BUSDT", T0, 0.0002)], 1)
        writer.add_stream([stream("AUSDT", T0, 0.0004, 11.0), stream("BUSDT", T0 + H, 0.0001)], 1)
        writer.set_meta({"rest_cursor_ms": T0 - H})
    state = tmp_path / "state.json"
    symbols = {"AUSDT": record(NOW, nextFundingTime=T0 + 3 * H, fundingIntervalHours=1),
               "BUSDT": record(NOW, nextFundingTime=T0 + 8 * H)}
    write_state(state, symbols, now=NOW)
    config = ApiConfig(clock=lambda: NOW, history=HistoryReader(db))
    return build_app(StateViews(StateReader(str(state))), config, RequestCounter())


def get(app, path, query="", accept=None):
    environ_extra = {"HTTP_ACCEPT": accept} if accept else {}
    if environ_extra:
        return call_with(app, path, query, environ_extra)
    return call(app, path, query)


def call_with(app, path, query, extra):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "8888", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(), **extra}
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"], started["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return int(started["status"][:3]), started["headers"], body


def test_symbol_history_is_newest_first_with_the_source_of_each_row(app):
    status, headers, body = get(app, "/funding/AUSDT/history", "limit=3")
    data = json.loads(body)
    assert status == 200 and data["count"] == 3 and data["limit"] == 3
    assert [(r["fundingTime"], r["source"]) for r in data["data"]] == [
        (T0, "stream"), (T0 - H, "rest"), (T0 - 2 * H, "rest")]
    assert data["data"][0] == {"symbol": "AUSDT", "fundingTime": T0, "fundingRate": 0.0004, "markPrice": 11.0,
                               "source": "stream"}
    assert headers["Cache-Control"] == "no-cache", "an open page may still change"


def test_the_default_limit_is_100_and_at_most_1000_rows_come_back(app):
    assert json.loads(get(app, "/funding/AUSDT/history")[2])["count"] == 100
    assert json.loads(get(app, "/funding/AUSDT/history", "limit=1000")[2])["count"] == 1000


def test_a_settled_confirmed_closed_page_may_be_cached(app):
    status, headers, body = get(app, "/funding/AUSDT/history", "since=%d&until=%d" % (T0 - 10 * H, T0 - 2 * H))
    assert status == 200 and json.loads(body)["count"] == 9
    assert headers["Cache-Control"] == "public, max-age=86400"
    status, headers, _ = get(app, "/funding/AUSDT/history", "since=%d&until=%d" % (T0 - 10 * H, T0))
    assert headers["Cache-Control"] == "no-cache", "it holds a stream row"


def test_history_as_csv_by_format_or_accept_header(app):
    status, headers, body = get(app, "/funding/AUSDT/history", "limit=2&format=csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert body.decode().splitlines() == ["symbol,fundingTime,fundingRate,markPrice,source",
                                          "AUSDT,%d,0.0004,11.0,stream" % T0,
                                          "AUSDT,%d,-2e-05,11.0,rest" % (T0 - H)]
    status, headers, body = get(app, "/funding/AUSDT/history", "limit=2", accept="text/csv")
    assert headers["Content-Type"].startswith("text/csv") and body.count(b"\n") == 3
    status, headers, body = get(app, "/funding/AUSDT/history", "limit=2&format=json", accept="text/csv")
    assert headers["Content-Type"].startswith("application/json")


def test_every_symbol_at_one_funding_time(app):
    status, headers, body = get(app, "/funding/history", "at=%d" % (T0 + 5))
    data = json.loads(body)
    assert status == 200 and data["fundingTime"] == T0 and data["count"] == 2
    assert {(r["symbol"], r["source"]) for r in data["data"]} == {("AUSDT", "stream"), ("BUSDT", "rest")}
    status, headers, body = get(app, "/funding/history", "at=%d&format=csv" % (T0 - H))
    assert status == 200 and headers["Cache-Control"] == "public, max-age=86400"
    assert body.decode().splitlines()[1].startswith("AUSDT,%d," % (T0 - H))


@pytest.mark.parametrize(("path", "query", "status", "error"), [
    ("/funding/AUSDT/history", "since=abc", 400, "bad_time"),
    ("/funding/AUSDT/history", "until=-5", 400, "bad_time"),
    ("/funding/AUSDT/history", "since=20&until=10", 400, "bad_range"),
    ("/funding/AUSDT/history", "limit=1001", 400, "bad_limit"),
    ("/funding/AUSDT/history", "limit=0", 400, "bad_limit"),
    ("/funding/AUSDT/history", "format=xml", 400, "bad_format"),
    ("/funding/B%20AD/history", "", 400, "invalid_symbol"),
    ("/funding/NOPEUSDT/history", "", 404, "not_found"),
    ("/funding/HISTORY/history", "", 404, "reserved"),
    ("/funding/history", "", 400, "bad_request"),
    ("/funding/history", "at=1.5", 400, "bad_time"),
    ("/funding/history", "at=12345", 404, "no_settlement"),
])
def test_bad_history_requests_are_json_errors(app, path, query, status, error):
    got, headers, body = get(app, path.replace("%20", " "), query)
    assert got == status and json.loads(body)["error"] == error
    assert headers["Content-Type"].startswith("application/json")


def test_history_routes_do_not_collide_with_the_symbol_and_batch_routes(app):
    assert get(app, "/funding/HISTORY")[0] == 404 and json.loads(get(app, "/funding/HISTORY")[2])["error"] == "reserved"
    assert get(app, "/funding/AUSDT")[0] in (200, 503)
    assert json.loads(get(app, "/funding/batch", "symbols=AUSDT,BUSDT")[2])["found"] == 2


def test_a_symbol_only_in_the_history_still_answers(app, db):
    with HistoryWriter(db) as writer:
        writer.add_rest([rest("OLDUSDT", T0 - 5 * H, 0.0001)], 1)
    status, _, body = get(app, "/funding/OLDUSDT/history")
    assert status == 200 and json.loads(body)["count"] == 1


def test_a_delisted_symbol_without_history_is_404_delisted(tmp_path, db, app):
    state = tmp_path / "delisted-state.json"
    write_state(state, {"AUSDT": record(NOW)}, now=NOW, delisted={"GONEUSDT": NOW - 100})
    config = ApiConfig(clock=lambda: NOW, history=HistoryReader(db))
    delisted_app = build_app(StateViews(StateReader(str(state))), config, RequestCounter())
    status, _, body = get(delisted_app, "/funding/GONEUSDT/history")
    assert status == 404 and json.loads(body)["error"] == "delisted"
    status, _, body = get(delisted_app, "/funding/AUSDT/history")
    assert status == 200, "a symbol with history answers whatever its listing"


def test_without_a_database_history_is_503_and_health_says_why(tmp_path):
    state = tmp_path / "state.json"
    write_state(state, {"AUSDT": record(time.time())})
    config = ApiConfig(history=HistoryReader(str(tmp_path / "missing.sqlite3")))
    app = build_app(StateViews(StateReader(str(state))), config, RequestCounter())
    status, _, body = call(app, "/funding/AUSDT/history")
    assert status == 503 and json.loads(body)["error"] == "no_history"
    status, _, body = call(app, "/funding/health")
    assert status == 200, "the history never makes the live feed unhealthy"
    assert "does not exist" in json.loads(body)["history"]["error"]


def test_health_reports_the_last_settlement_and_the_lag(app):
    status, _, body = get(app, "/funding/health")
    history = json.loads(body)["history"]
    assert history["lastSettlementTime"] == T0 + H
    assert history["expectedSettlementTime"] == T0 + 2 * H
    assert history["lagSeconds"] == 3600.0 and history["lagThresholdSeconds"] == 7200.0
    assert history["lagging"] is False


def test_metrics_carry_the_history_and_the_rest_budget(tmp_path, db, app):
    budget = RestBudget(str(tmp_path / "budget.json"), 120, 300.0)
    budget.load()
    budget.take()
    budget.refused(429, "5")
    state = tmp_path / "state.json"
    config = ApiConfig(clock=lambda: NOW, history=HistoryReader(db), history_budget_file=budget.path)
    metrics_app = build_app(StateViews(StateReader(str(state))), config, RequestCounter())
    text = call(metrics_app, "/metrics")[2].decode()
    assert "funding_history_ok 1" in text
    assert "funding_history_last_settlement_timestamp_seconds %d" % ((T0 + H) // 1000) in text
    assert "funding_history_lag_seconds 3600" in text
    assert "funding_history_rest_requests_total 1" in text
    assert 'funding_history_rest_refused_total{status="429"} 1' in text
