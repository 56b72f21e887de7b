"""End to end: the daemon as a subprocess against the simulated exchange, on loopback.

Timings are shrunk through FUNDING_* settings; assertions are on behaviour (state file contents, counters,
log lines with the delays the daemon chose), never on elapsed wall-clock time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import funding_state
import pytest

DAEMON = Path(__file__).resolve().parent.parent / "roles" / "funding" / "files" / "binance_funding_ws_daemon.py"
RECONNECT_LINE = re.compile(r"reconnecting in ([0-9.]+) s \(attempt (\d+)\)")
INITIAL = 0.2
MAXIMUM = 0.8


class Daemon:
    """One daemon subprocess with its log file; helpers to wait on its log and its state file."""

    def __init__(self, state_file: Path, log_path: Path, env: dict) -> None:
        self.state_file = state_file
        self.log_path = log_path
        self.env = env
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(DAEMON)], stdout=log, stderr=subprocess.STDOUT,
                                            env=env, stdin=subprocess.DEVNULL)

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def state(self):
        try:
            return funding_state.read_state(str(self.state_file))
        except funding_state.StateFileError:
            return None

    def wait_for(self, predicate, what: str, timeout: float = 30.0, interval: float = 0.05):
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if self.process.poll() is not None:
                raise AssertionError("daemon exited (%s) while waiting for %s:\n%s"
                                     % (self.process.returncode, what, self.log[-3000:]))
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s; daemon log:\n%s" % (what, self.log[-3000:]))
            time.sleep(interval)

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 30.0):
        regex = re.compile(pattern)
        return self.wait_for(lambda: len(regex.findall(self.log)) >= count and regex.findall(self.log),
                             "%d x log /%s/" % (count, pattern), timeout)

    def wait_for_state(self, predicate, what: str, timeout: float = 30.0):
        def check():
            state = self.state()
            return state if state is not None and predicate(state) else None

        return self.wait_for(check, what, timeout)

    def wait_for_symbols(self, minimum: int, timeout: float = 30.0):
        return self.wait_for_state(lambda s: len(s["funding_state"]) >= minimum, "%d symbols" % minimum, timeout)

    def terminate(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def reconnect_delays(self):
        return [(int(attempt), float(delay)) for delay, attempt in RECONNECT_LINE.findall(self.log)]


@pytest.fixture
def daemon_factory(tmp_path):
    started = []

    def start(url: str, rest_url: str = "off", state_file: Path = None, **settings) -> Daemon:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("FUNDING_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        env.update({
            "FUNDING_WS_URL": url,
            "FUNDING_STATE_FILE": str(state_file or tmp_path / "state" / ".funding_state.json"),
            "FUNDING_REST_URL": rest_url,
            "FUNDING_NO_DATA_SECONDS": "3",
            "FUNDING_RECONNECT_INITIAL_SECONDS": str(INITIAL),
            "FUNDING_RECONNECT_MAX_SECONDS": str(MAXIMUM),
            "FUNDING_HEALTHY_RESET_SECONDS": "1",
            "FUNDING_ROTATE_SECONDS": "3600",
            "FUNDING_CONNECT_TIMEOUT_SECONDS": "3",
            "FUNDING_WRITE_HEARTBEAT_SECONDS": "0.5",
            "FUNDING_SUMMARY_SECONDS": "1",
            "FUNDING_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        env.update({key: str(value) for key, value in settings.items()})
        daemon = Daemon(Path(env["FUNDING_STATE_FILE"]), tmp_path / ("daemon-%d.log" % len(started)), env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def perpetual_snapshot(client):
    return {symbol: values for symbol, values in client.symbols().items() if values["perpetual"]}


def expected_record(values):
    return {
        "fundingRate": values["fundingRate"],
        "markPrice": values["markPrice"],
        "indexPrice": values["indexPrice"] if values["indexInStream"] else None,
        "nextFundingTime": values["nextFundingTime"],
        "eventTime": values["eventTime"],
        "fundingIntervalHours": values["fundingIntervalHours"],
    }


def stored_record(record):
    return {key: record.get(key) for key in ("fundingRate", "markPrice", "indexPrice", "nextFundingTime", "eventTime",
                                             "fundingIntervalHours")}


def assert_backoff_sequence(delays, start_attempt=1):
    """Each logged delay is the attempt's step (initial x2 per attempt, capped) within the +-20 % jitter."""
    assert delays, "no reconnect delays logged"
    for attempt, delay in delays:
        step = min(MAXIMUM, INITIAL * 2 ** (attempt - 1))
        assert step * 0.8 - 1e-6 <= delay <= min(MAXIMUM, step * 1.2) + 0.01, (attempt, delay)
    attempts = [attempt for attempt, _ in delays]
    assert attempts == list(range(start_attempt, start_attempt + len(attempts))), attempts


