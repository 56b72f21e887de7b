"""The history recorder against the simulated exchange: backfill within budget, stream then REST, gaps after an
outage, 429/418, and a database that no kill -9 and no full disk can corrupt."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import funding_rest_budget
import funding_state
import pytest
from conftest import PROGRAMS
from test_daemon import daemon_factory, mount_tmpfs  # noqa: F401, F811  (daemon_factory is a fixture)

RECORDER = PROGRAMS / "funding_history_recorder.py"
DAY_MS = 86_400_000


def recorder_env(db: Path, rest_url: str, state_file: Path, **settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNDING_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update({
        "FUNDING_HISTORY_DB": str(db),
        "FUNDING_STATE_FILE": str(state_file),
        "FUNDING_REST_URL": rest_url,
        "FUNDING_HISTORY_CONFIRM_DELAY_SECONDS": "0",
        "FUNDING_LOG_LEVEL": "DEBUG",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({("FUNDING_" + k.upper()): str(v) for k, v in settings.items()})
    return env


def run_recorder(db: Path, rest_url: str, state_file: Path, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RECORDER)], env=recorder_env(db, rest_url, state_file, **settings),
                          capture_output=True, text=True, timeout=180, check=False)


def query(db: Path, sql: str, params=()) -> list:
    """A read-only query of the history database; [] before its first transaction."""
    if not db.exists():
        return []
    connection = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        if not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'settlements'").fetchone():
            return []  # killed before its first transaction
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def rows(db: Path, where: str = "1", params=()) -> list:
    return query(db, "SELECT symbol, funding_time, funding_rate, mark_price, source FROM settlements WHERE %s "
                     "ORDER BY symbol, funding_time" % where, params)


def ledger(sim, since_ms: int = 0, until_ms: int = 2**62) -> dict:
    """{(symbol, settlement): (rate, mark)} of every settlement the simulator made, from its own record."""
    result = {}
    for symbol in sim.universe()["tradingPerpetuals"]:
        for row in sim.funding(symbol)["rows"]:
            slot = (row["fundingTime"] + 500) // 1000 * 1000
            if since_ms <= slot <= until_ms:  # by settlement: a fundingTime reported 5 ms late is the same one
                result[(symbol, slot)] = (float(row["fundingRate"]), float(row["markPrice"]))
    return result


def settlement_count(db: Path) -> int:
    """Rows committed so far."""
    found = query(db, "SELECT count(*) FROM settlements")
    return found[0][0] if found else 0


def stored(db: Path, source: str = None) -> dict:
    where, params = ("source = ?", (source,)) if source else ("1", ())
    return {(s, t): (rate, mark) for s, t, rate, mark, _ in rows(db, where, params)}


def integrity(db: Path) -> str:
    if not db.exists():
        return "ok"
    connection = sqlite3.connect(str(db))
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


@pytest.fixture
def no_state(tmp_path):
    return tmp_path / "no-state.json"


# --- backfill and budget -----------------------------------------------------------------------------------------


def test_first_run_backfills_every_settlement_within_a_quarter_of_the_shared_bucket(simulator_factory, tmp_path,
                                                                                    no_state):
    sim = simulator_factory().client  # 168 h of settled history, real hours
    db = tmp_path / "history.sqlite3"
    started_ms = int(time.time() * 1000)
    done = run_recorder(db, sim.rest_url, no_state, history_backfill_days="7")
    assert done.returncode == 0, done.stderr
    expected = ledger(sim, since_ms=started_ms - 7 * DAY_MS)
    assert len(expected) > 20_000
    assert stored(db) == expected, "every settlement of the last 7 days, with the rate and mark price settled"
    assert {r[4] for r in rows(db)} == {"rest"}
    funding = sim.funding()
    # A page that ends inside a settlement is followed by one that starts at that settlement again (the endpoint has
    # no offset): up to twice one call per 1000 rows.
    assert funding["requests"]["fundingRate"] <= 2 * (len(expected) // 1000) + 3
    assert funding["bucket"]["windowMax"] <= 125, "at most 25 % of 500 requests in any 5 minutes"
    assert funding["refused"] == {}
    print("backfill: %d rows, %d requests" % (len(expected), funding["requests"]["fundingRate"]))


def test_a_small_budget_stops_the_backfill_and_the_next_run_continues_it(simulator_factory, tmp_path, no_state):
    sim = simulator_factory().client
    db = tmp_path / "history.sqlite3"
    small = {"history_backfill_days": "7", "history_rest_budget": "20", "history_rest_window_seconds": "60"}
    started_ms = int(time.time() * 1000)
    first = run_recorder(db, sim.rest_url, no_state, **small)
    assert first.returncode == 0 and "REST_budget" in first.stderr, first.stderr
    spent = sim.funding()["requests"]["fundingRate"]
    assert 10 <= spent <= 11, "a bucket of 20 per window holds 10 requests (one more may refill meanwhile)"
    partial = len(stored(db))
    immediately = run_recorder(db, sim.rest_url, no_state, **small)
    assert sim.funding()["requests"]["fundingRate"] - spent <= 1, immediately.stderr
    assert "first run" not in immediately.stderr, "the cursor was kept"
    os.unlink(funding_rest_budget.default_budget_path(str(db)))  # as if the window had passed, without waiting
    done = run_recorder(db, sim.rest_url, no_state, history_backfill_days="7")
    assert "rest=complete" in done.stderr, done.stderr
    expected = ledger(sim, since_ms=started_ms - 7 * DAY_MS)
    assert 0 < partial < len(expected)
    assert stored(db) == expected
    assert sim.funding()["requests"]["fundingRate"] <= 2 * (len(expected) // 1000) + 6, "nothing fetched twice"


def test_a_429_or_418_stops_rest_until_retry_after_in_this_run_and_the_next(simulator_factory, tmp_path, no_state):
    sim = simulator_factory().client
    db = tmp_path / "history.sqlite3"
    sim.set_fault("funding_rest_limit", status=418, retry_after=30)
    first = run_recorder(db, sim.rest_url, no_state)
    assert first.returncode == 0, first.stderr
    assert sim.funding()["refused"] == {"418": 1}, "one request, then nothing"
    assert "HTTP 418" in first.stderr
    second = run_recorder(db, sim.rest_url, no_state)
    assert second.returncode == 0 and sim.funding()["refused"] == {"418": 1}, "the next run waits too"
    saved = funding_rest_budget.read_budget_file(funding_rest_budget.default_budget_path(str(db)))
    assert saved["banned_total"] == 1 and saved["not_before"] > time.time() + 25


# --- stream, REST, gaps ------------------------------------------------------------------------------------------


def fast_simulator(simulator_factory):
    # One funding hour lasts 1 s: 1 h symbols settle every second, 8 h symbols every 8 s.
    return simulator_factory("--symbols", "120", "--funding-period-seconds", "1", "--funding-history-hours",
                             "24").client


def test_a_settlement_is_recorded_from_the_stream_at_once_and_confirmed_by_rest(simulator_factory, daemon_factory,  # noqa: F811
                                                                             tmp_path):
    sim = fast_simulator(simulator_factory)
    daemon = daemon_factory(sim.ws_url("stream", fast=True), rest_url=sim.rest_url)
    settled = daemon.wait_for_state(
        lambda s: sum(1 for r in s["funding_state"].values() if "lastSettlement" in r) >= 50,
        "the daemon to see settlements", timeout=40)
    db = tmp_path / "history.sqlite3"
    sim.set_fault("funding_rest_limit", status=429, retry_after=1)
    first = run_recorder(db, sim.rest_url, daemon.state_file)
    assert first.returncode == 0, first.stderr
    from_stream = stored(db, "stream")
    last_seen = {(sym, r["lastSettlement"]["fundingTime"]): r["lastSettlement"]["fundingRate"]
                 for sym, r in settled["funding_state"].items() if "lastSettlement" in r}
    assert len(from_stream) >= 50
    assert {k: v[0] for k, v in from_stream.items() if k in last_seen} == {
        k: v for k, v in last_seen.items() if k in from_stream}
    sim.clear_fault("funding_rest_limit")
    time.sleep(1.2)
    second = run_recorder(db, sim.rest_url, daemon.state_file)
    assert second.returncode == 0, second.stderr
    after = {(s, t): (rate, source) for s, t, rate, _, source in rows(db)}
    truth = ledger(sim)
    settled = [key for key in from_stream if key in truth]  # COIN-M rows on the array settle too; REST has none
    assert len(settled) >= 50
    for key in settled:
        assert after[key] == (truth[key][0], "rest"), key
    agree = sum(1 for key in settled if from_stream[key][0] == truth[key][0])
    assert agree >= 0.9 * len(settled), "the stream's last value is the settled rate (%d/%d)" % (agree, len(settled))


def state_from(sim, path: Path) -> Path:
    """A state file like the daemon's, from what the simulator last pushed (no lastSettlement: REST only)."""
    now = time.time()
    records = {symbol: {"fundingRate": v["fundingRate"], "markPrice": v["markPrice"], "indexPrice": v["indexPrice"],
                        "nextFundingTime": v["nextFundingTime"], "updatedAt": now, "eventTime": v["eventTime"]}
               for symbol, v in sim.symbols().items() if v["perpetual"]}
    funding_state.write_state_atomic(str(path), funding_state.build_payload(
        records, funding_state.new_connection_status(connected=True), now, 1))
    return path


