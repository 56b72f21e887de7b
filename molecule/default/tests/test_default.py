"""The deployed box, as an operator sees it after `ansible-playbook site.yml`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from funding_box import (
    ALL_UNITS,
    API,
    SIMULATOR,
    UNITS,
    deployment,
    exposure,
    get_json,
    http,
    journal,
    metric,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families


@pytest.mark.parametrize("unit", UNITS)
def test_service_is_running_and_enabled(host, unit):
    service = host.service(unit)
    assert service.is_running, journal(host, unit)
    assert service.is_enabled


def test_health_check_timer_is_active_enabled_and_scheduled(host):
    timer = host.service("funding-health-check.timer")
    assert timer.is_running and timer.is_enabled
    next_elapse = host.check_output("systemctl show -p NextElapseUSecMonotonic --value funding-health-check.timer")
    assert next_elapse.strip() not in ("", "infinity", "0"), next_elapse


def test_no_unit_has_failed(host):
    failed = host.check_output("systemctl list-units --failed --plain --no-legend")
    assert failed.strip() == "", failed


def test_api_listens_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:8888").is_listening
    assert not host.socket("tcp://0.0.0.0:8888").is_listening
    listeners = host.check_output("ss -Htln 'sport = :8888'")
    assert all("127.0.0.1:8888" in line for line in listeners.splitlines()), listeners


def test_health_is_200_healthy_with_every_simulated_perpetual(host):
    expected = get_json(host, SIMULATOR + "/_sim/status")[1]["perpetualCount"]

    def healthy_with_all_symbols():
        status, body = get_json(host, API + "/funding/health")
        return status == 200 and body["status"] == "healthy" and body["symbolCount"] == expected and body

    body = wait_for(healthy_with_all_symbols, timeout=60, what="health 200 with %d symbols" % expected)
    assert body["websocketConnected"] is True
    # Coverage: the daemon's universe (exchangeInfo's TRADING perpetuals) is served whole, TradFi included.
    assert body["expectedSymbolCount"] == body["symbolCount"] == expected
    assert body["missingSymbolCount"] == 0 and body["missingSymbols"] == []
    assert body["tradifiSymbolCount"] == get_json(host, SIMULATOR + "/_sim/status")[1]["tradfiCount"] > 0


def test_btcusdt_equals_the_simulators_current_value_within_one_push(host):
    def same_as_simulator():
        simulated = get_json(host, SIMULATOR + "/_sim/symbols")[1]["BTCUSDT"]
        status, served = get_json(host, API + "/funding/BTCUSDT")
        return status == 200 and served["markPrice"] == simulated["markPrice"] and (served, simulated)

    served, simulated = wait_for(same_as_simulator, timeout=30, interval=0.5, what="BTCUSDT to match the simulator")
    assert served["fundingRate"] == simulated["fundingRate"]
    assert served["nextFundingTime"] == simulated["nextFundingTime"]
    assert served["indexPrice"] == simulated["indexPrice"]


def test_a_tradfi_perpetual_equals_the_simulators_value_and_carries_its_type(host):
    # XAUUSDT is absent from the all-market array (as on Binance): it comes on its own per-symbol stream.
    def same_as_simulator():
        simulated = get_json(host, SIMULATOR + "/_sim/symbols?symbols=XAUUSDT")[1]["XAUUSDT"]
        status, served = get_json(host, API + "/funding/XAUUSDT")
        return status == 200 and served["markPrice"] == simulated["markPrice"] and (served, simulated)

    served, simulated = wait_for(same_as_simulator, timeout=30, interval=0.5, what="XAUUSDT to match the simulator")
    assert simulated["onArray"] is False
    assert served["fundingRate"] == simulated["fundingRate"]
    assert served["nextFundingTime"] == simulated["nextFundingTime"]
    assert served["indexPrice"] == simulated["indexPrice"]
    assert (served["contractType"], served["underlyingType"]) == ("TRADIFI_PERPETUAL", "COMMODITY")
    status, body = get_json(host, API + "/funding?contractType=TRADIFI_PERPETUAL&limit=1000")
    assert status == 200 and body["matched"] == get_json(host, SIMULATOR + "/_sim/status")[1]["tradfiCount"]


def test_batch_reports_found_and_missing_symbols(host):
    status, body = get_json(host, API + "/funding/batch?symbols=BTCUSDT,ethusdt,NOSUCHUSDT")
    assert status == 200
    assert (body["found"], body["missing"], body["total"]) == (2, 1, 3)
    assert {item["symbol"] for item in body["data"]} == {"BTCUSDT", "ETHUSDT"}


def test_unknown_symbol_is_404_and_invalid_symbol_is_400_both_json(host):
    status, body = get_json(host, API + "/funding/NOSUCHUSDT")
    assert status == 404 and "error" in body
    for invalid in ("BTC-USDT", "BTC%20USDT", "%3Cscript%3E", "A" * 41):
        status, body = get_json(host, API + "/funding/" + invalid)
        assert status == 400 and "error" in body, (invalid, status, body)


def test_dated_contracts_are_not_served(host):
    symbols = get_json(host, SIMULATOR + "/_sim/symbols")[1]
    dated = [name for name, item in symbols.items() if not item["perpetual"]]
    assert dated
    assert get_json(host, API + "/funding/" + dated[0])[0] == 404


def test_state_file_is_owned_by_the_service_user_and_world_readable(host):
    box = deployment(host)
    state = host.file(box["state_file"])
    assert state.exists
    assert (state.user, state.group, state.mode) == (box["funding_user"], box["funding_group"], 0o644)
    assert json.loads(state.content_string)["connection_status"]["connected"] is True


def test_service_user_has_no_login_shell(host):
    name = deployment(host)["funding_user"]
    user = host.user(name)
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert not host.file("/home/%s" % name).exists


def test_programs_and_their_virtualenv_are_in_the_hosts_install_dir(host):
    box = deployment(host)
    for program in ("binance_funding_ws_daemon.py", "funding_api_server.py", "funding_health_monitor.py"):
        assert host.file("%s/bin/%s" % (box["funding_install_dir"], program)).is_file
    assert host.file("%s/venv/bin/python" % box["funding_install_dir"]).exists


@pytest.mark.parametrize("unit", ALL_UNITS)
def test_every_documentation_link_of_a_unit_exists(host, unit):
    links = host.check_output("systemctl show -p Documentation --value %s" % unit).split()
    assert links, unit
    for link in links:
        assert link.startswith("file://") and host.file(link[len("file://"):]).is_file, link


def test_sudoers_rule_is_0440_and_valid(host):
    sudoers = host.file("/etc/sudoers.d/funding-health-monitor")
    assert (sudoers.user, sudoers.group, sudoers.mode) == ("root", "root", 0o440)
    assert host.run("visudo -c").rc == 0


def test_sudo_grants_the_service_user_exactly_restart_status_and_is_active_of_the_two_units(host):
    listing = host.check_output("sudo -l -U %s" % deployment(host)["funding_user"])
    granted = set()
    for line in listing.splitlines():
        if "NOPASSWD:" in line:
            granted.update(command.strip() for command in line.split("NOPASSWD:", 1)[1].split(","))
    expected = {
        "/usr/bin/systemctl %s %s" % (verb, unit) for verb in ("restart", "status", "is-active") for unit in UNITS
    }
    assert granted == expected, listing


@pytest.mark.parametrize("unit", UNITS)
def test_service_user_can_restart_the_unit_through_sudo(host, unit):
    user = deployment(host)["funding_user"]
    result = host.run("runuser -u %s -- sudo -n /usr/bin/systemctl restart %s" % (user, unit))
    assert result.rc == 0, result.stderr
    wait_for(lambda: host.service(unit).is_running, timeout=30, what="%s running again" % unit)


@pytest.mark.parametrize(
    "command",
    [
        "/usr/bin/systemctl restart ssh.service",
        "/usr/bin/systemctl stop binance-funding-ws.service",
        "/usr/bin/systemctl start funding-health-check.service",
        "/usr/bin/systemctl edit binance-funding-ws.service",
        "/usr/bin/systemctl restart binance-funding-ws.service --now",
        "/bin/sh -c id",
        "/usr/bin/id",
    ],
)
def test_service_user_may_run_nothing_else_through_sudo(host, command):
    result = host.run("runuser -u %s -- sudo -n %s" % (deployment(host)["funding_user"], command))
    assert result.rc != 0, "sudo allowed: %s" % command


def test_health_check_run_reports_healthy_in_its_journal(host):
    wait_for(lambda: get_json(host, API + "/funding/health")[0] == 200, timeout=60, what="health 200")
    cursor = host.run("journalctl -u funding-health-check -n 0 --show-cursor --no-pager").stdout.split("cursor: ")[-1]
    result = host.run("systemctl start funding-health-check.service")
    assert result.rc == 0, result.stderr
    report = host.run(
        "journalctl -u funding-health-check --no-pager -o cat --after-cursor '%s'" % cursor.strip()
    ).stdout
    assert "STATUS: HEALTHY" in report, report


@pytest.mark.parametrize("unit", ALL_UNITS)
def test_unit_passes_systemd_analyze_verify(host, unit):
    result = host.run("systemd-analyze verify /etc/systemd/system/%s" % unit)
    assert result.rc == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_long_running_service_exposure_is_at_most_2(host, unit):
    score = exposure(host, unit)
    print("systemd-analyze security %s: %.1f" % (unit, score))
    assert score <= 2.0


def test_daemon_journal_shows_the_url_it_connects_to(host):
    assert "ws://127.0.0.1:9000/market/stream?streams=!markPrice@arr" in journal(host, "binance-funding-ws", 500)


# Polls /funding/BTCUSDT 200 times a second on new connections while `systemctl restart` runs, and reports what
# each attempt met. Runs inside the box (the API listens on the box's own loopback).
RESTART_POLLER = r"""
import http.client, json, subprocess, threading, time
counts = {"answered": 0, "refused": 0, "reset": 0, "other": 0}
statuses = {}
slowest = [0.0]
def restart():
    time.sleep(1.5)
    subprocess.run(["systemctl", "restart", "binance-funding-api.service"], check=True)