# --- data --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "fast"), [("stream", False), ("ws", False), ("stream", True)],
                         ids=["combined", "raw", "combined-1s"])
def test_every_perpetual_holds_exactly_the_values_pushed_and_dated_contracts_are_absent(
        simulator_factory, daemon_factory, kind, fast):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url(kind, fast=fast), rest_url=sim.rest_url)
    daemon.wait_for_symbols(600)
    sim.set_fault("freeze")
    sim.wait_for_pushes(4, fast=fast)
    perpetuals = perpetual_snapshot(sim)
    dated = {symbol for symbol, values in sim.symbols().items() if not values["perpetual"]}
    assert len(perpetuals) > 600 and dated
    assert any(v["fundingIntervalHours"] != 8 for v in perpetuals.values())
    assert any(not v["indexInStream"] for v in perpetuals.values())

    def matches(state):
        funding = state["funding_state"]
        return set(funding) == set(perpetuals) and all(
            stored_record(funding[s]) == expected_record(v) for s, v in perpetuals.items())

    state = daemon.wait_for_state(matches, "state equal to the pushed values", timeout=30)
    assert not dated & set(state["funding_state"])
    status = state["connection_status"]
    assert status["connected"] is True
    assert status["items_skipped_no_funding"] > 0
    assert status["items_rejected"] == 0 and status["frames_rejected"] == 0
    assert status["ws_url"] == sim.ws_url(kind, fast=fast)
    assert status["last_message_time"] is not None


def test_poisoned_items_never_move_a_mark_price(simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url)
    daemon.wait_for_symbols(600)
    sim.set_fault("freeze")
    sim.wait_for_pushes(2)
    perpetuals = perpetual_snapshot(sim)
    expected_marks = {s: v["markPrice"] for s, v in perpetuals.items()}
    daemon.wait_for_state(
        lambda s: {k: r["markPrice"] for k, r in s["funding_state"].items()} == expected_marks, "frozen marks")
    before = daemon.state()["connection_status"]["items_rejected"]
    sim.set_fault("poison", oversize_every=3)
    pushes_at_start = sim.status()["pushes"]["slow"]
    samples = 0
    while sim.status()["pushes"]["slow"] < pushes_at_start + 12:
        state = daemon.state()
        if state is not None:
            samples += 1
            marks = {k: r["markPrice"] for k, r in state["funding_state"].items()}
            assert marks == expected_marks, "a poisoned item moved a mark price"
        time.sleep(0.05)
    assert samples > 10
    state = daemon.wait_for_state(lambda s: s["connection_status"]["items_rejected"] > before + 100,
                                  "poisoned items counted")
    assert {k: r["markPrice"] for k, r in state["funding_state"].items()} == expected_marks
    assert state["connection_status"]["connected"] is True
    assert state["connection_status"]["connections_opened"] == 1, "poison must not cost the connection"
    assert "\\n" not in "".join(state["funding_state"])


def test_malformed_frames_are_counted_and_ignored(simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url)
    daemon.wait_for_symbols(600)
    sim.set_fault("malformed")
    state = daemon.wait_for_state(lambda s: s["connection_status"]["frames_rejected"] >= 12,
                                  "malformed frames counted")
    frames = state["connection_status"]["messages_received"]
    daemon.wait_for_state(lambda s: s["connection_status"]["messages_received"] > frames + 5,
                          "good frames still accepted during malformed ones")
    sim.clear()
    sim.wait_for_pushes(2)
    state = daemon.wait_for_state(lambda s: s["connection_status"]["messages_received"] > frames + 7, "data")
    assert state["connection_status"]["connections_opened"] == 1, "malformed frames must not cost the connection"
    assert len(state["funding_state"]) == len(perpetual_snapshot(sim))
    assert daemon.process.poll() is None
    assert "Traceback" not in daemon.log


