"""Unit tests of the pure parts of issue 12: exchangeInfo parsing, the removal gate, coverage, subscriptions."""

from __future__ import annotations

import funding_health
import funding_json
import funding_state
import funding_subscriptions as subs
import funding_universe as fu
import pytest


def entry(symbol, contract_type="PERPETUAL", status="TRADING", underlying="COIN", quote="USDT", **extra):
    base = {"symbol": symbol, "pair": symbol, "contractType": contract_type, "status": status,
            "underlyingType": underlying, "underlyingSubType": [], "quoteAsset": quote, "marginAsset": quote,
            "deliveryDate": 4133404800000, "onboardDate": 1569398400000}
    base.update(extra)
    return base


def info(*entries):
    return {"timezone": "UTC", "serverTime": 1, "symbols": list(entries)}


# --- parsing --------------------------------------------------------------------------------------------------


def test_trading_perpetuals_of_every_perpetual_type_form_the_universe_with_their_facts():
    universe = fu.parse_exchange_info(info(
        entry("BTCUSDT"),
        entry("XAUUSDT", "TRADIFI_PERPETUAL", underlying="COMMODITY"),
        entry("TSLAUSDT", "TRADIFI_PERPETUAL", underlying="EQUITY"),
        entry("FOOUSDC", "NEW_KIND_PERPETUAL", quote="USDC"),
    ))
    assert set(universe.contracts) == {"BTCUSDT", "XAUUSDT", "TSLAUSDT", "FOOUSDC"}
    assert universe.contracts["XAUUSDT"] == {"contractType": "TRADIFI_PERPETUAL", "underlyingType": "COMMODITY",
                                             "quoteAsset": "USDT", "marginAsset": "USDT"}
    assert universe.tradifi_count() == 2
    assert universe.bad_entries == 0


def test_settling_pending_and_dated_contracts_are_excluded_with_their_reason():
    universe = fu.parse_exchange_info(info(
        entry("BTCUSDT"),
        entry("OLDUSDT", status="SETTLING"),
        entry("NEWUSDT", status="PENDING_TRADING"),
        entry("BTCUSDT_260925", "CURRENT_QUARTER"),
    ))
    assert set(universe.contracts) == {"BTCUSDT"}
    assert universe.excluded == {"OLDUSDT": "settling", "NEWUSDT": "not_trading", "BTCUSDT_260925": "dated"}


@pytest.mark.parametrize("bad", [
    "not an object",
    {"symbol": 5},
    {"symbol": "lower"},
    entry("NOTYPE", contract_type=None),
    entry("BADTYPE", contract_type=["PERPETUAL"]),
    entry("NOSTATUS", status=None),
    entry("NOQUOTE", quote=None),
])
def test_a_malformed_entry_is_skipped_and_counted_and_the_rest_kept(bad):
    universe = fu.parse_exchange_info(info(entry("BTCUSDT"), bad, entry("ETHUSDT")))
    assert set(universe.contracts) == {"BTCUSDT", "ETHUSDT"}
    assert universe.bad_entries == 1 and universe.bad_entry_example


def test_a_symbol_listed_twice_is_a_bad_entry():
    universe = fu.parse_exchange_info(info(entry("BTCUSDT"), entry("BTCUSDT", status="SETTLING")))
    assert universe.bad_entries == 1 and "twice" in universe.bad_entry_example


@pytest.mark.parametrize(("body", "why"), [
    ([], "not an object"),
    ("<html>", "not an object"),
    ({"code": -1, "msg": "x"}, "no symbols list"),
    ({"symbols": {"BTCUSDT": {}}}, "no symbols list"),
    (info(), "no TRADING perpetual"),
    (info(entry("A_1", "CURRENT_QUARTER"), entry("B", status="SETTLING")), "no TRADING perpetual"),
    (info(*[entry("S%d" % i) for i in range(5001)]), "more than 5000"),
])
def test_an_unusable_answer_raises_so_the_last_good_universe_stays(body, why):
    with pytest.raises(fu.UniverseError, match=why):
        fu.parse_exchange_info(body)


@pytest.mark.parametrize(("symbol", "marker", "reason"), [
    ("BTCUSD_PERP", 2, "coin_m"),
    ("OLDUSDT", None, "settling"),
    ("BTCUSDT_260925", 1, "dated"),
    ("NOPEUSDT", None, "unknown"),
])
def test_ignore_reason_names_why_a_row_is_not_served(symbol, marker, reason):
    excluded = {"OLDUSDT": "settling", "BTCUSDT_260925": "dated"}
    assert fu.ignore_reason(symbol, marker, excluded) == reason
    assert reason in fu.IGNORE_REASONS


# --- the removal gate -------------------------------------------------------------------------------------------


def test_the_first_universe_and_small_changes_apply_at_once():
    gate = fu.UniverseGate()
    current = frozenset("ABCD")
    assert gate.decide(None, current).apply
    decision = gate.decide(current, frozenset("ABCE"))
    assert decision.apply and decision.removed == {"D"} and decision.added == {"E"}
    assert gate.decide(current, frozenset("AB")).apply, "exactly half is not more than half"


