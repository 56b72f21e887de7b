"""Unit tests of funding_feed: frame parsing, item rules and the per-symbol merge."""

from __future__ import annotations

import json
import math

import funding_feed
import funding_terms
import pytest
from funding_feed import MarkPriceUpdate, merge_updates, parse_frame, parse_item
from funding_terms import FundingTerms, parse_funding_info

NOW = 1_764_724_344.0
E = 1_764_724_344_000
T = 1_764_748_800_000


def item(symbol="BTCUSDT", **overrides):
    base = {
        "e": "markPriceUpdate",
        "E": E,
        "s": symbol,
        "p": "91520.00000000",
        "P": "91497.04220459",
        "i": "91560.70173913",
        "r": "0.00001240",
        "T": T,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _MISSING}


_MISSING = object()


def combined(items, stream="!markPrice@arr"):
    return json.dumps({"stream": stream, "data": items})


# --- frames -------------------------------------------------------------------------------------------------


def test_combined_frame_yields_its_updates():
    result = parse_frame(combined([item("BTCUSDT"), item("ETHUSDT", p="2994.44")]))
    assert not result.frame_rejected
    assert [u.symbol for u in result.updates] == ["BTCUSDT", "ETHUSDT"]
    btc = result.updates[0]
    assert btc == MarkPriceUpdate("BTCUSDT", 91520.0, 91560.70173913, 0.0000124, T, E)


def test_raw_frame_bare_array_is_accepted():
    result = parse_frame(json.dumps([item("BTCUSDT")]))
    assert not result.frame_rejected
    assert [u.symbol for u in result.updates] == ["BTCUSDT"]


def test_one_second_stream_name_is_accepted():
    result = parse_frame(combined([item()], stream="!markPrice@arr@1s"))
    assert not result.frame_rejected and len(result.updates) == 1


def test_bytes_frame_is_decoded_as_utf8():
    result = parse_frame(combined([item()]).encode("utf-8"))
    assert len(result.updates) == 1


def test_invalid_utf8_bytes_reject_the_frame():
    result = parse_frame(b"\xff\xfe[1,2]")
    assert result.frame_rejected and result.frame_reject_reason == "not UTF-8"


@pytest.mark.parametrize("text", ["", "{", "[1, 2", "not json", "[" * 100_000 + "]" * 100_000, '{"a": }'])
def test_invalid_json_rejects_the_frame(text):
    result = parse_frame(text)
    assert result.frame_rejected
    assert result.updates == [] and result.items_rejected == 0


@pytest.mark.parametrize(
    "payload",
    [42, "text", None, True, {"stream": "btcusdt@markPrice@1s", "data": "text"}],
)
def test_non_list_payload_rejects_the_frame(payload):
    result = parse_frame(json.dumps(payload))
    assert result.frame_rejected
    assert "not a list" in result.frame_reject_reason


def test_combined_frame_with_non_list_data_is_rejected():
    result = parse_frame(json.dumps({"stream": "!markPrice@arr", "data": item()}))
    assert result.frame_rejected and "data is dict" in result.frame_reject_reason


def test_per_symbol_combined_frame_yields_its_one_object():
    result = parse_frame(json.dumps({"stream": "xauusdt@markPrice@1s", "data": item("XAUUSDT")}))
    assert not result.frame_rejected and result.per_symbol
    assert [u.symbol for u in result.updates] == ["XAUUSDT"]


def test_per_symbol_raw_frame_is_the_bare_object():
    result = parse_frame(json.dumps(item("XAUUSDT", st=1)))
    assert result.per_symbol and result.updates[0].symbol == "XAUUSDT" and result.updates[0].market_marker == 1


def test_a_bad_per_symbol_object_rejects_its_item_not_silently():
    result = parse_frame(json.dumps({"e": "markPriceUpdate", "s": "BTCUSDT"}))
    assert result.per_symbol and not result.updates and result.items_rejected == 1


def test_the_coin_m_marker_is_carried_on_the_update():
    result = parse_frame(combined([item("BTCUSD_PERP", st=2), item("BTCUSDT")]))
    assert [u.market_marker for u in result.updates] == [2, None]