# --- connection management ---------------------------------------------------------------------------------------


def test_legacy_url_yields_no_data_and_the_no_data_watchdog_reconnects_saying_why(simulator_factory,
                                                                                   daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("legacy-stream"), FUNDING_NO_DATA_SECONDS="1")
    daemon.wait_for_log(r"reconnecting in [0-9.]+ s \(attempt 3\)")
    log = daemon.log
    assert re.search(r"no markPriceUpdate for [0-9.]+ s on ws://\S+/stream\?streams=!markPrice@arr - is this the "
                     r"legacy URL\? Binance moved market streams to /market", log)
    assert "not under /market" in log.split("\n")[1] or "not under /market" in log
    state = daemon.wait_for_state(lambda s: s["connection_status"]["reconnect_attempts"] >= 3, "attempts recorded")
    assert state["funding_state"] == {}
    assert state["connection_status"]["messages_received"] == 0
    assert "no markPriceUpdate" in state["connection_status"]["last_disconnect_reason"]
    assert sim.status()["connectionsOpened"] >= 3
    assert_backoff_sequence(daemon.reconnect_delays())


@pytest.mark.parametrize("mode", ["abrupt", "close"])
def test_a_drop_reconnects_at_once_with_the_first_backoff_step(simulator_factory, daemon_factory, mode):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url)
    daemon.wait_for_symbols(600)
    sim.set_fault("drop", mode=mode)
    daemon.wait_for_log(r"connected #2 ")
    state = daemon.wait_for_state(lambda s: s["connection_status"]["connections_opened"] == 2
                                  and s["connection_status"]["connected"], "reconnected")
    delays = daemon.reconnect_delays()
    assert len(delays) == 1
    assert_backoff_sequence(delays)
    assert "disconnected #1" in daemon.log
    assert state["connection_status"]["last_disconnect_reason"]
    messages = state["connection_status"]["messages_received"]
    daemon.wait_for_state(lambda s: s["connection_status"]["messages_received"] > messages + 3, "data after drop")


def test_stall_is_detected_and_reconnects_with_growing_backoff_then_resets_after_a_healthy_spell(
        simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, FUNDING_NO_DATA_SECONDS="1")
    daemon.wait_for_symbols(600)
    sim.set_fault("stall")
    daemon.wait_for_log(r"reconnecting in [0-9.]+ s \(attempt 4\)", timeout=40)
    assert "no markPriceUpdate for" in daemon.log
    assert "legacy URL" not in daemon.log, "the /market URL is not the legacy one"
    daemon.wait_for_state(lambda s: s["connection_status"]["reconnect_attempts"] >= 4, "attempts in the state file")
    sim.clear()
    daemon.wait_for_log(r"healthy for [0-9]+ s: reconnect delay starts over")
    daemon.wait_for_state(lambda s: s["connection_status"]["reconnect_attempts"] == 0
                          and s["connection_status"]["connected"], "attempts reset")
    assert_backoff_sequence(daemon.reconnect_delays())
    # After the healthy spell the next failure starts from the first step again.
    logged = len(daemon.reconnect_delays())
    sim.set_fault("drop")
    daemon.wait_for(lambda: len(daemon.reconnect_delays()) > logged, "reconnect after drop")
    attempt, delay = daemon.reconnect_delays()[logged]
    assert attempt == 1 and INITIAL * 0.8 - 1e-6 <= delay <= INITIAL * 1.2 + 0.01


def test_refused_connections_back_off_exponentially_up_to_the_cap_and_recover(simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url)
    daemon.wait_for_symbols(600)
    sim.set_fault("refuse")
    sim.set_fault("drop")
    daemon.wait_for_log(r"reconnecting in [0-9.]+ s \(attempt 6\)")
    assert "connect failed" in daemon.log and "503" in daemon.log
    state = daemon.state()
    status = state["connection_status"]
    assert status["connected"] is False
    assert status["disconnected_since"] < status["last_disconnect_time"], "failed attempts do not move the down spell"
    assert len(state["funding_state"]) > 600, "an outage keeps the last state"
    sim.clear()
    daemon.wait_for_state(lambda s: s["connection_status"]["connected"]
                          and s["connection_status"]["connections_opened"] == 2, "recovered")
    delays = daemon.reconnect_delays()
    assert_backoff_sequence(delays)
    assert any(attempt >= 4 and delay >= MAXIMUM * 0.8 for attempt, delay in delays), "the cap is reached"
    assert sim.status()["handshakesRefused"] >= 5