def test_removing_more_than_half_waits_for_a_second_agreeing_answer():
    gate = fu.UniverseGate()
    current = frozenset("ABCDEFGH")
    shrunk = frozenset("AB")
    first = gate.decide(current, shrunk)
    assert not first.apply and first.held_back and gate.holding
    assert gate.decide(current, shrunk).apply
    assert not gate.holding


def test_a_different_second_answer_does_not_confirm_a_large_removal():
    gate = fu.UniverseGate()
    current = frozenset("ABCDEFGH")
    assert not gate.decide(current, frozenset("AB")).apply
    assert not gate.decide(current, frozenset("AC")).apply, "a new large removal starts its own wait"
    assert gate.decide(current, current).apply and not gate.holding, "a normal answer ends the wait"
    assert not gate.decide(current, frozenset("AC")).apply


# --- coverage (the health rule lives in funding_health) -----------------------------------------------------


def test_coverage_lists_universe_symbols_without_fresh_data():
    feed = funding_health.FeedSnapshot({}, 2, 0.0, 1000.0, universe=frozenset({"A", "B", "C"}),
                                       updated_at={"A": 990.0, "B": 100.0, "X": 1000.0})
    assert feed.missing_symbols(1000.0, 180.0) == ["B", "C"]
    assert funding_health.FeedSnapshot({}, 1, 0.0, 1.0).missing_symbols(1000.0, 180.0) == []


def reason(expected, missing, low_since, started=0.0, now=1000.0, grace=120.0):
    return funding_health.coverage_reason(expected, missing, low_since, daemon_started_at=started, now=now,
                                          grace_seconds=grace)


def test_coverage_under_99_percent_is_a_reason_only_after_the_grace():
    missing = ["M%d" % i for i in range(30)]
    assert reason(1000, missing, low_since=900.0) is None, "low for 100 s < 120 s"
    text = reason(1000, missing, low_since=800.0)
    assert text.startswith("coverage: 970 of 1000 perpetuals served (97.0 %")
    assert "M0" in text and "M19" in text and "M20" not in text and text.endswith(", ...")


def test_coverage_reason_waits_for_the_grace_after_start_and_needs_the_low_spell():
    missing = ["M%d" % i for i in range(30)]
    assert reason(1000, missing, low_since=0.0, started=950.0) is None
    assert reason(1000, missing, low_since=None) is None
    assert reason(1000, missing[:10], low_since=0.0) is None, "99 % is enough"
    assert reason(None, missing, low_since=0.0) is None and reason(0, [], low_since=0.0) is None


def test_judge_turns_unhealthy_on_low_coverage_and_degraded_without_a_universe_after_the_grace():
    now = 10_000.0
    rules = funding_health.HealthRules()
    status = {"connected": True, "last_message_time": now, "daemon_started_at": now - 1000,
              "coverage_low_since": now - 500, "universe_known": True}
    universe = frozenset("S%03d" % i for i in range(100))
    fresh = {s: now for s in sorted(universe)[:90]}
    feed = funding_health.FeedSnapshot(status, 90, now, now, universe=universe, updated_at=fresh)
    verdict = funding_health.judge(feed, None, now, rules)
    assert verdict.status == funding_health.UNHEALTHY and verdict.expected_count == 100
    assert len(verdict.missing) == 10 and verdict.reasons[0].startswith("coverage: 90 of 100")
    unknown = dict(status, universe_known=False, coverage_low_since=None)
    feed = funding_health.FeedSnapshot(unknown, 90, now, now)
    verdict = funding_health.judge(feed, None, now, rules)
    assert verdict.status == funding_health.DEGRADED and verdict.expected_count is None
    assert verdict.warnings[0].startswith("universe_unknown:")
    young = dict(unknown, daemon_started_at=now - 10)
    assert funding_health.judge(funding_health.FeedSnapshot(young, 90, now, now), None, now, rules).status == (
        funding_health.HEALTHY)


# --- subscriptions ----------------------------------------------------------------------------------------------


def test_stream_names_are_lowercase_symbols_with_the_1s_mark_price_stream():
    assert subs.stream_name("XAUUSDT") == "xauusdt@markPrice@1s"


def streams(n, prefix="s"):
    return frozenset("%s%04d@markPrice@1s" % (prefix, i) for i in range(n))


def drain(subscriptions, now):
    """Send and acknowledge everything, respecting pacing; returns (messages, time taken)."""
    messages = []
    t = now
    while True:
        message = subscriptions.next_message(t)
        if message is None:
            settled = subscriptions.complete and not subscriptions.acked - subscriptions.wanted
            if not subscriptions.pending and settled:
                return messages, t - now
            t += 0.05
            if t - now > 100:
                raise AssertionError("never completed")
            continue
        messages.append(message)
        subscriptions.on_reply(message["id"], None, t)


