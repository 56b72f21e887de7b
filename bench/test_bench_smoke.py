"""The benchmark compares like with like: its baseline (bench/baseline, the seed design) answers with
the same JSON as our API, and its freshness matching attributes each API answer to the right push.

Not a benchmark: `make bench` runs it first (scripts/bench.sh), in the venv where it installed FastAPI and
uvicorn (requirements-bench.txt, Python >= 3.11); `make test` does not collect bench/.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
for directory in (REPO / "bench", REPO / "roles" / "funding" / "files"):
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))

import funding_state  # noqa: E402
from bench_freshness import distinct_updates, match_symbol  # noqa: E402

OUR_API = REPO / "roles" / "funding" / "files" / "funding_api_server.py"
BASELINE_API = REPO / "bench" / "baseline" / "baseline_api.py"
SEED_SYMBOL_FIELDS = {"symbol", "markPrice", "fundingRate", "nextFundingTime", "indexPrice", "updatedAt", "ageSeconds"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_for(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("server exited: %s" % log.read_text(errors="replace")[-2000:])
        try:
            get(port, "/funding/health")
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
    pytest.fail("server did not answer within 30 s: %s" % log.read_text(errors="replace")[-2000:])


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bench-smoke")
    state_file = directory / ".funding_state.json"
    now = time.time()
    records = {
        "BTCUSDT": {"fundingRate": 0.0001, "markPrice": 91725.8, "indexPrice": 91769.8,
                    "nextFundingTime": 1764748800000, "updatedAt": now, "eventTime": int(now * 1000),
                    "fundingIntervalHours": 8},
        "ETHUSDT": {"fundingRate": -0.00002, "markPrice": 2994.44, "indexPrice": 2995.67,
                    "nextFundingTime": 1764748800000, "updatedAt": now, "eventTime": int(now * 1000),
                    "fundingIntervalHours": 4},
    }
    status = funding_state.new_connection_status(connected=True, last_connected_time=now - 10, messages_received=7)
    funding_state.write_state_atomic(str(state_file), funding_state.build_payload(records, status, now, 1))
    ours_port, baseline_port = free_port(), free_port()
    env = dict(os.environ, FUNDING_API_PORT=str(ours_port), FUNDING_STATE_FILE=str(state_file),
               FUNDING_LOG_LEVEL="WARNING")
    started = []
    try:
        for name, command, port in (
            ("ours", [sys.executable, str(OUR_API)], ours_port),
            ("baseline", [sys.executable, str(BASELINE_API), "--port", str(baseline_port), "--state-file",
                          str(state_file)], baseline_port),
        ):
            log = directory / ("%s.log" % name)
            with open(log, "wb") as handle:
                process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                           stdin=subprocess.DEVNULL)
            started.append(process)
            wait_for(port, process, log)
        yield {"ours": ours_port, "baseline": baseline_port}
    finally:
        for process in started:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def test_one_symbol_has_the_seed_fields_and_the_same_values_in_both(servers):
    ours_status, ours = get(servers["ours"], "/funding/btcusdt")
    base_status, base = get(servers["baseline"], "/funding/btcusdt")
    assert ours_status == base_status == 200
    assert set(base) == SEED_SYMBOL_FIELDS
    assert SEED_SYMBOL_FIELDS <= set(ours)
    for key in SEED_SYMBOL_FIELDS - {"ageSeconds"}:
        assert ours[key] == base[key], key


def test_batch_has_the_same_fields_and_counts_in_both(servers):
    path = "/funding/batch?symbols=BTCUSDT,ethusdt,NOPEUSDT"
    ours_status, ours = get(servers["ours"], path)
    base_status, base = get(servers["baseline"], path)
    assert ours_status == base_status == 200
    assert {"data", "found", "missing", "total"} == set(base)
    assert set(base) <= set(ours)
    assert [entry["symbol"] for entry in ours["data"]] == [entry["symbol"] for entry in base["data"]] == [
        "BTCUSDT", "ETHUSDT"]
    assert (ours["found"], ours["missing"], ours["total"]) == (base["found"], base["missing"], base["total"]) == (
        2, 1, 3)
    for ours_entry, base_entry in zip(ours["data"], base["data"]):
        assert set(base_entry) <= set(ours_entry)
        assert ours_entry["markPrice"] == base_entry["markPrice"]


def test_health_has_the_seed_fields_and_agrees_in_both(servers):
    ours_status, ours = get(servers["ours"], "/funding/health")
    base_status, base = get(servers["baseline"], "/funding/health")
    assert ours_status == base_status == 200
    assert set(base) <= set(ours)
    for key in ("status", "websocketConnected", "symbolCount", "messagesReceived", "reconnectAttempts"):
        assert ours[key] == base[key], key


def test_unknown_symbol_is_404_with_detail_in_both(servers):
    ours_status, ours = get(servers["ours"], "/funding/NOPEUSDT")
    base_status, base = get(servers["baseline"], "/funding/NOPEUSDT")
    assert ours_status == base_status == 404
    assert "detail" in ours and "detail" in base


def test_freshness_counts_only_pushes_that_changed_the_price():
    pushes = [(1000, 1.0, 1.01), (2000, 1.0, 2.01), (3000, 2.0, 3.01), (4000, 1.0, 4.01)]
    assert distinct_updates(pushes) == [(1000, 1.0, 1.01), (3000, 2.0, 3.01), (4000, 1.0, 4.01)]


def test_freshness_matches_each_push_to_the_first_answer_showing_it_never_to_an_earlier_or_stale_one():
    updates = [(1000, 1.0, 1.01), (2000, 2.0, 2.01), (3000, 1.0, 3.01)]
    answers = [
        (0.5, 2.0),  # shows 2.0 before it was pushed: not attributable
        (1.5, 1.0),  # first answer with update 0
        (2.1, 1.0),  # still update 0 (stale), not update 2 which is not pushed yet
        (2.3, 2.0),  # first answer with update 1
        (3.05, 2.0),
        (3.2, 1.0),  # update 2 (same price as update 0, but pushed later)
        (3.4, 1.0),
    ]
    assert match_symbol(updates, answers) == {0: 1.5, 1: 2.3, 2: 3.2}


def test_freshness_leaves_a_superseded_push_unmatched():
    updates = [(1000, 1.0, 1.01), (2000, 2.0, 2.01), (3000, 3.0, 3.01)]
    assert match_symbol(updates, [(1.2, 1.0), (3.5, 3.0)]) == {0: 1.2, 2: 3.5}
