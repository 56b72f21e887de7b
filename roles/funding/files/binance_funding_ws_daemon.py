#!/usr/bin/env python3
"""Keeps a WebSocket to Binance USD-M futures `!markPrice@arr` and the state file current.

Threads:
- main: the supervisor. Opens, watches, rotates and replaces connections,
  pings the systemd watchdog, logs summaries, handles SIGTERM/SIGINT.
- one per connection: receives frames (websocket-client answers server pings
  itself), parses them and merges them into the shared state.
- the writer: coalesces changes into atomic state-file writes.
- the funding-interval refresher: REST /fapi/v1/fundingInfo at start and hourly.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import struct
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

import funding_feed
import funding_settings
import funding_state
import funding_systemd
import funding_terms
import requests
import websocket

PROG = "binance_funding_ws_daemon"
DESCRIPTION = "Binance USD-M futures funding/mark price WebSocket daemon: keeps the shared state file current."
DEFAULT_WS_URL = funding_settings.DEFAULT_WS_URL
MARKET_PATH_PREFIX = "/market/"
LEGACY_HINT = (
    " - is this the legacy URL? Binance moved market streams to /market (%s)" % DEFAULT_WS_URL
)
FUNDING_INFO_PATH = "/fapi/v1/fundingInfo"
FUNDING_INFO_RETRY_SECONDS = 300.0
SUPERVISOR_TICK_SECONDS = 0.2
RECV_POLL_SECONDS = 0.25
CLOSE_HANDSHAKE_SECONDS = 1.0
SHUTDOWN_JOIN_SECONDS = 2.0
WRITE_RETRY_SECONDS = 1.0

log = logging.getLogger(PROG)


S = funding_settings
SETTINGS = (
    S.WS_URL, S.STATE_FILE, S.NO_DATA_SECONDS, S.RECONNECT_INITIAL, S.RECONNECT_MAX, S.HEALTHY_RESET, S.ROTATE_SECONDS,
    S.CONNECT_TIMEOUT, S.WRITE_COALESCE, S.WRITE_HEARTBEAT, S.SUMMARY_SECONDS, S.REST_URL, S.INTERVALS_REFRESH,
    S.LOG_LEVEL,
)


def url_is_legacy(url: str) -> bool:
    return not urlsplit(url).path.startswith(MARKET_PATH_PREFIX)


class FeedState:
    """funding_state and connection_status, guarded by one lock; `changed` wakes the writer."""

    def __init__(self, funding: Dict[str, Dict[str, Any]], status: Dict[str, Any]) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.funding = funding
        self.status = status
        self.funding_terms: Optional[Dict[str, funding_terms.FundingTerms]] = None
        self.items_accepted = 0
        # Set when a settlement's T spacing revealed an interval fundingInfo did not say: refresh the terms early.
        self.terms_suspect = threading.Event()

    def update_status(self, **values: Any) -> None:
        with self.lock:
            self.status.update(values)
        self.changed.set()

    def increment_status(self, key: str, by: int = 1) -> None:
        with self.lock:
            self.status[key] = self.status.get(key, 0) + by
        self.changed.set()

    def apply_frame(self, raw: Any) -> Tuple[funding_feed.FrameResult, int]:
        """Parse and merge one frame; return the parse result and how many updates were stored."""
        result = funding_feed.parse_frame(raw)
        now = time.time()
        with self.lock:
            status = self.status
            status["last_data_time"] = now
            if result.frame_rejected:
                status["frames_rejected"] += 1
            else:
                status["messages_received"] += 1
            status["items_rejected"] += result.items_rejected
            status["items_skipped_no_funding"] += result.items_skipped_no_funding
            stored = 0
            changes: List[funding_feed.IntervalChange] = []
            if result.updates:
                merge = funding_feed.merge_updates(self.funding, result.updates, now, self.funding_terms)
                stored = merge.accepted
                status["items_out_of_order"] += merge.out_of_order
                status["items_rejected"] += merge.over_symbol_limit
                status["last_message_time"] = now
                self.items_accepted += stored
                changes = merge.interval_changes
                status["interval_changes"] += len(changes)
                if merge.revealed_intervals and self.funding_terms is not None:
                    self._adopt_revealed(merge.revealed_intervals)
        self.changed.set()
        log_interval_changes(changes)
        return result, stored

    def _adopt_revealed(self, revealed: Dict[str, int]) -> None:
        """Later items of a symbol keep the interval its T spacing proved, until fundingInfo says otherwise."""
        assert self.funding_terms is not None
        terms = None
        for symbol, hours in revealed.items():
            known = funding_terms.terms_for(symbol, self.funding_terms)
            if known is not None and known.interval_hours != hours:
                if terms is None:
                    terms = dict(self.funding_terms)  # replaced, never mutated: the refresher may hold the old one
                terms[symbol] = funding_terms.FundingTerms(hours, known.cap, known.floor)
        if terms is not None:
            self.funding_terms = terms
            self.terms_suspect.set()

    def set_funding_terms(self, terms: Dict[str, funding_terms.FundingTerms]) -> int:
        with self.lock:
            self.funding_terms = terms
            changed, changes = funding_feed.apply_funding_terms(self.funding, terms, time.time())
            self.status["interval_changes"] += len(changes)
            self.status["last_funding_info_time"] = time.time()
        self.changed.set()
        log_interval_changes(changes)
        return changed

    def payload(self) -> Dict[str, Any]:
        # Records are replaced, never mutated, so shallow copies are consistent snapshots.
        with self.lock:
            return funding_state.build_payload(dict(self.funding), dict(self.status), time.time(), os.getpid())

    def counts(self) -> Dict[str, Any]:
        with self.lock:
            return dict(self.status, symbols=len(self.funding), items_accepted=self.items_accepted)


class StateWriter(threading.Thread):
    """Writes the state file after changes (coalesced), periodically, and once more at shutdown."""

    def __init__(self, path: str, feed: FeedState, coalesce: float, heartbeat: float) -> None:
        super().__init__(name="state-writer", daemon=True)
        self.path = path
        self.feed = feed
        self.coalesce = coalesce
        self.heartbeat = heartbeat
        self.writes = 0
        self._stop_requested = threading.Event()
        self._write_lock = threading.Lock()
        self._failing_since_errors = 0
        self._logged_errors: set = set()

    def stop(self) -> None:
        self._stop_requested.set()
        self.feed.changed.set()

    def run(self) -> None:
        pending = True
        while not self._stop_requested.is_set():
            if not pending and self.feed.changed.wait(self.heartbeat) and self.coalesce:
                self._stop_requested.wait(self.coalesce)
            if self._stop_requested.is_set():
                break
            self.feed.changed.clear()
            pending = not self.write_once()
            if pending:
                self._stop_requested.wait(WRITE_RETRY_SECONDS)

    def write_once(self, lock_timeout: float = -1) -> bool:
        """One atomic write of the current state; False (logged, counted) when it failed."""
        if not self._write_lock.acquire(timeout=lock_timeout):
            log.error("state file write still in progress; final write skipped")
            return False
        try:
            payload = self.feed.payload()
            try:
                funding_state.write_state_atomic(self.path, payload)
            except Exception as exc:  # disk errors above all; never fatal, the old file stays intact
                self._record_failure(exc)
                return False
            self.writes += 1
            if self._failing_since_errors:
                log.info("state file %s written again after %d failed attempts", self.path,
                         self._failing_since_errors)
                self._failing_since_errors = 0
                self._logged_errors.clear()
                self.feed.update_status(last_state_write_error=None)
            return True
        finally:
            self._write_lock.release()

    def _record_failure(self, exc: Exception) -> None:
        self._failing_since_errors += 1
        description = "%s: %s" % (type(exc).__name__, exc)
        with self.feed.lock:
            self.feed.status["state_write_errors"] += 1
            self.feed.status["last_state_write_error"] = description
        key = (type(exc).__name__, getattr(exc, "errno", None), getattr(exc, "strerror", None) or str(exc))
        if key not in self._logged_errors:
            self._logged_errors.add(key)
            log.error("cannot write state file %s: %s; the previous file stays as it is, retrying "
                      "(repeats of this error are counted in state_write_errors, not logged)",
                      self.path, description)


class Connection:
    """One WebSocket connection in its own thread: connect, receive, hand frames to the feed."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"

    def __init__(self, number: int, url: str, purpose: str, feed: FeedState, *, wake: threading.Event,
                 connect_timeout: float) -> None:
        self.number = number
        self.url = url
        self.purpose = purpose
        self.feed = feed
        self.wake = wake
        self.connect_timeout = connect_timeout
        self.state = self.CONNECTING
        self.started_at = time.monotonic()
        self.opened_at: Optional[float] = None
        self.first_data_at: Optional[float] = None
        self.last_data_at: Optional[float] = None
        self.closed_at: Optional[float] = None
        self.close_reason: Optional[str] = None
        self.frames = 0
        self.announced = False  # "connected" logged and counted
        self._close_requested: Optional[str] = None
        self._ws: Optional[websocket.WebSocket] = None
        self._thread = threading.Thread(target=self._run, name="ws-%d" % number, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def request_close(self, reason: str) -> None:
        """Ask the receive loop to close (it notices within RECV_POLL_SECONDS)."""
        if self._close_requested is None:
            self._close_requested = reason

    @property
    def closing(self) -> bool:
        return self._close_requested is not None

    def seconds_without_data(self, now: float) -> Optional[float]:
        if self.state != self.OPEN or self.opened_at is None:
            return None
        return now - (self.last_data_at if self.last_data_at is not None else self.opened_at)

    def _run(self) -> None:
        reason = "closed"
        try:
            reason = self._connect_and_receive()
        except Exception as exc:  # a bug must end this connection, never the daemon
            log.exception("connection #%d failed unexpectedly", self.number)
            reason = "internal error: %s" % exc
        finally:
            ws = self._ws
            if ws is not None:
                ws.shutdown()
            self.close_reason = reason
            self.closed_at = time.monotonic()
            self.state = self.CLOSED
            self.wake.set()

    def _connect_and_receive(self) -> str:
        try:
            # UTF-8 is checked by funding_feed (fast, and a bad frame then costs only itself).
            ws = websocket.create_connection(self.url, timeout=self.connect_timeout, enable_multithread=True,
                                             skip_utf8_validation=True)
        except Exception as exc:
            return "connect failed: %s" % describe_error(exc)
        self._ws = ws
        self.opened_at = time.monotonic()
        self.state = self.OPEN
        self.wake.set()
        ws.settimeout(RECV_POLL_SECONDS)
        while True:
            if self._close_requested is not None:
                try:
                    ws.close(timeout=CLOSE_HANDSHAKE_SECONDS)
                except Exception as exc:
                    log.debug("closing connection #%d: %s", self.number, describe_error(exc))
                return self._close_requested
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except websocket.WebSocketConnectionClosedException:
                return "connection lost (closed without a close frame)"
            except Exception as exc:
                return "receive error: %s" % describe_error(exc)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return "server closed the connection (%s)" % describe_close_frame(data)
            if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                self._handle_frame(data)

    def _handle_frame(self, data: Any) -> None:
        self.frames += 1
        result, _stored = self.feed.apply_frame(data)
        if result.frame_rejected:
            log.debug("connection #%d: frame rejected: %s", self.number, result.frame_reject_reason)
        elif result.reject_reasons:
            log.debug("connection #%d: items rejected: %s", self.number, dict(result.reject_reasons))
        if result.updates:
            now = time.monotonic()
            if self.first_data_at is None:
                self.first_data_at = now
                self.wake.set()
            self.last_data_at = now


def describe_error(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def describe_close_frame(data: Any) -> str:
    if isinstance(data, (bytes, bytearray)) and len(data) >= 2:
        code = struct.unpack("!H", bytes(data[:2]))[0]
        reason = bytes(data[2:]).decode("utf-8", "replace")
        return "code %d%s" % (code, ", %s" % reason if reason else "")
    return "no close code"


class Backoff:
    """Reconnect delays: initial, x2 per failed attempt, capped, with +-20 % jitter."""

    def __init__(self, initial: float, maximum: float, rng: Optional[random.Random] = None) -> None:
        self.initial = min(initial, maximum)
        self.maximum = maximum
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        self.attempts += 1
        base = min(self.maximum, self.initial * (2 ** min(self.attempts - 1, 30)))
        return min(self.maximum, base * self._rng.uniform(0.8, 1.2))

    def reset(self) -> None:
        self.attempts = 0


class Supervisor:
    """The main loop: keeps exactly one healthy connection (two while rotating)."""

    def __init__(self, config: Dict[str, Any], feed: FeedState, writer: StateWriter) -> None:
        self.url: str = config["FUNDING_WS_URL"]
        self.no_data_seconds: float = config["FUNDING_NO_DATA_SECONDS"]
        self.healthy_reset_seconds: float = config["FUNDING_HEALTHY_RESET_SECONDS"]
        self.rotate_seconds: float = config["FUNDING_ROTATE_SECONDS"]
        self.connect_timeout: float = config["FUNDING_CONNECT_TIMEOUT_SECONDS"]
        self.summary_seconds: float = config["FUNDING_SUMMARY_SECONDS"]
        self.rotation_retry_seconds: float = config["FUNDING_RECONNECT_MAX_SECONDS"]
        self.backoff = Backoff(config["FUNDING_RECONNECT_INITIAL_SECONDS"], config["FUNDING_RECONNECT_MAX_SECONDS"])
        self.feed = feed
        self.writer = writer
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.primary: Optional[Connection] = None
        self.candidate: Optional[Connection] = None
        self.retired: List[Connection] = []
        self.next_attempt_at = time.monotonic()
        self.next_rotation_at: Optional[float] = None
        self.connection_count = 0
        self.stop_signal: Optional[int] = None
        self._last_status_line = ""

    def request_stop(self, signum: int, _frame: Any = None) -> None:
        # Only flags here: logging from a signal handler can re-enter a stream the main thread is writing.
        if self.stop_signal is None:
            self.stop_signal = signum
        self.stop_requested.set()
        self.wake.set()

    def run(self) -> None:
        watchdog_every = funding_systemd.watchdog_interval()
        next_watchdog = time.monotonic()
        next_summary = time.monotonic() + self.summary_seconds
        last_summary_frames = 0
        while not self.stop_requested.is_set():
            self.wake.clear()
            self.step(time.monotonic())
            now = time.monotonic()
            if watchdog_every is not None and now >= next_watchdog and self.writer.is_alive():
                funding_systemd.watchdog()
                self._notify_status()
                next_watchdog = now + watchdog_every
            if now >= next_summary:
                last_summary_frames = self.log_summary(last_summary_frames)
                self._notify_status()
                next_summary = now + self.summary_seconds
            self.wake.wait(SUPERVISOR_TICK_SECONDS)

    def step(self, now: float) -> None:
        for connection in list(self.retired):
            if connection.state == Connection.CLOSED:
                self.retired.remove(connection)
                log.info("connection #%d closed after rotation (%s)", connection.number, connection.close_reason)
        if self.candidate is not None and self.candidate.state == Connection.CLOSED:
            self._rotation_failed(self.candidate, now)
        if self.primary is not None and self.primary.state == Connection.CLOSED:
            self._primary_closed(self.primary, now)
        if self.candidate is not None and self.candidate.first_data_at is not None:
            self._finish_rotation(now)
        if self.primary is None and now >= self.next_attempt_at:
            self.primary = self._open("connect")
        self._check_no_data(now)
        self._maybe_rotate(now)
        primary = self.primary
        if (primary is not None and primary.first_data_at is not None and self.backoff.attempts
                and now - primary.first_data_at >= self.healthy_reset_seconds):
            log.info("connection #%d healthy for %.0f s: reconnect delay starts over", primary.number,
                     now - primary.first_data_at)
            self.backoff.reset()
            self.feed.update_status(reconnect_attempts=0)
        self._update_connected()

    def _open(self, purpose: str) -> Connection:
        self.connection_count += 1
        connection = Connection(self.connection_count, self.url, purpose, self.feed, wake=self.wake,
                                connect_timeout=self.connect_timeout)
        log.info("connecting #%d (%s) to %s", connection.number, purpose, self.url)
        connection.start()
        return connection

    def _primary_closed(self, connection: Connection, now: float) -> None:
        if connection.opened_at is None:
            what = "connection #%d failed" % connection.number
        else:
            what = "disconnected #%d after %.1f s connected" % (
                connection.number, (connection.closed_at or now) - connection.opened_at)
        self.feed.update_status(last_disconnect_time=time.time(), last_disconnect_reason=connection.close_reason)
        if self.candidate is not None:
            log.warning("%s: %s; continuing on connection #%d", what, connection.close_reason,
                        self.candidate.number)
            self.primary, self.candidate = self.candidate, None
            return
        self.primary = None
        if (connection.first_data_at is not None
                and (connection.closed_at or now) - connection.first_data_at >= self.healthy_reset_seconds):
            self.backoff.reset()  # it delivered data for a healthy spell: this is a fresh failure, not a streak
        delay = self.backoff.next_delay()
        self.next_attempt_at = now + delay
        self.feed.update_status(reconnect_attempts=self.backoff.attempts)
        log.warning("%s: %s; reconnecting in %.2f s (attempt %d)", what, connection.close_reason, delay,
                    self.backoff.attempts)

    def _rotation_failed(self, connection: Connection, now: float) -> None:
        self.candidate = None
        self.next_rotation_at = now + self.rotation_retry_seconds
        log.warning("rotation connection #%d failed: %s; staying on #%s, next rotation attempt in %.0f s",
                    connection.number, connection.close_reason,
                    self.primary.number if self.primary else "-", self.rotation_retry_seconds)

    def _finish_rotation(self, now: float) -> None:
        new, old = self.candidate, self.primary
        assert new is not None
        self.primary, self.candidate = new, None
        self.next_rotation_at = None
        self.feed.increment_status("rotations")
        if old is None:
            return
        age = now - old.opened_at if old.opened_at is not None else 0.0
        log.info("rotated: connection #%d receives data, closing #%d after %.0f s", new.number, old.number, age)
        old.request_close("rotated to connection #%d" % new.number)
        self.retired.append(old)

    def _check_no_data(self, now: float) -> None:
        for connection in (self.primary, self.candidate):
            if connection is None:
                continue
            if connection.closing:
                continue
            silent = connection.seconds_without_data(now)
            if silent is None or silent < self.no_data_seconds:
                continue
            reason = "no markPriceUpdate for %.1f s on %s" % (silent, self.url)
            if url_is_legacy(self.url):
                reason += LEGACY_HINT
            log.info("connection #%d silent for %.1f s: closing it", connection.number, silent)
            connection.request_close(reason)

    def _maybe_rotate(self, now: float) -> None:
        primary = self.primary
        if self.candidate is not None or primary is None or primary.state != Connection.OPEN:
            return
        if primary.opened_at is None or now - primary.opened_at < self.rotate_seconds:
            return
        if self.next_rotation_at is not None and now < self.next_rotation_at:
            return
        log.info("connection #%d is %.0f s old: rotating before the 24 h limit", primary.number,
                 now - primary.opened_at)
        self.candidate = self._open("rotation")

    def _update_connected(self) -> None:
        open_connections = [c for c in (self.primary, self.candidate) if c is not None and c.state == Connection.OPEN]
        connected = bool(open_connections)
        if connected != self.feed.status.get("connected"):
            # disconnected_since marks the start of a down spell; failed attempts within it do not move it.
            values: Dict[str, Any] = {"connected": connected, "disconnected_since": None if connected else time.time()}
            if connected:
                values["last_connected_time"] = time.time()
            self.feed.update_status(**values)
        for connection in open_connections:
            if not connection.announced:
                connection.announced = True
                self.feed.increment_status("connections_opened")
                log.info("connected #%d to %s", connection.number, self.url)

    def log_summary(self, last_frames: int) -> int:
        counts = self.feed.counts()
        frames = counts["messages_received"]
        primary = self.primary
        on = "-"
        if primary is not None and primary.opened_at is not None and primary.state == Connection.OPEN:
            on = "#%d for %.0f s" % (primary.number, time.monotonic() - primary.opened_at)
        log.info(
            "summary: %d symbols, connected=%s (%s), frames %d (+%d), items stored %d, rejected frames %d, "
            "rejected items %d, skipped without funding %d, out of order %d, reconnect attempts %d, "
            "rotations %d, state writes %d, write errors %d",
            counts["symbols"], counts["connected"], on, frames, frames - last_frames, counts["items_accepted"],
            counts["frames_rejected"], counts["items_rejected"], counts["items_skipped_no_funding"],
            counts["items_out_of_order"], counts["reconnect_attempts"], counts["rotations"], self.writer.writes,
            counts["state_write_errors"],
        )
        return frames

    def _notify_status(self) -> None:
        counts = self.feed.counts()
        line = "%d symbols, %s, %d frames" % (
            counts["symbols"], "connected" if counts["connected"] else "disconnected", counts["messages_received"])
        if line != self._last_status_line:
            funding_systemd.status(line)
            self._last_status_line = line

    def shutdown(self) -> None:
        if self.stop_signal is not None:
            log.info("received %s, shutting down", signal.Signals(self.stop_signal).name)
        connections = [c for c in (self.primary, self.candidate, *self.retired) if c is not None]
        for connection in connections:
            connection.request_close("daemon stopping")
        deadline = time.monotonic() + SHUTDOWN_JOIN_SECONDS
        for connection in connections:
            connection.join(max(0.0, deadline - time.monotonic()))
        stopped = time.time()
        self.feed.update_status(connected=False, last_disconnect_time=stopped, disconnected_since=stopped,
                                last_disconnect_reason="daemon stopping")


def log_interval_changes(changes: List[funding_feed.IntervalChange]) -> None:
    for change in changes:
        log.info("funding interval changed: symbol=%s from_hours=%d to_hours=%d at_ms=%d seen_in=%s",
                 change.symbol, change.old_hours, change.new_hours, change.at_ms, change.how.replace(" ", "_"))


class FundingIntervalRefresher(threading.Thread):
    """Fetches /fapi/v1/fundingInfo (intervals, caps, floors) at start and then periodically.

    REST budget: one request per FUNDING_INTERVALS_REFRESH_SECONDS; after a failure, or when a settlement's T
    spacing contradicted the terms (feed.terms_suspect), one more no sooner than FUNDING_INFO_RETRY_SECONDS after
    the last: at most one request per 5 minutes in the bucket fundingInfo shares with fundingRate (README).
    A garbage or partial answer keeps the last good terms; it is counted (funding_info_errors) and logged once
    per episode.
    """

    def __init__(self, rest_url: str, refresh_seconds: float, timeout: float, feed: FeedState) -> None:
        super().__init__(name="funding-info", daemon=True)
        self.url = rest_url + FUNDING_INFO_PATH
        self.refresh_seconds = refresh_seconds
        self.timeout = timeout
        self.feed = feed
        self.stop_requested = threading.Event()
        self._failing = False
        self._partial = False

    def run(self) -> None:
        while not self.stop_requested.is_set():
            ok = self.refresh_once()
            wait = self.refresh_seconds if ok else min(self.refresh_seconds, FUNDING_INFO_RETRY_SECONDS)
            deadline = time.monotonic() + wait
            earliest = time.monotonic() + min(wait, FUNDING_INFO_RETRY_SECONDS)
            while not self.stop_requested.is_set() and time.monotonic() < deadline:
                if self.feed.terms_suspect.is_set() and time.monotonic() >= earliest:
                    break
                self.stop_requested.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            self.feed.terms_suspect.clear()

    def refresh_once(self) -> bool:
        try:
            response = requests.get(self.url, timeout=self.timeout)
            response.raise_for_status()
            terms, bad = funding_terms.parse_funding_info(response.json())
        except (requests.RequestException, ValueError) as exc:
            self.feed.increment_status("funding_info_errors")
            if not self._failing:
                log.warning("fundingInfo from %s failed: %s; the last good funding terms are kept (repeats are "
                            "counted in funding_info_errors until it answers again)", self.url, describe_error(exc))
            self._failing = True
            return False
        if bad:
            self.feed.increment_status("funding_info_errors")
            if not self._partial:
                log.warning("fundingInfo: %d unusable entries left out (those symbols keep the default terms; "
                            "repeats are counted in funding_info_errors)", bad)
        self._partial = bool(bad)
        if self._failing:
            log.info("fundingInfo from %s answers again", self.url)
            self._failing = False
        changed = self.feed.set_funding_terms(terms)
        by_hours: Dict[int, int] = {}
        for entry in terms.values():
            by_hours[entry.interval_hours] = by_hours.get(entry.interval_hours, 0) + 1
        log.info("fundingInfo: %d symbols with adjusted terms %s (others 8 h, no cap); %d records changed",
                 len(terms), dict(sorted(by_hours.items())), changed)
        return True


def load_previous_state(path: str) -> Dict[str, Dict[str, Any]]:
    """The previous file's records (keeping their updatedAt), or {} when there is none or it is unusable."""
    if not os.path.exists(path):
        log.info("no previous state file at %s: starting empty", path)
        return {}
    try:
        payload = funding_state.read_state(path)
    except funding_state.StateFileError as exc:
        log.warning("previous state file is unusable (%s): starting empty, it will be replaced", exc)
        return {}
    records, dropped = funding_feed.restore_funding_state(payload["funding_state"])
    log.info("loaded %d symbols from the previous state file %s%s (stale until refreshed)", len(records), path,
             ", dropped %d unusable records" % dropped if dropped else "")
    return records


def main(argv: Optional[List[str]] = None) -> int:
    _args, config = funding_settings.load(PROG, DESCRIPTION, SETTINGS, argv)
    funding_settings.setup_logging(config["FUNDING_LOG_LEVEL"], PROG)
    url = config["FUNDING_WS_URL"]
    path = config["FUNDING_STATE_FILE"]
    log.info("starting (pid %d): WebSocket URL %s, state file %s", os.getpid(), url, path)
    if url_is_legacy(url):
        log.warning("FUNDING_WS_URL %s is not under /market: Binance sends no markPrice data on the legacy "
                    "paths; expect no-data reconnects (use %s)", url, DEFAULT_WS_URL)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        log.error("cannot create state directory %s: %s (writes will be retried)", directory, describe_error(exc))

    started = time.time()
    status = funding_state.new_connection_status(ws_url=url, daemon_started_at=started, disconnected_since=started)
    feed = FeedState(load_previous_state(path), status)
    writer = StateWriter(path, feed, config["FUNDING_WRITE_COALESCE_SECONDS"],
                         config["FUNDING_WRITE_HEARTBEAT_SECONDS"])
    supervisor = Supervisor(config, feed, writer)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    writer.start()
    refresher: Optional[FundingIntervalRefresher] = None
    if config["FUNDING_REST_URL"]:
        refresher = FundingIntervalRefresher(config["FUNDING_REST_URL"], config["FUNDING_INTERVALS_REFRESH_SECONDS"],
                                             config["FUNDING_CONNECT_TIMEOUT_SECONDS"], feed)
        refresher.start()
    funding_systemd.ready("%d symbols loaded, connecting" % len(feed.funding))
    exit_code = 0
    try:
        supervisor.run()
    except Exception:
        log.exception("internal error in the supervisor loop; exiting")
        exit_code = 1
    funding_systemd.stopping()
    if refresher is not None:
        refresher.stop_requested.set()
    supervisor.shutdown()
    writer.stop()
    writer.join(1.0)
    if writer.write_once(lock_timeout=1.0):
        log.info("final state written (connected: false); exiting")
    else:
        log.error("final state could not be written; exiting")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