def test_subscribes_are_batched_paced_and_acknowledged():
    subscriptions = subs.Subscriptions(streams(450))
    messages, took = drain(subscriptions, 0.0)
    assert [len(m["params"]) for m in messages] == [200, 200, 50]
    assert {m["method"] for m in messages} == {"SUBSCRIBE"}
    assert len({m["id"] for m in messages}) == 3
    assert subscriptions.complete and subscriptions.live == 450
    assert took >= 2 * subs.CONTROL_MESSAGE_INTERVAL_SECONDS


def test_never_more_than_one_message_per_interval_in_any_second():
    subscriptions = subs.Subscriptions(streams(3000))
    sent = []
    t = 0.0
    while t < 10:
        message = subscriptions.next_message(t)
        if message:
            sent.append(t)
            subscriptions.on_reply(message["id"], None, t)
        t += 0.01
    for start in sent:
        assert sum(1 for x in sent if start <= x < start + 1.0) <= 1 / subs.CONTROL_MESSAGE_INTERVAL_SECONDS + 1e-9


def test_unwanted_streams_are_unsubscribed_first():
    subscriptions = subs.Subscriptions(streams(3))
    drain(subscriptions, 0.0)
    subscriptions.set_wanted(streams(2) | {"new@markPrice@1s"})
    first = subscriptions.next_message(100.0)
    assert first["method"] == "UNSUBSCRIBE" and first["params"] == ["s0002@markPrice@1s"]
    subscriptions.on_reply(first["id"], None, 100.0)
    second = subscriptions.next_message(101.0)
    assert second["method"] == "SUBSCRIBE" and second["params"] == ["new@markPrice@1s"]


def test_an_error_answer_retries_with_a_doubling_backoff():
    subscriptions = subs.Subscriptions(streams(1))
    first = subscriptions.next_message(0.0)
    outcome = subscriptions.on_reply(first["id"], "code 2: Invalid request", 0.0)
    assert outcome.error and subscriptions.errors == 1
    assert subscriptions.next_message(0.5) is None, "backing off"
    second = subscriptions.next_message(1.0)
    assert second["params"] == first["params"] and second["id"] != first["id"]
    subscriptions.on_reply(second["id"], "code 2: again", 1.0)
    assert subscriptions.next_message(2.5) is None and subscriptions.next_message(3.0) is not None


def test_an_unanswered_request_expires_and_is_retried():
    subscriptions = subs.Subscriptions(streams(1))
    subscriptions.next_message(0.0)
    assert subscriptions.expire(5.0) == []
    expired = subscriptions.expire(subs.ACK_TIMEOUT_SECONDS + 0.1)
    assert len(expired) == 1 and subscriptions.errors == 1 and not subscriptions.pending
    assert subscriptions.next_message(subs.ACK_TIMEOUT_SECONDS + 1.2) is not None


def test_an_answer_to_an_unknown_id_changes_nothing():
    subscriptions = subs.Subscriptions(streams(1))
    assert subscriptions.on_reply(99, None, 0.0).request is None
    assert subscriptions.on_reply("x", None, 0.0).request is None
    assert not subscriptions.acked


def test_slots_hold_1023_streams_on_the_array_connection_then_1024_each():
    symbols = ["S%04d" % i for i in range(2100)]
    slots = subs.assign_slots({}, symbols)
    counts = {}
    for slot in slots.values():
        counts[slot] = counts.get(slot, 0) + 1
    assert counts == {0: 1023, 1: 1024, 2: 53}


def test_symbols_keep_their_slot_and_new_ones_fill_free_room():
    slots = subs.assign_slots({}, ["S%04d" % i for i in range(1100)])
    moved_out = "S0005"
    kept = [s for s in slots if s != moved_out]
    again = subs.assign_slots(slots, kept + ["NEW"])
    assert all(again[s] == slots[s] for s in kept)
    assert again["NEW"] == 0, "the freed place on the first connection is reused"


# --- the state file's pre-encoded universe ----------------------------------------------------------------------


def test_a_pre_encoded_universe_is_spliced_into_valid_json_equal_to_encoding_it_whole():
    universe = {"fetched_at": 1.5, "symbols": {"XAUUSDT": {"contractType": "TRADIFI_PERPETUAL"}}}
    plain = funding_state.build_payload({"A": {"updatedAt": 1.0}}, {"connected": True}, 2.0, 3, universe=universe,
                                        delisted={"B": 1.0})
    spliced = dict(plain, universe=funding_state.EncodedJson(funding_json.dumps(universe)))
    assert funding_json.loads(funding_state.encode_payload(spliced)) == funding_json.loads(
        funding_state.encode_payload(plain))
    only = {"u": funding_state.EncodedJson(b"1"), "v": funding_state.EncodedJson(b"[2]")}
    assert funding_json.loads(funding_state.encode_payload(only)) == {"u": 1, "v": [2]}