def test_subscribe_ack_is_a_control_reply_not_data():
    result = parse_frame(json.dumps({"result": None, "id": 7}))
    assert not result.frame_rejected and not result.updates
    assert result.control == funding_feed.ControlReply(7) and result.control.ok


def test_subscribe_error_carries_its_code_and_message():
    result = parse_frame(json.dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": 8}))
    assert result.control is not None and not result.control.ok
    assert (result.control.request_id, result.control.error_code, result.control.error_message) == (
        8, 2, "Invalid request")


def test_merge_tags_records_with_their_contract_type_from_the_universe():
    state = {}
    update = parse_frame(combined([item("XAUUSDT")])).updates
    merge_updates(state, update, 1.0, contracts={"XAUUSDT": {"contractType": "TRADIFI_PERPETUAL",
                                                             "underlyingType": "COMMODITY"}})
    assert state["XAUUSDT"]["contractType"] == "TRADIFI_PERPETUAL"
    assert state["XAUUSDT"]["underlyingType"] == "COMMODITY"
    merge_updates(state, parse_frame(combined([item("XAUUSDT", E=item()["E"] + 1)])).updates, 2.0)
    assert state["XAUUSDT"]["contractType"] == "TRADIFI_PERPETUAL", "kept without a universe"


def test_combined_frame_of_another_stream_is_rejected_even_with_markprice_items():
    result = parse_frame(combined([item()], stream="!ticker@arr"))
    assert result.frame_rejected and result.updates == []


def test_oversized_frame_is_rejected_without_parsing(monkeypatch):
    monkeypatch.setattr(funding_feed, "MAX_FRAME_CHARS", 1000)
    result = parse_frame(combined([item(s) for s in ("AUSDT", "BUSDT", "CUSDT", "DUSDT", "EUSDT", "FUSDT")]))
    assert result.frame_rejected and "oversized" in result.frame_reject_reason


def test_empty_array_is_a_valid_frame_without_updates():
    result = parse_frame("[]")
    assert not result.frame_rejected and result.updates == []


# --- item rules ---------------------------------------------------------------------------------------------


def test_poisoned_24hr_ticker_item_is_rejected_and_the_rest_of_the_frame_kept():
    ticker = {"e": "24hrTicker", "E": E, "s": "BTCUSDT", "p": "4463.40", "c": "91520.0", "v": "123"}
    result = parse_frame(combined([ticker, item("ETHUSDT")]))
    assert [u.symbol for u in result.updates] == ["ETHUSDT"]
    assert result.items_rejected == 1
    assert result.reject_reasons == {"not a markPriceUpdate": 1}


@pytest.mark.parametrize("event", [None, "", "markpriceupdate", "MarkPriceUpdate", 1, "kline", _MISSING])
def test_item_without_the_exact_markpriceupdate_event_is_rejected(event):
    verdict, reason = parse_item(item(e=event))
    assert verdict == "reject" and reason == "not a markPriceUpdate"


@pytest.mark.parametrize("rate", [""])
def test_item_with_empty_funding_rate_is_skipped_not_rejected(rate):
    result = parse_frame(combined([item("BTCUSDT_260925", r=rate, T=0), item("ETHUSDT_261225", r=rate)]))
    assert result.updates == []
    assert result.items_skipped_no_funding == 2 and result.items_rejected == 0


@pytest.mark.parametrize("next_funding", [0, "0"])
def test_item_with_zero_next_funding_time_is_skipped(next_funding):
    verdict, reason = parse_item(item("BTCUSDT_260925", r="0.00000000", T=next_funding))
    assert (verdict, reason) == ("skip", "no funding")


def test_dated_contract_with_garbage_price_is_skipped_not_rejected():
    verdict, _ = parse_item(item("BTCUSDT_260925", r="", T=0, p="garbage"))
    assert verdict == "skip"


def test_zero_funding_rate_with_a_next_funding_time_is_a_valid_perpetual():
    verdict, update = parse_item(item(r="0.00000000"))
    assert verdict == "ok" and update.funding_rate == 0.0


def test_negative_funding_rate_is_valid():
    verdict, update = parse_item(item(r="-0.00375000"))
    assert verdict == "ok" and update.funding_rate == -0.00375


@pytest.mark.parametrize(
    "price",
    ["NaN", "nan", "Infinity", "-Infinity", "inf", float("nan"), float("inf"), "-1", "-91520.0", "0", "0.0", 0, -5,
     "1e400", "9" * 400, "\u0663\u0660", "\uff11",
     "1e13", 10**13, "abc", "", " ", "1,5", "0x10", "1_000", "91520.0 ", True, False, None,
     [], {}, ["91520"], {"v": "1"}, _MISSING],
)
def test_bad_mark_price_rejects_the_item(price):
    verdict, reason = parse_item(item(p=price))
    assert (verdict, reason) == ("reject", "bad mark price")


@pytest.mark.parametrize("price", ["91520.5", "91520", "0.0000123", "1e-5", "1.5E+3", 91520.5, 91520, ".5"])
def test_well_formed_mark_prices_are_accepted(price):
    verdict, update = parse_item(item(p=price))
    assert verdict == "ok"
    assert math.isclose(update.mark_price, float(price))


@pytest.mark.parametrize("index", ["NaN", "-1", "0", "abc", True, [], "1e400"])
def test_bad_index_price_rejects_the_item(index):
    verdict, reason = parse_item(item(i=index))
    assert (verdict, reason) == ("reject", "bad index price")


@pytest.mark.parametrize("index", [_MISSING, None, ""])
def test_missing_index_price_is_tolerated(index):
    verdict, update = parse_item(item(i=index))
    assert verdict == "ok" and update.index_price is None


@pytest.mark.parametrize("rate", ["NaN", "inf", "abc", True, None, [], "1.5", "-2", "1e300", _MISSING])
def test_bad_funding_rate_rejects_the_item(rate):
    verdict, reason = parse_item(item(r=rate))
    assert (verdict, reason) == ("reject", "bad funding rate")


@pytest.mark.parametrize("next_funding", ["abc", -1, 1.5e12, "1.7e12", True, None, 10**20, [], _MISSING])
def test_bad_next_funding_time_rejects_the_item(next_funding):
    verdict, reason = parse_item(item(T=next_funding))
    assert (verdict, reason) == ("reject", "bad next funding time")


@pytest.mark.parametrize("event_time", [0, "abc", -5, "\u0661\u0667\u0666", 1.7e12, True, None, 10**20, _MISSING])
def test_bad_event_time_rejects_the_item(event_time):
    verdict, reason = parse_item(item(E=event_time))
    assert (verdict, reason) == ("reject", "bad event time")


def test_numeric_string_times_are_accepted():
    verdict, update = parse_item(item(T=str(T), E=str(E)))
    assert verdict == "ok" and (update.next_funding_time, update.event_time) == (T, E)


@pytest.mark.parametrize(
    "symbol",
    ["", "btcusdt", "BTC-USDT", "BTC USDT", "BTC/USDT", "A" * 41, "BTCUSDT\n", "../../etc", 123, None, [],
     "币安人生USDT", _MISSING],
)
def test_bad_symbol_rejects_the_item(symbol):
    verdict, reason = parse_item(item(symbol=symbol))
    assert (verdict, reason) == ("reject", "bad symbol")


@pytest.mark.parametrize("symbol", ["BTCUSDT", "1000PEPEUSDT", "XAUUSDT", "TSLAUSDT", "BTCUSDC", "A" * 40])
def test_real_world_symbol_shapes_are_accepted(symbol):
    verdict, update = parse_item(item(symbol=symbol))
    assert verdict == "ok" and update.symbol == symbol


@pytest.mark.parametrize("thing", [None, 1, "x", [item()], True])
def test_non_object_item_is_rejected(thing):
    verdict, reason = parse_item(thing)
    assert (verdict, reason) == ("reject", "item is not an object")


def test_unknown_keys_are_ignored():
    verdict, update = parse_item(item(ap="91500.1", st="TRADING", extra={"nested": [1, 2]}, P="garbage"))
    assert verdict == "ok" and update.mark_price == 91520.0


def test_every_bad_item_is_counted_and_never_costs_the_rest_of_its_frame():
    items = [
        item("AAAUSDT"),
        item("BADPRICEUSDT", p="NaN"),
        "not an object",
        {"e": "24hrTicker", "s": "BTCUSDT", "p": "4463.4"},
        item("NEGUSDT", p="-3"),
        item("BTCUSDT_260925", r="", T=0),
        item("TYPEUSDT", T="soon"),
        item("HUGEUSDT", p="1e308"),
        item("ZZZUSDT"),
    ]
    result = parse_frame(combined(items))
    assert [u.symbol for u in result.updates] == ["AAAUSDT", "ZZZUSDT"]
    assert result.items_rejected == 6
    assert result.items_skipped_no_funding == 1
    assert not result.frame_rejected


def test_nan_literal_in_json_is_rejected_per_item():
    text = '[{"e":"markPriceUpdate","E":%d,"s":"BTCUSDT","p":NaN,"r":"0.0001","T":%d},' \
           '{"e":"markPriceUpdate","E":%d,"s":"ETHUSDT","p":"3000","r":"0.0001","T":%d}]' % (E, T, E, T)
    result = parse_frame(text)
    assert [u.symbol for u in result.updates] == ["ETHUSDT"]
    assert result.reject_reasons == {"bad mark price": 1}


# --- merge --------------------------------------------------------------------------------------------------


def update(symbol="BTCUSDT", mark=91520.0, index=91560.7, rate=0.0001, event_time=E):
    return MarkPriceUpdate(symbol, mark, index, rate, T, event_time)


def test_merge_writes_the_seed_record_names_plus_event_time():
    state = {}
    result = merge_updates(state, [update()], NOW)
    assert result.accepted == 1
    assert state == {
        "BTCUSDT": {
            "fundingRate": 0.0001,
            "markPrice": 91520.0,
            "indexPrice": 91560.7,
            "nextFundingTime": T,
            "updatedAt": NOW,
            "eventTime": E,
        }
    }


def test_shards_merge_into_the_state_without_removing_other_symbols():
    state = {}
    merge_updates(state, [update("AUSDT"), update("BUSDT")], NOW)
    merge_updates(state, [update("CUSDT", mark=5.0)], NOW + 1)
    assert sorted(state) == ["AUSDT", "BUSDT", "CUSDT"]
    assert state["AUSDT"]["updatedAt"] == NOW and state["CUSDT"]["updatedAt"] == NOW + 1


def test_missing_index_price_keeps_the_previous_one():
    state = {}
    merge_updates(state, [update(index=100.0)], NOW)
    merge_updates(state, [update(index=None, mark=101.0, event_time=E + 1000)], NOW + 1)
    assert state["BTCUSDT"]["indexPrice"] == 100.0 and state["BTCUSDT"]["markPrice"] == 101.0


def test_missing_index_price_on_a_new_symbol_is_null():
    state = {}
    merge_updates(state, [update(index=None)], NOW)
    assert state["BTCUSDT"]["indexPrice"] is None


def test_older_event_time_is_ignored_and_counted():
    state = {}
    merge_updates(state, [update(mark=200.0, event_time=E + 3000)], NOW)
    result = merge_updates(state, [update(mark=100.0, event_time=E)], NOW + 1)
    assert result.out_of_order == 1 and result.accepted == 0
    assert state["BTCUSDT"]["markPrice"] == 200.0 and state["BTCUSDT"]["updatedAt"] == NOW


def test_equal_event_time_from_an_overlapping_connection_is_accepted():
    state = {}
    merge_updates(state, [update(event_time=E)], NOW)
    result = merge_updates(state, [update(event_time=E)], NOW + 0.5)
    assert result.accepted == 1 and state["BTCUSDT"]["updatedAt"] == NOW + 0.5


def test_implausibly_future_stored_event_time_does_not_freeze_the_symbol():
    state = {"BTCUSDT": {"markPrice": 1.0, "updatedAt": NOW, "eventTime": int(NOW * 1000) + 10 * 86_400_000}}
    result = merge_updates(state, [update(mark=2.0, event_time=int(NOW * 1000))], NOW)
    assert result.accepted == 1 and state["BTCUSDT"]["markPrice"] == 2.0


def test_merge_replaces_records_instead_of_mutating_them():
    state = {}
    merge_updates(state, [update()], NOW)
    before = state["BTCUSDT"]
    snapshot = dict(before)
    merge_updates(state, [update(mark=1.0, event_time=E + 1)], NOW + 1)
    assert before == snapshot and state["BTCUSDT"] is not before


def test_new_symbols_beyond_the_limit_are_ignored_but_known_ones_update():
    state = {}
    merge_updates(state, [update("AUSDT"), update("BUSDT")], NOW, max_symbols=2)
    result = merge_updates(state, [update("CUSDT"), update("AUSDT", mark=7.0, event_time=E + 1)], NOW + 1,
                           max_symbols=2)
    assert result.over_symbol_limit == 1 and result.accepted == 1
    assert sorted(state) == ["AUSDT", "BUSDT"] and state["AUSDT"]["markPrice"] == 7.0


def terms(hours, cap=None, floor=None):
    return FundingTerms(hours, cap, floor)


def test_funding_terms_default_to_eight_hours_and_no_bounds_for_absent_symbols():
    state = {}
    merge_updates(state, [update("AUSDT"), update("BUSDT")], NOW, funding_terms={"AUSDT": terms(4, 0.02, -0.02)})
    assert state["AUSDT"]["fundingIntervalHours"] == 4
    assert (state["AUSDT"]["fundingRateCap"], state["AUSDT"]["fundingRateFloor"]) == (0.02, -0.02)
    assert state["BUSDT"]["fundingIntervalHours"] == 8
    assert state["BUSDT"]["fundingRateCap"] is None and state["BUSDT"]["fundingRateFloor"] is None


def test_without_funding_info_a_record_keeps_its_terms_or_has_none():
    state = {}
    merge_updates(state, [update("AUSDT")], NOW)
    assert "fundingIntervalHours" not in state["AUSDT"] and "fundingRateCap" not in state["AUSDT"]
    state["AUSDT"] = dict(state["AUSDT"], fundingIntervalHours=1, fundingRateCap=0.005)
    merge_updates(state, [update("AUSDT", event_time=E + 1)], NOW + 1)
    assert state["AUSDT"]["fundingIntervalHours"] == 1 and state["AUSDT"]["fundingRateCap"] == 0.005


def test_apply_funding_terms_updates_existing_records_and_reports_interval_changes():
    state = {}
    merge_updates(state, [update("AUSDT"), update("BUSDT")], NOW, funding_terms={})
    changed, changes = funding_feed.apply_funding_terms(state, {"AUSDT": terms(1, 0.005, -0.005)}, NOW + 10)
    assert changed == 1
    assert state["AUSDT"]["fundingIntervalHours"] == 1 and state["BUSDT"]["fundingIntervalHours"] == 8
    assert changes == [funding_feed.IntervalChange("AUSDT", 8, 1, int((NOW + 10) * 1000), "fundingInfo")]
    assert state["AUSDT"]["fundingIntervalChangedAt"] == int((NOW + 10) * 1000)
    assert funding_feed.apply_funding_terms(state, {"AUSDT": terms(1, 0.005, -0.005)}, NOW + 20) == (0, [])
    merge_updates(state, [update("AUSDT", event_time=E + 5)], NOW + 30, funding_terms={"AUSDT": terms(1, 0.005)})
    assert state["AUSDT"]["fundingIntervalChangedAt"] == int((NOW + 10) * 1000), "kept until the next change"


def test_parse_funding_info_keeps_valid_entries_with_caps_and_floors():
    body = [
        {"symbol": "AUSDT", "adjustedFundingRateCap": "0.02", "adjustedFundingRateFloor": "-0.02",
         "fundingIntervalHours": 4},
        {"symbol": "BUSDT", "fundingIntervalHours": 1},
        {"symbol": "FUSDT", "adjustedFundingRateCap": "huge", "adjustedFundingRateFloor": "0.01",
         "fundingIntervalHours": 8},
        {"symbol": "bad symbol", "fundingIntervalHours": 4},
        {"symbol": "CUSDT", "fundingIntervalHours": "4"},
        {"symbol": "DUSDT", "fundingIntervalHours": 0},
        {"symbol": "EUSDT", "fundingIntervalHours": True},
        "junk",
    ]
    parsed, bad = parse_funding_info(body)
    assert parsed == {"AUSDT": terms(4, 0.02, -0.02), "BUSDT": terms(1), "FUSDT": terms(8)}
    assert bad == 5
    with pytest.raises(ValueError):
        parse_funding_info({"code": -1})
    with pytest.raises(ValueError, match="not one usable"):
        parse_funding_info([{"symbol": "x"}, 3])
    assert parse_funding_info([]) == ({}, 0)


HOUR = 3_600_000
T0 = 1_764_748_800_000  # a funding time (08:00 UTC)


def settling_item(symbol="AUSDT", rate=0.0001, mark=10.0, next_time=T0, event_time=T0 - 2_000):
    return MarkPriceUpdate(symbol, mark, mark, rate, next_time, event_time)


def test_a_settlement_keeps_the_last_stream_value_before_it():
    state = {}
    merge_updates(state, [settling_item(rate=0.0003, mark=11.0, event_time=T0 - 1_000)], NOW, funding_terms={})
    result = merge_updates(state, [settling_item(rate=0.0001, next_time=T0 + 8 * HOUR, event_time=T0 + 500)], NOW + 2,
                           funding_terms={})
    assert result.settlements == 1
    assert state["AUSDT"]["lastSettlement"] == {"fundingTime": T0, "fundingRate": 0.0003, "markPrice": 11.0,
                                                "eventTime": T0 - 1_000}
    merge_updates(state, [settling_item(rate=0.0002, next_time=T0 + 8 * HOUR, event_time=T0 + 9_000)], NOW + 3,
                  funding_terms={})
    assert state["AUSDT"]["lastSettlement"]["fundingTime"] == T0, "kept until the next settlement"


def test_a_value_too_long_before_the_settlement_is_not_kept_as_settled():
    state = {}
    merge_updates(state, [settling_item(event_time=T0 - funding_feed.STREAM_SETTLEMENT_MAX_GAP_MS - 1)], NOW)
    result = merge_updates(state, [settling_item(next_time=T0 + 8 * HOUR, event_time=T0 + 500)], NOW + 2)
    assert result.settlements == 1 and "lastSettlement" not in state["AUSDT"]


def test_an_interval_change_is_seen_from_the_spacing_of_next_funding_time():
    state = {}
    eight = {"AUSDT": terms(8, 0.02, -0.02)}
    merge_updates(state, [settling_item(event_time=T0 - 1_000)], NOW, funding_terms=eight)
    result = merge_updates(state, [settling_item(next_time=T0 + HOUR, event_time=T0 + 300)], NOW + 1,
                           funding_terms=eight)
    assert result.revealed_intervals == {"AUSDT": 1}
    assert result.interval_changes == [funding_feed.IntervalChange("AUSDT", 8, 1, T0, "nextFundingTime spacing")]
    record = state["AUSDT"]
    assert record["fundingIntervalHours"] == 1 and record["fundingIntervalChangedAt"] == T0
    assert record["fundingRateCap"] == 0.02, "the bounds stay until fundingInfo says otherwise"


def test_spacing_proves_nothing_after_missed_settlements_or_in_odd_units():
    assert funding_terms.interval_from_spacing(T0, T0 + 8 * HOUR, T0 + 10) == 8
    assert funding_terms.interval_from_spacing(T0, T0 + 4 * HOUR + 5, T0 + 10) == 4, "…005 ms funding times"
    assert funding_terms.interval_from_spacing(T0, T0 + 16 * HOUR, T0 + 9 * HOUR) is None, "away across several"
    assert funding_terms.interval_from_spacing(T0, T0 + 3 * HOUR, T0 + 10) is None, "not an interval Binance uses"
    assert funding_terms.interval_from_spacing(T0, T0 + 16_000, T0 + 10) is None, "a fast simulated period"
    assert funding_terms.interval_from_spacing(T0, T0 + HOUR, T0 - 10) is None, "no settlement yet"
    assert funding_terms.interval_from_spacing(None, T0 + HOUR, T0 + 10) is None


def test_a_restart_across_several_settlements_is_no_interval_change():
    state = {}
    eight = {"AUSDT": terms(8)}
    merge_updates(state, [settling_item(event_time=T0 - 1_000)], NOW, funding_terms=eight)
    result = merge_updates(state, [settling_item(next_time=T0 + 16 * HOUR, event_time=T0 + 9 * HOUR)], NOW + 1,
                           funding_terms=eight)
    assert result.interval_changes == [] and state["AUSDT"]["fundingIntervalHours"] == 8


def test_restore_keeps_good_records_with_their_old_updated_at_and_drops_bad_ones():
    old = {
        "BTCUSDT": {"fundingRate": 0.0001, "markPrice": 91520.0, "indexPrice": None, "nextFundingTime": T,
                    "updatedAt": 1000.0, "eventTime": E, "junk": "x"},
        "bad symbol": {"markPrice": 1.0, "updatedAt": 1.0},
        "NOPRICEUSDT": {"markPrice": None, "updatedAt": 1.0},
        "WEIRDUSDT": {"markPrice": 2.0, "updatedAt": 1.0, "nextFundingTime": "soon", "eventTime": 1.5},
    }
    restored, dropped = funding_feed.restore_funding_state(old)
    assert dropped == 2
    assert restored["BTCUSDT"] == {"fundingRate": 0.0001, "markPrice": 91520.0, "indexPrice": None,
                                   "nextFundingTime": T, "updatedAt": 1000.0, "eventTime": E}
    assert restored["WEIRDUSDT"] == {"markPrice": 2.0, "updatedAt": 1.0}


def test_parse_and_merge_end_to_end_never_moves_a_mark_price_with_poison():
    state = {}
    merge_updates(state, parse_frame(combined([item("BTCUSDT")])).updates, NOW)
    poison = [
        {"e": "24hrTicker", "E": E + 1, "s": "BTCUSDT", "p": "4463.40"},
        item("BTCUSDT", p="NaN", E=E + 2),
        item("BTCUSDT", p="-1", E=E + 3),
        item("BTCUSDT", p="1e300", E=E + 4),
        item("BTCUSDT", p=["91520"], E=E + 5),
        item("BTCUSDT", p=True, E=E + 6),
    ]
    result = parse_frame(combined(poison))
    merge_updates(state, result.updates, NOW + 1)
    assert result.items_rejected == len(poison)
    assert state["BTCUSDT"]["markPrice"] == 91520.0 and state["BTCUSDT"]["updatedAt"] == NOW


def test_restore_keeps_terms_and_the_last_settlement_including_null_bounds():
    old = {"AUSDT": {"fundingRate": 0.0001, "markPrice": 1.0, "updatedAt": 1000.0, "fundingIntervalHours": 8,
                     "fundingRateCap": None, "fundingRateFloor": None, "fundingIntervalChangedAt": T,
                     "lastSettlement": {"fundingTime": T, "fundingRate": 0.0002, "markPrice": 1.0, "eventTime": T - 1}},
           "BUSDT": {"markPrice": 1.0, "updatedAt": 1000.0, "lastSettlement": {"fundingTime": "x"}}}
    restored, dropped = funding_feed.restore_funding_state(old)
    assert dropped == 0
    assert restored["AUSDT"] == old["AUSDT"]
    assert "lastSettlement" not in restored["BUSDT"], "a malformed settlement is left out"