restarter = threading.Thread(target=restart)
restarter.start()
end = time.monotonic() + 7.0
while time.monotonic() < end:
    started = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", 8888, timeout=20)
        connection.request("GET", "/funding/BTCUSDT")
        response = connection.getresponse()
        response.read()
        connection.close()
        counts["answered"] += 1
        statuses[response.status] = statuses.get(response.status, 0) + 1
    except ConnectionRefusedError:
        counts["refused"] += 1
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        counts["reset"] += 1
    except Exception:
        counts["other"] += 1
    took = time.monotonic() - started
    slowest[0] = max(slowest[0], took)
    time.sleep(max(0.0, 0.005 - took))
restarter.join()
print(json.dumps({"counts": counts, "statuses": statuses, "slowest": round(slowest[0], 3)}))
"""


def test_a_client_polling_200_times_a_second_sees_no_refused_connection_across_a_restart(host):
    before = host.check_output("systemctl show -p MainPID --value binance-funding-api.service")
    host.run("cat > /tmp/restart_poller.py <<'EOF'\n%s\nEOF" % RESTART_POLLER)
    result = host.run("python3 /tmp/restart_poller.py")
    assert result.rc == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("restart under 200 req/s polling: %s" % report)
    after = host.check_output("systemctl show -p MainPID --value binance-funding-api.service")
    assert after != before and host.service("binance-funding-api.service").is_running
    counts = report["counts"]
    # The socket is systemd's: during the restart connections wait in its backlog and the new process answers them.
    assert counts["refused"] == 0 and counts["reset"] == 0 and counts["other"] == 0, report
    assert counts["answered"] > 500 and set(report["statuses"]) <= {"200"}, report


def test_the_api_socket_is_systemds_and_listens_on_loopback(host):
    socket_unit = host.service("binance-funding-api.socket")
    assert socket_unit.is_running and socket_unit.is_enabled
    listen = host.check_output("systemctl show -p Listen --value binance-funding-api.socket").split("\n")
    # One socket per API worker (one per core, at most 4), all on the same address in one SO_REUSEPORT group.
    workers = min(4, int(host.check_output("nproc")))
    assert listen == ["127.0.0.1:8888 (Stream)"] * workers, listen
    listeners = host.check_output("ss -Hltn 'sport = :8888'").splitlines()
    assert len(listeners) == workers and all("127.0.0.1:8888" in line for line in listeners), listeners


def test_metrics_parse_as_prometheus_text_and_agree_with_health(host):
    # The scrape happens in the box; the exposition is parsed here, on the controller, by Prometheus' own parser.
    expected = get_json(host, SIMULATOR + "/_sim/status")[1]["perpetualCount"]

    def steady_scrape():
        status, body = http(host, API + "/metrics")
        assert status == 200, body
        samples = {s.name: s for family in text_string_to_metric_families(body) for s in family.samples}
        steady = samples["funding_daemon_connected"].value == 1 and samples["funding_symbols"].value == expected
        return steady and samples

    samples = wait_for(steady_scrape, timeout=60, what="a connected daemon with every symbol in /metrics")
    assert samples["funding_symbols_expected"].value == samples["funding_symbols_served"].value == expected
    assert samples["funding_symbols_missing"].value == 0
    assert samples["funding_api_up"].value == 1
    assert samples["funding_api_healthy"].value == 1
    assert samples["funding_state_file_ok"].value == 1
    assert "funding_api_requests_total" in samples


def test_check_mode_on_the_converged_host_changes_nothing_and_fails_nothing(host):
    """`ansible-playbook --check` of the same converge, run from the controller against this one host."""
    name = host.backend.get_hostname()
    scenario = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"])
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(scenario.parents[1] / "roles"), ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "--check",
            "--limit",
            name,
            str(scenario.parent / "shared" / "converge.yml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    recap = re.search(r"^%s\s+:\s+(.*)$" % re.escape(name), result.stdout, flags=re.M)
    assert result.returncode == 0 and recap, result.stdout[-3000:] + result.stderr[-2000:]
    counts = dict(item.split("=") for item in recap.group(1).split())
    assert (counts["changed"], counts["failed"], counts["unreachable"]) == ("0", "0", "0"), recap.group(0)


def test_history_serves_the_rates_the_simulator_settled_after_a_settlement_in_the_box(host):
    started_ms = int(time.time() * 1000)
    symbol = "BTCUSDT"

    def settled_after_start():
        settled = get_json(host, SIMULATOR + "/_sim/funding?symbol=" + symbol)[1]["rows"]
        return [r for r in settled if r["fundingTime"] > started_ms]

    wait_for(settled_after_start, timeout=120, what="a settlement of %s after the test started" % symbol)

    def recorded_from_rest():
        # The timer runs the recorder every minute; run it now rather than wait.
        run = host.run("systemctl start funding-history-recorder.service")
        assert run.rc == 0, run.stderr + journal(host, "funding-history-recorder")
        status, body = get_json(host, API + "/funding/%s/history?since=%d" % (symbol, started_ms))
        assert status == 200, body
        rows = body["data"]
        return rows and all(r["source"] == "rest" for r in rows) and rows

    rows = wait_for(recorded_from_rest, timeout=120, interval=5, what="%s's new settlement confirmed by REST" % symbol)
    # Keyed by settlement: Binance (and the simulator) report some funding times a few ms late.
    settled = {(r["fundingTime"] + 500) // 1000 * 1000: (float(r["fundingRate"]), float(r["markPrice"]))
               for r in get_json(host, SIMULATOR + "/_sim/funding?symbol=" + symbol)[1]["rows"]}
    for row in rows:
        assert settled[row["fundingTime"]] == (row["fundingRate"], row["markPrice"]), row
    status, body = get_json(host, API + "/funding/%s/history?limit=1000" % symbol)
    assert status == 200 and body["count"] > len(rows), "the backfill is there too"
    assert all(settled[r["fundingTime"]] == (r["fundingRate"], r["markPrice"]) for r in body["data"]
               if r["source"] == "rest")
    status, health = get_json(host, API + "/funding/health")
    assert health["history"]["error"] is None and health["history"]["lagging"] is False, health["history"]
    box = deployment(host)
    db = host.file("%s/funding-history.sqlite3" % box["funding_state_dir"])
    assert db.exists and db.user == box["funding_user"]


def test_the_stream_sends_a_snapshot_then_updates_from_the_live_feed(host):
    # curl is an ordinary SSE client; --max-time ends it after the simulator pushed (every second) a few times.
    out = host.run("curl -sN --max-time 5 '%s/funding/stream?symbols=BTCUSDT,XAUUSDT'" % API).stdout
    events = [block for block in out.split("\n\n") if block.strip()]
    kinds = [line.split(": ", 1)[1] for block in events for line in block.splitlines() if line.startswith("event: ")]
    assert kinds[:1] == ["snapshot"] and "update" in kinds, out[:2000]
    snapshot = json.loads(next(line[6:] for line in events[0].splitlines() if line.startswith("data: ")))
    assert {r["symbol"] for r in snapshot["data"]} == {"BTCUSDT", "XAUUSDT"}, snapshot


STALLED_STREAM = r"""
import socket, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
sock.connect(("127.0.0.1", 8888))
sock.sendall(b"GET /funding/stream HTTP/1.1\r\nHost: x\r\n\r\n")
time.sleep(40)  # never reads
"""


def test_a_stalled_stream_client_is_dropped_by_the_hardened_service_and_requests_go_on(host):
    # Telling a stalled client needs the worker's own view of its socket (/proc/self/fd, SIOCOUTQ): this proves it
    # works inside the unit's sandbox (ProcSubset=pid, SystemCallFilter=@system-service), not only in the test suite.
    before = metric(host, "funding_api_stream_clients_dropped_total", reason="slow")
    host.run("cat > /tmp/stalled_stream.py <<'EOF'\n%s\nEOF" % STALLED_STREAM)
    host.run("nohup python3 /tmp/stalled_stream.py >/dev/null 2>&1 &")
    try:
        timeout = deployment(host)["funding_api_stream_send_timeout_seconds"]
        wait_for(lambda: metric(host, "funding_api_stream_clients_dropped_total", reason="slow") > before,
                 timeout=timeout + 20, what="the stalled client dropped")
        assert http(host, API + "/funding/BTCUSDT")[0] == 200
        assert "event=stream_client_dropped reason=slow" in journal(host, "binance-funding-api", 200)
    finally:
        host.run("pkill -f stalled_stream.py")


def test_the_live_page_is_served_with_a_strict_content_security_policy(host):
    headers = host.run("curl -s -D - -o /tmp/.funding-ui '%s/ui'" % API).stdout.lower()
    assert headers.startswith("http/1.1 200"), headers
    assert "content-security-policy: default-src 'none'" in headers, headers
    assert "<table" in host.file("/tmp/.funding-ui").content_string