def test_an_unplanned_server_close_reconnects_with_the_first_step(simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url)
    daemon.wait_for_symbols(600)
    sim.set_fault("rotate")  # the server closes every connection as at its 24 h limit
    daemon.wait_for_state(lambda s: s["connection_status"]["connections_opened"] == 2
                          and s["connection_status"]["connected"], "reconnected")
    assert re.search(r"disconnected #1 after [0-9.]+ s connected: server closed the connection \(code 1001",
                     daemon.log)
    assert_backoff_sequence(daemon.reconnect_delays())
    assert len(daemon.reconnect_delays()) == 1


def test_rotation_opens_the_new_connection_and_closes_the_old_one_only_after_it_delivers(simulator_factory,
                                                                                         daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, FUNDING_ROTATE_SECONDS="1.5")
    daemon.wait_for_symbols(500)  # the array's symbols: sampling must start before the second rotation
    samples = []
    deadline = time.monotonic() + 60
    while daemon.log.count("closed after rotation") < 2 and time.monotonic() < deadline:
        state = daemon.state()
        if state is not None:
            samples.append(state["connection_status"])
        time.sleep(0.05)
    log = daemon.log
    assert log.count("closed after rotation") >= 2, log[-3000:]
    for old, new in ((1, 2), (2, 3)):
        connected_new = log.index("connected #%d " % new)
        rotated = log.index("rotated: connection #%d receives data, closing #%d" % (new, old))
        closed_old = log.index("connection #%d closed after rotation" % old)
        assert connected_new < rotated < closed_old
    assert "reconnecting in" not in log and "disconnected #" not in log
    assert samples and all(status["connected"] for status in samples), "no moment without a connection"
    times = [status["last_message_time"] for status in samples]
    assert times == sorted(times)
    final = daemon.wait_for_state(lambda s: s["connection_status"]["rotations"] >= 2, "rotations recorded")
    assert final["connection_status"]["reconnect_attempts"] == 0
    assert sim.status()["connectionsClosed"].get("client", 0) >= 2


def test_server_pings_are_answered(simulator_factory, daemon_factory):
    sim = simulator_factory("--ping-interval", "0.3", "--ping-timeout", "1").client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url)
    daemon.wait_for_symbols(600)
    status = daemon.wait_for_state(lambda s: s["connection_status"]["messages_received"] >= 25,
                                   "several ping intervals of data")
    assert status["connection_status"]["connections_opened"] == 1
    assert "disconnected" not in daemon.log
    assert sim.status()["connectionsClosed"] == {}


# --- state file ---------------------------------------------------------------------------------------------------


def test_sigterm_writes_connected_false_and_exits_0(simulator_factory, daemon_factory):
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url)
    daemon.wait_for_state(lambda s: s["connection_status"]["connected"] and len(s["funding_state"]) > 600,
                          "connected")
    assert daemon.terminate(timeout=5) == 0
    state = daemon.state()
    assert state["connection_status"]["connected"] is False
    assert state["connection_status"]["last_disconnect_reason"] == "daemon stopping"
    assert len(state["funding_state"]) > 600
    assert state["daemon_pid"] == daemon.process.pid
    assert not list(daemon.state_file.parent.glob("*.tmp")), "no temp file left behind"
    assert "received SIGTERM" in daemon.log and "final state written" in daemon.log


def test_sigint_also_stops_cleanly_while_disconnected(daemon_factory):
    daemon = daemon_factory("ws://127.0.0.1:%d/market/stream?streams=!markPrice@arr" % free_port())
    daemon.wait_for_log(r"reconnecting in")
    daemon.process.send_signal(signal.SIGINT)
    assert daemon.process.wait(5) == 0
    assert daemon.state()["connection_status"]["connected"] is False


