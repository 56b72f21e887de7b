"""The comparison rules the health monitor's spot check and the comparison tool share (funding_compare)."""

from __future__ import annotations

import funding_compare
import pytest


@pytest.mark.parametrize(
    ("rest", "local", "gap", "expected"),
    [
        (0.0001, 0.0001, 0.0, "match"),
        (0.0001, 0.00010005, 30.0, "match"),
        (0.0001, 0.00012, 3.0, "moved"),
        (0.0001, 0.00012, 0.5, "mismatch"),
        (0.0001, 0.00012, None, "mismatch"),
        (0.0001, 0.0009, 3.0, "wrong"),
        (0.0001, 90000.0, 3.0, "wrong"),
        (None, 0.0001, 0.0, "missing"),
        (0.0001, None, 0.0, "missing"),
    ],
)
def test_funding_rate_rules(rest, local, gap, expected):
    assert funding_compare.judge_funding_rate(rest, local, gap, 1.0) == expected


@pytest.mark.parametrize(("percent", "expected"), [(0.0, "ok"), (0.099, "ok"), (0.1, "warning"), (1.0, "warning"),
                                                   (1.01, "error"), (2.0, "error")])
def test_mark_price_rules(percent, expected):
    assert funding_compare.judge_price(percent, 0.1, 1.0) == expected


def test_a_missing_or_non_numeric_local_price_is_missing_not_a_crash():
    for local in (None, "91000", True, float("nan")):
        assert funding_compare.compare_price(91000.0, local, 0.1, 1.0).verdict == "missing"


def test_price_difference_is_relative_to_the_rest_price():
    price = funding_compare.compare_price(100.0, 100.5, 0.1, 1.0)
    assert price.diff == 0.5 and price.percent == 0.5 and price.verdict == "warning"


def test_local_event_time_falls_back_to_when_the_daemon_stored_the_value():
    assert funding_compare.local_event_ms({"eventTime": 1764724344000, "updatedAt": 1.0}) == 1764724344000.0
    assert funding_compare.local_event_ms({"updatedAt": 1764724344.5}) == 1764724344500.0
    assert funding_compare.local_event_ms({"eventTime": True}) is None
