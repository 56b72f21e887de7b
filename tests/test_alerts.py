"""Webhook alerts of the health monitor (funding_alerts): when, what, and never at the cost of a check or a restart.

Receivers are real sockets on loopback: one that answers 200, one that answers 500, one that accepts and never
answers, one that redirects to itself forever, one that answers bytes that are not HTTP, and a port nobody listens on.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import funding_alerts
import pytest
from fakes.support import WS_UNIT, closed_url, daemon_state
from funding_monitor_state import HEALTHY, UNHEALTHY, MonitorStatus
from test_monitor import Monitor, parse_report

SECRET_PATH = "/hooks/T000/B000/s3cr3t-token"


class Receiver:
    """A loopback webhook receiver; `mode` chooses how it answers; every request it read is kept."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests: List[Dict[str, Any]] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d%s" % (self.port, SECRET_PATH)

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> Dict[str, Any]:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        request = {"line": lines[0], "headers": headers, "body": body}
        self.requests.append(request)
        return request

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._read_request(conn)
                if self.mode == "ok":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                elif self.mode == "error":
                    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
                elif self.mode == "redirect":
                    conn.sendall(("HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % self.url)
                                 .encode())
                elif self.mode == "garbage":
                    conn.sendall(b"\x00\xffnot http at all\r\n\r\n")
                elif self.mode == "hang":
                    self._stop.wait(60)
            except OSError:
                pass

    def bodies(self) -> List[Dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


@pytest.fixture
def receiver_factory():
    made: List[Receiver] = []

    def make(mode: str) -> Receiver:
        made.append(Receiver(mode))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


# --------------------------------------------------------------------------- when


def test_no_alert_while_the_status_the_receiver_knows_holds():
    assert funding_alerts.due_alert(MonitorStatus(announced=HEALTHY), status=HEALTHY, reasons=[], actions=[],
                                    now=1000.0, min_interval_seconds=1800, host="h") is None


def test_a_fresh_install_is_quiet_while_healthy_and_speaks_when_it_turns_unhealthy():
    assert funding_alerts.due_alert(MonitorStatus(), status=HEALTHY, reasons=[], actions=[], now=1000.0,
                                    min_interval_seconds=1800, host="h") is None
    alert = funding_alerts.due_alert(MonitorStatus(), status=UNHEALTHY, reasons=["down"], actions=[], now=1000.0,
                                     min_interval_seconds=1800, host="h")
    assert alert is not None and alert.kinds == [UNHEALTHY]
    assert alert.payload["status"] == UNHEALTHY and alert.payload["previous_status"] == HEALTHY


def test_each_state_is_announced_at_most_once_per_interval_and_a_held_back_state_later():
    saved = MonitorStatus(announced=HEALTHY, attempts={UNHEALTHY: 1000.0})
    held = funding_alerts.due_alert(saved, status=UNHEALTHY, reasons=[], actions=[], now=1000.0 + 1799,
                                    min_interval_seconds=1800, host="h")
    later = funding_alerts.due_alert(saved, status=UNHEALTHY, reasons=[], actions=[], now=1000.0 + 1801,
                                     min_interval_seconds=1800, host="h")
    assert held is None
    assert later is not None and later.kinds == [UNHEALTHY]


def test_a_restart_is_announced_even_without_a_status_change_and_a_look_only_run_is_not():
    restarted = [{"unit": WS_UNIT, "reason": "unit is failed", "result": "restarted", "detail": None}]
    alert = funding_alerts.due_alert(MonitorStatus(announced=UNHEALTHY), status=UNHEALTHY, reasons=["x"],
                                     actions=restarted, now=5.0, min_interval_seconds=60, host="h")
    assert alert is not None and alert.kinds == ["restart"]
    assert alert.payload["actions"] == restarted
    assert "restart %s (unit is failed): restarted" % WS_UNIT in alert.payload["text"]
    disabled = [{"unit": WS_UNIT, "reason": "unit is failed", "result": "disabled", "detail": None}]
    assert funding_alerts.due_alert(MonitorStatus(announced=UNHEALTHY), status=UNHEALTHY, reasons=["x"],
                                    actions=disabled, now=5.0, min_interval_seconds=60, host="h") is None


# --------------------------------------------------------------------------- how


PAYLOAD = {"text": "hello", "status": UNHEALTHY}


def test_a_receiver_that_answers_200_gets_the_json_once(receiver_factory):
    receiver = receiver_factory("ok")
    delivery = funding_alerts.post_json(receiver.url, PAYLOAD, 5)
    assert delivery == funding_alerts.Delivery(True, "HTTP 200")
    assert receiver.bodies() == [PAYLOAD]
    assert receiver.requests[0]["line"] == "POST %s HTTP/1.1" % SECRET_PATH
    assert receiver.requests[0]["headers"]["content-type"] == "application/json"


@pytest.mark.parametrize(("mode", "detail"), [
    ("error", "HTTP 500"),
    ("redirect", "HTTP 302 redirect, not followed"),
    ("garbage", "the receiver's answer is not HTTP"),
])
def test_a_failing_receiver_is_one_request_and_a_failure_that_does_not_name_the_url(receiver_factory, mode, detail):
    receiver = receiver_factory(mode)
    delivery = funding_alerts.post_json(receiver.url, PAYLOAD, 5)
    assert delivery == funding_alerts.Delivery(False, detail)
    assert len(receiver.requests) == 1
    assert "s3cr3t" not in delivery.detail and "127.0.0.1" not in delivery.detail


def test_nobody_listening_is_a_failure_that_does_not_name_the_url():
    delivery = funding_alerts.post_json(closed_url() + SECRET_PATH, PAYLOAD, 5)
    assert not delivery.delivered
    assert delivery.detail.startswith("cannot connect") and "s3cr3t" not in delivery.detail, delivery


def test_a_receiver_that_never_answers_costs_the_timeout_and_no_more(receiver_factory):
    receiver = receiver_factory("hang")
    started = time.monotonic()
    delivery = funding_alerts.post_json(receiver.url, PAYLOAD, 1.0)
    elapsed = time.monotonic() - started
    assert not delivery.delivered and "within 1 s" in delivery.detail, delivery
    # The bound is the contract: the monitor moves on after the timeout (generous margin for a loaded machine).
    assert elapsed < 4.0, elapsed


# --------------------------------------------------------------------------- the monitor sends them


QUOTES = {
    "BTCUSDT": {"fundingRate": 0.0001, "markPrice": 91000.5, "indexPrice": 91001.0,
                "nextFundingTime": 1764748800000, "eventTime": int(time.time() * 1000)},
}


@pytest.fixture
def monitor(systemd, monitor_api, tmp_path, receiver_factory):
    runner = Monitor(systemd, monitor_api.state_file, tmp_path / "monitor-restarts.json", monitor_api.url)
    runner.env.update(FUNDING_REST_URL="off", FUNDING_MIN_SYMBOLS="1", FUNDING_ALERT_MIN_INTERVAL_MINUTES="30")
    runner.status_file = Path(runner.env["FUNDING_MONITOR_STATUS_FILE"])
    return runner


def test_a_restart_and_the_recovery_each_reach_the_receiver_once(monitor, systemd, receiver_factory):
    receiver = receiver_factory("ok")
    monitor.env["FUNDING_ALERT_WEBHOOK_URL"] = receiver.url
    systemd.set_state(WS_UNIT, "failed")
    monitor.write(daemon_state(QUOTES))
    result, report = monitor.report()
    assert result.returncode == 1
    first = receiver.bodies()
    assert len(first) == 1
    alert = first[0]
    assert alert["status"] == UNHEALTHY and alert["previous_status"] == HEALTHY and alert["host"]
    assert alert["actions"] == [{"unit": WS_UNIT, "reason": "unit is failed", "result": "restarted", "detail": None}]
    assert any("is NOT running" in reason for reason in alert["reasons"])
    assert alert["text"].startswith(":rotating_light: binance-funding on %s: UNHEALTHY (was HEALTHY)" % alert["host"])
    assert "Webhook alert sent (UNHEALTHY,restart): HTTP 200" in report["info"]

    monitor.report()  # healthy again (the fake restart made the unit active)
    bodies = receiver.bodies()
    assert len(bodies) == 2 and bodies[1]["status"] == HEALTHY and bodies[1]["previous_status"] == UNHEALTHY
    assert bodies[1]["actions"] == []
    monitor.report()
    assert len(receiver.requests) == 2  # nothing changed: nothing sent
    saved = json.loads(monitor.status_file.read_text())
    assert saved["status"] == HEALTHY and saved["announced"] == HEALTHY


def test_a_hanging_receiver_neither_delays_nor_prevents_the_restart_and_is_not_retried_every_minute(
        monitor, systemd, receiver_factory):
    receiver = receiver_factory("hang")
    monitor.env.update(FUNDING_ALERT_WEBHOOK_URL=receiver.url, FUNDING_ALERT_TIMEOUT_SECONDS="2")
    systemd.set_state(WS_UNIT, "failed")
    monitor.write(daemon_state(QUOTES))
    started = time.monotonic()
    result = monitor.run()
    elapsed = time.monotonic() - started
    report = parse_report(result.stdout)
    assert systemd.restart_calls() and systemd.state(WS_UNIT) == "active"
    assert "✅ Successfully restarted %s" % WS_UNIT in report["info"]
    assert any(w.startswith("Webhook alert (UNHEALTHY,restart) not delivered: no answer within 2 s")
               for w in report["warnings"]), report
    assert len(receiver.requests) == 1
    assert elapsed < 20, elapsed  # the checks, the restart, and at most the 2 s webhook timeout
    systemd.set_state(WS_UNIT, "failed")
    monitor.run()
    assert len(receiver.requests) == 1  # the next minute's check does not try again within the interval
    assert len(systemd.restart_calls()) == 2


@pytest.mark.parametrize("mode", ["error", "redirect", "garbage", "closed"])
def test_a_failing_receiver_is_logged_once_without_its_url_and_the_check_goes_on(monitor, systemd,
                                                                                 receiver_factory, mode):
    url = closed_url() + SECRET_PATH if mode == "closed" else receiver_factory(mode).url
    monitor.env["FUNDING_ALERT_WEBHOOK_URL"] = url
    systemd.set_state(WS_UNIT, "failed")
    monitor.write(daemon_state(QUOTES))
    result = monitor.run()
    assert result.returncode == 1 and systemd.restart_calls()
    failures = [line for line in result.stderr.splitlines() if "event=alert_failed" in line]
    assert len(failures) == 1, result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr
    second = monitor.run()
    assert "event=alert_" not in second.stderr


def test_no_webhook_without_a_url_and_none_from_a_look_only_run(monitor, systemd, receiver_factory):
    systemd.set_state(WS_UNIT, "failed")
    monitor.write(daemon_state(QUOTES))
    result, report = monitor.report()
    assert not any("Webhook" in line for line in report["info"] + report["warnings"])
    assert json.loads(monitor.status_file.read_text())["status"] == UNHEALTHY
    receiver = receiver_factory("ok")
    monitor.env["FUNDING_ALERT_WEBHOOK_URL"] = receiver.url
    monitor.status_file.unlink()
    monitor.run("--no-restart")
    assert receiver.requests == [] and not monitor.status_file.exists()
