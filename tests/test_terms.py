"""Funding terms and the fields derived from them: exact values, the API record, sorting and filtering by them."""

from __future__ import annotations

import json
import time

import funding_terms
import pytest
from funding_api_app import ApiConfig, build_app
from funding_api_metrics import RequestCounter
from funding_api_view import StateViews
from funding_state import StateReader
from test_api_support import call, record, write_state

NOW = 1_764_744_000.0  # 06:40 UTC, 1 h 20 min before the 08:00 funding time
NEXT = 1_764_748_800_000


@pytest.mark.parametrize(
    ("rate", "hours", "annualized", "hourly"),
    [
        (0.0001, 8, 0.1095, 0.0000125),
        (0.0001, 4, 0.219, 0.000025),
        (0.0001, 1, 0.876, 0.0001),
        (-0.00012345, 8, -0.13517775, -0.00001543125),
        (-0.00012345, 4, -0.2703555, -0.0000308625),
        (-0.00012345, 1, -1.0814220, -0.00012345),
        (0.005, 1, 43.8, 0.005),
        (0.0, 8, 0.0, 0.0),
    ],
)
def test_annualized_and_hourly_rates_are_exact_for_each_interval(rate, hours, annualized, hourly):
    derived = funding_terms.derived_fields({"fundingRate": rate, "fundingIntervalHours": hours})
    assert derived["fundingRateAnnualized"] == annualized
    assert derived["fundingRateHourly"] == hourly


@pytest.mark.parametrize(
    ("rate", "cap", "floor", "usage"),
    [
        (0.001, 0.02, -0.02, 0.05),
        (-0.003, 0.02, -0.0075, 0.4),
        (0.0075, 0.0075, -0.0075, 1.0),
        (-0.0075, 0.02, -0.0075, 1.0),
        (0.001, None, None, None),
        (-0.001, 0.02, None, None),
        (0.001, None, -0.02, None),
        (0.0, 0.02, -0.02, 0.0),
        (0.0, None, None, None),
    ],
)
def test_cap_usage_uses_the_cap_for_positive_and_the_floor_for_negative_rates(rate, cap, floor, usage):
    derived = funding_terms.derived_fields({"fundingRate": rate, "fundingRateCap": cap, "fundingRateFloor": floor})
    assert derived["capUsage"] == usage


def test_a_record_without_a_known_interval_is_read_as_eight_hours_and_without_a_rate_derives_nothing():
    assert funding_terms.derived_fields({"fundingRate": 0.0001})["fundingRateAnnualized"] == 0.1095
    assert funding_terms.derived_fields({"fundingRate": None, "fundingIntervalHours": 1}) == {
        "fundingRateAnnualized": None, "fundingRateHourly": None, "capUsage": None}


def test_seconds_to_funding_counts_down_and_never_goes_negative():
    assert funding_terms.seconds_to_funding(NEXT, NOW) == 4800.0
    assert funding_terms.seconds_to_funding(NEXT, NEXT / 1000 + 5) == 0.0
    assert funding_terms.seconds_to_funding(0, NOW) is None
    assert funding_terms.seconds_to_funding(None, NOW) is None


# --- through the API ---------------------------------------------------------------------------------------------


def symbols():
    return {
        "AAAUSDT": record(NOW, rate=0.0001, fundingIntervalHours=8, fundingRateCap=None, fundingRateFloor=None),
        "BBBUSDT": record(NOW, rate=0.0001, fundingIntervalHours=1, fundingRateCap=0.005, fundingRateFloor=-0.005,
                          fundingIntervalChangedAt=NEXT - 3_600_000),
        "CCCUSDT": record(NOW, rate=-0.0003, fundingIntervalHours=4, fundingRateCap=0.02, fundingRateFloor=-0.0075),
        "DDDUSDT": record(NOW, rate=0.0004, fundingIntervalHours=4, fundingRateCap=0.02, fundingRateFloor=-0.02),
    }


@pytest.fixture
def app(tmp_path):
    path = tmp_path / "state.json"
    write_state(path, symbols(), now=NOW)
    return build_app(StateViews(StateReader(str(path))), ApiConfig(clock=lambda: NOW), RequestCounter())


def get_json(app, path, query=""):
    status, headers, body = call(app, path, query)
    return status, json.loads(body)


def test_a_symbol_answers_its_terms_and_derived_fields(app):
    status, body = get_json(app, "/funding/BBBUSDT")
    assert status == 200
    assert body["fundingIntervalHours"] == 1
    assert (body["fundingRateCap"], body["fundingRateFloor"]) == (0.005, -0.005)
    assert body["fundingIntervalChangedAt"] == NEXT - 3_600_000
    assert body["fundingRateAnnualized"] == 0.876 and body["fundingRateHourly"] == 0.0001
    assert body["capUsage"] == 0.02
    assert body["secondsToFunding"] == 4800.0
    status, body = get_json(app, "/funding/AAAUSDT")
    assert body["fundingRateCap"] is None and body["capUsage"] is None and "fundingIntervalChangedAt" not in body


def test_funding_sorts_by_annualized_rate_and_cap_usage_in_both_directions(app):
    def order(sort):
        status, body = get_json(app, "/funding", "sort=" + sort)
        assert status == 200, body
        return [r["symbol"] for r in body["data"]]

    # annualized: AAA 0.1095, BBB 0.876, CCC -0.657, DDD 0.876
    assert order("fundingRateAnnualized") == ["CCCUSDT", "AAAUSDT", "BBBUSDT", "DDDUSDT"]
    assert order("-fundingRateAnnualized") == ["BBBUSDT", "DDDUSDT", "AAAUSDT", "CCCUSDT"]
    # capUsage: AAA none (last), BBB 0.02, CCC 0.04, DDD 0.02
    assert order("capUsage") == ["BBBUSDT", "DDDUSDT", "CCCUSDT", "AAAUSDT"]
    assert order("-capUsage") == ["CCCUSDT", "BBBUSDT", "DDDUSDT", "AAAUSDT"]


def test_funding_filters_by_interval(app):
    status, body = get_json(app, "/funding", "fundingIntervalHours=4&sort=-fundingRateAnnualized")
    assert [r["symbol"] for r in body["data"]] == ["DDDUSDT", "CCCUSDT"]
    assert body["matched"] == 2 and body["total"] == 4
    status, body = get_json(app, "/funding", "fundingIntervalHours=1,8")
    assert [r["symbol"] for r in body["data"]] == ["AAAUSDT", "BBBUSDT"]


@pytest.mark.parametrize("value", ["0", "25", "x", "4,", "1.5", "-4"])
def test_a_bad_interval_filter_is_a_400(app, value):
    status, body = get_json(app, "/funding", "fundingIntervalHours=" + value)
    assert status == 400 and body["error"] == "bad_interval"


def test_the_interval_change_counter_is_in_metrics(tmp_path):
    path = tmp_path / "state.json"
    write_state(path, symbols(), now=time.time(), interval_changes=3, funding_info_errors=1)
    app = build_app(StateViews(StateReader(str(path))), ApiConfig(), RequestCounter())
    status, _, body = call(app, "/metrics")
    text = body.decode()
    assert "funding_daemon_interval_changes_total 3" in text
    assert "funding_daemon_funding_info_errors_total 1" in text