def test_a_restart_keeps_the_last_state(simulator_factory, daemon_factory, tmp_path):
    sim = simulator_factory().client
    first = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url)
    first.wait_for_symbols(600)
    assert first.terminate() == 0
    before = first.state()
    # The second run cannot reach the exchange: everything it has is what it loaded.
    second = daemon_factory("ws://127.0.0.1:%d/market/stream?streams=!markPrice@arr" % free_port(),
                            state_file=first.state_file)
    second.wait_for_state(lambda s: s["daemon_pid"] == second.process.pid, "a write by the second daemon")
    after = second.state()
    assert after["funding_state"] == before["funding_state"], "records and their old updatedAt are kept"
    assert after["connection_status"]["connected"] is False
    assert re.search(r"loaded \d+ symbols from the previous state file", second.log)


@pytest.mark.parametrize("content", [b"{ truncated", b"\x00\x01binary", b'{"funding_state": "nope"}', b""])
def test_a_corrupt_previous_state_file_is_logged_and_replaced_at_start(daemon_factory, tmp_path, content):
    state_file = tmp_path / "state" / ".funding_state.json"
    state_file.parent.mkdir()
    state_file.write_bytes(content)
    # No exchange reachable: the replacement must not wait for data.
    daemon = daemon_factory("ws://127.0.0.1:%d/market/stream?streams=!markPrice@arr" % free_port(),
                            state_file=state_file)
    state = daemon.wait_for_state(lambda s: s["daemon_pid"] == daemon.process.pid, "a valid replacement")
    assert state["funding_state"] == {}
    assert "previous state file is unusable" in daemon.log
    assert daemon.process.poll() is None


def test_a_corrupt_previous_state_file_is_then_filled_with_live_data(simulator_factory, daemon_factory, tmp_path):
    state_file = tmp_path / "state" / ".funding_state.json"
    state_file.parent.mkdir()
    state_file.write_bytes(b'{"funding_state": {"BTCUSDT": {"markPrice": "NaN"}}')
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url, state_file=state_file)
    daemon.wait_for_symbols(600)
    assert "previous state file is unusable" in daemon.log