def test_gaps_left_by_a_rest_outage_are_filled_when_it_answers_again(simulator_factory, tmp_path):
    sim = fast_simulator(simulator_factory)
    db = tmp_path / "history.sqlite3"
    state = state_from(sim, tmp_path / "state.json")
    assert run_recorder(db, sim.rest_url, state).returncode == 0
    before = sim.funding()["lastFundingTime"]
    sim.set_fault("rest_outage")
    time.sleep(10)  # every 8 h symbol settles once more, 1 h symbols ten times
    outage = run_recorder(db, sim.rest_url, state_from(sim, state))
    assert outage.returncode == 0 and "fundingRate failed" in outage.stderr
    assert max(t for _, t, *_ in rows(db)) < before + 2_000
    sim.clear_fault("rest_outage")
    # What the simulator settled before the run that finds REST answering again: all of it must be recorded by that
    # run. (Settlements made while it runs may or may not be; with no confirm delay, the next run takes them.)
    truth = ledger(sim)
    after = run_recorder(db, sim.rest_url, state_from(sim, state))
    assert after.returncode == 0 and "fundingRate answers again" in after.stderr, after.stderr
    cursor = max(t for _, t, *_ in rows(db))
    assert cursor > before + 8_000
    got = stored(db)
    first = min(t for _, t in got)
    settled_before_the_run = {k: v for k, v in truth.items() if k[1] >= first}
    assert {k: got.get(k) for k in settled_before_the_run} == settled_before_the_run
    # ...and nothing recorded that the simulator did not settle, or with other values.
    settled_now = ledger(sim)
    assert {k: settled_now.get(k) for k in got} == got


def test_an_interval_switch_on_a_cap_hit_is_seen_by_the_daemon(simulator_factory, daemon_factory):  # noqa: F811
    sim = fast_simulator(simulator_factory)
    symbol = next(s for s, v in sim.symbols().items() if v["perpetual"] and v["fundingIntervalHours"] == 8)
    daemon = daemon_factory(sim.ws_url("stream", fast=True), rest_url=sim.rest_url,
                            FUNDING_INTERVALS_REFRESH_SECONDS="2")
    daemon.wait_for_state(lambda s: s["funding_state"].get(symbol, {}).get("fundingIntervalHours") == 8,
                          "the symbol at 8 h")
    sim.set_fault("funding_rate", symbol=symbol, rate=0.5)  # clamped to its cap
    state = daemon.wait_for_state(lambda s: s["funding_state"][symbol].get("fundingIntervalHours") == 1,
                                  "the switch to 1 h", timeout=30)
    record = state["funding_state"][symbol]
    assert record["fundingIntervalChangedAt"] > 0 and record["fundingRateCap"] > 0
    assert any(s["symbol"] == symbol and s["to"] == 1 for s in sim.funding()["intervalSwitches"])
    assert state["connection_status"]["interval_changes"] >= 1
    daemon.wait_for_log(r"funding interval changed: symbol=%s from_hours=8 to_hours=1" % symbol)