def test_four_readers_never_see_a_torn_file_across_200_daemon_writes(simulator_factory, daemon_factory, tmp_path):
    # Pushes every 0.1 s and a 0.1 s rewrite heartbeat: about 10 writes a second. Each reader runs until it has seen
    # WRITES_TO_SEE different files (or a generous deadline), so what is proven is "many writes, no torn read",
    # whatever the machine's speed.
    sim = simulator_factory().client
    daemon = daemon_factory(sim.ws_url("stream", fast=True), rest_url=sim.rest_url,
                            FUNDING_WRITE_HEARTBEAT_SECONDS="0.1")
    daemon.wait_for_symbols(600)
    reader = textwrap.dedent("""
        import json, sys, time
        sys.path.insert(0, sys.argv[2])
        import funding_state
        path, deadline, to_see = sys.argv[1], time.monotonic() + float(sys.argv[3]), int(sys.argv[4])
        reads = bad = 0
        seen = set()
        errors = []
        while time.monotonic() < deadline and len(seen) < to_see:
            with open(path, "rb") as handle:
                data = handle.read()
            reads += 1
            try:
                payload = funding_state.decode_state(data)
                if len(payload["funding_state"]) < 600:
                    raise ValueError("only %d symbols" % len(payload["funding_state"]))
                seen.add(payload["updated_at"])
            except Exception as exc:
                bad += 1
                errors.append("%s (%d bytes)" % (exc, len(data)))
        print(json.dumps({"reads": reads, "bad": bad, "writes_seen": len(seen), "errors": errors[:5]}))
    """)
    programs = str(DAEMON.parent)
    writes_to_see = 200
    readers = [subprocess.Popen([sys.executable, "-c", reader, str(daemon.state_file), programs, "180",
                                 str(writes_to_see)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        results = []
        for process in readers:
            out, err = process.communicate(timeout=240)
            assert process.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for process in readers:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    for result in results:
        assert result["bad"] == 0, result["errors"]
        assert result["writes_seen"] >= writes_to_see, "each reader must overlap %d writes: %s" % (
            writes_to_see, result)
    assert daemon.process.poll() is None
    print("reader results: %s" % results)


def mount_tmpfs(directory: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % size, "tmpfs", str(directory)],
                            capture_output=True, check=False)
    return result.returncode == 0


def test_a_full_disk_is_survived_logged_once_and_writes_resume(simulator_factory, daemon_factory, tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if not mount_tmpfs(mount_point, "1m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    daemon = None
    try:
        sim = simulator_factory().client
        daemon = daemon_factory(sim.ws_url("stream"), rest_url=sim.rest_url,
                                state_file=mount_point / ".funding_state.json")
        daemon.wait_for_symbols(600)
        filler = mount_point / "filler"
        with open(filler, "wb", buffering=0) as handle:  # unbuffered: nothing left to flush at close
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        daemon.wait_for_log(r"cannot write state file .*No space left on device")
        frozen = daemon.state_file.read_bytes()
        sim.wait_for_pushes(10)
        assert daemon.state_file.read_bytes() == frozen, "the previous file stays intact"
        assert funding_state.decode_state(frozen)
        assert daemon.log.count("cannot write state file") == 1, "one line per distinct error, not a flood"
        assert daemon.process.poll() is None
        filler.unlink()
        daemon.wait_for_state(lambda s: s["connection_status"]["state_write_errors"] > 0
                              and s["connection_status"]["last_state_write_error"] is None,
                              "writes resumed with the errors counted and the error cleared")
        assert "written again after" in daemon.log
        assert not [p for p in mount_point.iterdir() if p.name.endswith(".tmp")]
        assert daemon.terminate() == 0
    finally:
        if daemon is not None:
            daemon.kill()
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True)


# --- process contract --------------------------------------------------------------------------------------------


def test_systemd_notify_ready_without_upstream_then_watchdog_and_stopping(daemon_factory, tmp_path):
    socket_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(socket_path)
    listener.settimeout(10)
    try:
        daemon = daemon_factory("ws://127.0.0.1:%d/market/stream?streams=!markPrice@arr" % free_port(),
                                NOTIFY_SOCKET=socket_path, WATCHDOG_USEC="400000")
        messages = []
        while sum("WATCHDOG=1" in m for m in messages) < 3:
            messages.append(listener.recv(4096).decode())
        assert messages[0].startswith("READY=1"), messages
        assert any("STATUS=" in m for m in messages)
        daemon.wait_for_log(r"reconnecting in")  # upstream down all along: READY did not wait for it
        assert daemon.terminate(timeout=5) == 0
        rest = []
        listener.settimeout(1)
        try:
            while True:
                rest.append(listener.recv(4096).decode())
        except socket.timeout:
            pass
        assert "STOPPING=1" in rest
    finally:
        listener.close()


def test_help_lists_every_setting_and_exits_0():
    result = subprocess.run([sys.executable, str(DAEMON), "--help"], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0
    for name in ("FUNDING_WS_URL", "FUNDING_STATE_FILE", "FUNDING_NO_DATA_SECONDS", "FUNDING_RECONNECT_MAX_SECONDS",
                 "FUNDING_ROTATE_SECONDS", "FUNDING_LOG_LEVEL", "FUNDING_RECONNECT_INITIAL_SECONDS",
                 "FUNDING_HEALTHY_RESET_SECONDS", "FUNDING_REST_URL", "FUNDING_SUMMARY_SECONDS"):
        assert name in result.stdout
    assert "wss://fstream.binance.com/market/stream?streams=!markPrice@arr" in result.stdout


@pytest.mark.parametrize(("name", "value"), [("FUNDING_NO_DATA_SECONDS", "abc"), ("FUNDING_WS_URL", "http://x/"),
                                             ("FUNDING_ROTATE_SECONDS", "-1"), ("FUNDING_LOG_LEVEL", "LOUD")])
def test_bad_configuration_exits_2_naming_the_variable(name, value):
    env = dict(os.environ, **{name: value})
    result = subprocess.run([sys.executable, str(DAEMON)], capture_output=True, text=True, timeout=30, env=env,
                            check=False)
    assert result.returncode == 2
    assert name in result.stderr and "Traceback" not in result.stderr