def test_garbage_funding_info_keeps_the_last_good_terms_counted_and_logged_once(simulator_factory,
                                                                               daemon_factory):  # noqa: F811
    sim = fast_simulator(simulator_factory)
    capped = next(s for s, v in sim.symbols().items() if v["perpetual"] and v["fundingIntervalHours"] != 8)
    daemon = daemon_factory(sim.ws_url("stream", fast=True), rest_url=sim.rest_url,
                            FUNDING_INTERVALS_REFRESH_SECONDS="1")
    good = daemon.wait_for_state(lambda s: (s["funding_state"].get(capped) or {}).get("fundingRateCap"),
                                 "fundingInfo's terms")["funding_state"][capped]
    sim.set_fault("rest_garbage")
    state = daemon.wait_for_state(lambda s: s["connection_status"]["funding_info_errors"] >= 3,
                                  "three failed fundingInfo answers", timeout=20)
    record = state["funding_state"][capped]
    assert (record["fundingIntervalHours"], record["fundingRateCap"], record["fundingRateFloor"]) == (
        good["fundingIntervalHours"], good["fundingRateCap"], good["fundingRateFloor"])
    assert daemon.log.count("fundingInfo from") == 1, "one line per episode"
    sim.clear_fault("rest_garbage")
    daemon.wait_for_log("fundingInfo from .* answers again")


# --- corruption-proofing -----------------------------------------------------------------------------------------


def test_kill_9_in_the_middle_of_a_big_backfill_never_corrupts_the_database(simulator_factory, tmp_path, no_state):
    # 50 days of settlements of 872 contracts: about 190 000 rows, 200 pages, each written in one transaction.
    sim = simulator_factory("--funding-history-hours", "1200").client
    db = tmp_path / "history.sqlite3"
    env = recorder_env(db, sim.rest_url, no_state, history_backfill_days="50", history_rest_budget="100000",
                       log_level="INFO")
    rng = random.Random(14)
    kills = 0
    truth = ledger(sim)
    for _ in range(12):
        before = settlement_count(db)
        process = subprocess.Popen([sys.executable, str(RECORDER)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        # Killed mid-backfill whatever the machine's speed: once this run has committed a page beyond what the runs
        # before it left, at a random moment of what follows (a sleep of fixed length let fast runs finish the
        # whole backfill first).
        deadline = time.monotonic() + 60
        while process.poll() is None and settlement_count(db) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.2))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        assert integrity(db) == "ok"
        assert stored(db).items() <= truth.items(), "whatever was committed is exactly what Binance settled"
    assert kills >= 8, "the runs must have been killed mid-backfill (%d kills)" % kills
    for _ in range(5):  # a run stops asking after FUNDING_HISTORY_RUN_SECONDS; the next one goes on
        done = run_recorder(db, sim.rest_url, no_state, history_backfill_days="50", history_rest_budget="100000")
        assert done.returncode == 0, done.stderr
        if "rest=complete" in done.stderr:
            break
    assert "rest=complete" in done.stderr, done.stderr
    assert integrity(db) == "ok"
    since = int(time.time() * 1000) - 50 * DAY_MS
    got = stored(db)
    first = min(t for _, t in got)
    assert got == {k: v for k, v in ledger(sim).items() if k[1] >= first}
    assert len(got) > 150_000 and first >= since - 60_000


def test_a_full_disk_fails_the_run_cleanly_and_the_next_run_completes(simulator_factory, tmp_path, no_state):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if not mount_tmpfs(mount_point, "3m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        sim = simulator_factory().client  # 7 days: about 26 000 rows, 3-4 MB with its index
        db = mount_point / "history.sqlite3"
        full = run_recorder(db, sim.rest_url, no_state, history_backfill_days="7")
        assert full.returncode == 1, full.stderr
        assert "full" in full.stderr and "the last committed data is intact" in full.stderr
        assert integrity(db) == "ok"
        partial = stored(db)
        truth = ledger(sim)
        assert 0 < len(partial) < len(truth) and partial.items() <= truth.items()
        subprocess.run(["mount", "-o", "remount,size=16m", str(mount_point)], check=True)
        done = run_recorder(db, sim.rest_url, no_state, history_backfill_days="7")
        assert done.returncode == 0, done.stderr
        assert integrity(db) == "ok"
        since = min(t for _, t in stored(db))
        assert stored(db) == {k: v for k, v in truth.items() if k[1] >= since}
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)
