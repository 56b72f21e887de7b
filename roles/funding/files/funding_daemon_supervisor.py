"""The supervisor (the main thread's loop): opens, watches, rotates and replaces every slot's connection, keeps
per-symbol streams where the all-market array leaves gaps, pings the systemd watchdog, logs summaries."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Dict, List, Optional

import funding_disconnects
import funding_health
import funding_state
import funding_systemd
import funding_universe
from funding_daemon_connection import Connection
from funding_daemon_feed import FeedState
from funding_daemon_gap_streams import GapStreams
from funding_daemon_log import log
from funding_daemon_slots import LEGACY_HINT, Backoff, Slot, url_is_legacy
from funding_daemon_writer import StateWriter
from funding_log import event

SUPERVISOR_TICK_SECONDS = 0.2
SHUTDOWN_JOIN_SECONDS = 2.0
HOUSEKEEPING_SECONDS = 1.0
ROTATION_READY_TIMEOUT_SECONDS = 60.0


class Supervisor:
    """The main loop: keeps every slot's connection healthy (two while rotating), and the per-symbol streams
    subscribed where the all-market array leaves gaps."""

    def __init__(self, config: Dict[str, Any], feed: FeedState, writer: StateWriter) -> None:
        self.url: str = config["FUNDING_WS_URL"]
        self.no_data_seconds: float = config["FUNDING_NO_DATA_SECONDS"]
        self.healthy_reset_seconds: float = config["FUNDING_HEALTHY_RESET_SECONDS"]
        self.rotate_seconds: float = config["FUNDING_ROTATE_SECONDS"]
        self.connect_timeout: float = config["FUNDING_CONNECT_TIMEOUT_SECONDS"]
        self.summary_seconds: float = config["FUNDING_SUMMARY_SECONDS"]
        self.rotation_retry_seconds: float = config["FUNDING_RECONNECT_MAX_SECONDS"]
        self.array_grace_seconds: float = config["FUNDING_ARRAY_GRACE_SECONDS"]
        self.expire_seconds: float = config["FUNDING_SYMBOL_EXPIRE_SECONDS"]
        self.stale_seconds: float = config["FUNDING_STALE_SECONDS"]
        self.reconnect_initial: float = config["FUNDING_RECONNECT_INITIAL_SECONDS"]
        self.reconnect_max: float = config["FUNDING_RECONNECT_MAX_SECONDS"]
        self.started_at = time.time()
        self.feed = feed
        self.writer = writer
        self.wake = threading.Event()
        self.stop_requested = threading.Event()
        self.slots: List[Slot] = [Slot(0, self.url, self._new_backoff())]
        self.gap_streams = GapStreams(feed, self.url, self.array_grace_seconds, self._new_backoff)
        self.connection_count = 0
        self.stop_signal: Optional[int] = None
        self.next_housekeeping = time.monotonic()
        self._last_status_line = ""

    def _new_backoff(self) -> "Backoff":
        return Backoff(self.reconnect_initial, self.reconnect_max)

    @property
    def primary(self) -> Optional[Connection]:
        return self.slots[0].primary

    @property
    def backoff(self) -> "Backoff":
        return self.slots[0].backoff

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
        for slot in self.slots:
            self._step_slot(slot, now)
        primary = self.primary
        if (primary is not None and primary.first_data_at is not None and self.backoff.attempts
                and now - primary.first_data_at >= self.healthy_reset_seconds):
            log.info("connection #%d healthy for %.0f s: reconnect delay starts over", primary.number,
                     now - primary.first_data_at)
            self.backoff.reset()
            self.feed.update_status(reconnect_attempts=0)
        self._update_connected()
        if now >= self.next_housekeeping:
            self.next_housekeeping = now + HOUSEKEEPING_SECONDS
            self._housekeeping(now)

    def _step_slot(self, slot: Slot, now: float) -> None:
        for connection in list(slot.retired):
            if connection.state == Connection.CLOSED:
                slot.retired.remove(connection)
                log.info("connection #%d closed after rotation (%s)", connection.number, connection.close_reason)
        if slot.candidate is not None and slot.candidate.state == Connection.CLOSED:
            self._rotation_failed(slot, slot.candidate, now)
        if slot.primary is not None and slot.primary.state == Connection.CLOSED:
            self._primary_closed(slot, slot.primary, now)
        candidate = slot.candidate
        if candidate is not None and (candidate.ready or self._rotation_ready_anyway(candidate, now)):
            self._finish_rotation(slot, now)
        if slot.primary is None and now >= slot.next_attempt_at and (slot.carries_array or slot.streams):
            slot.primary = self._open(slot, "connect")
        self._check_no_data(slot, now)
        self._maybe_rotate(slot, now)
        primary = slot.primary
        if (slot.index and primary is not None and primary.first_data_at is not None and slot.backoff.attempts
                and now - primary.first_data_at >= self.healthy_reset_seconds):
            slot.backoff.reset()

    def _rotation_ready_anyway(self, candidate: Connection, now: float) -> bool:
        """A rotation whose subscriptions keep failing must not keep the old connection past its age forever."""
        if candidate.state != Connection.OPEN or (candidate.carries_array and candidate.first_data_at is None):
            return False
        if candidate.opened_at is None or now - candidate.opened_at < ROTATION_READY_TIMEOUT_SECONDS:
            return False
        log.warning("rotation connection #%d: %d of %d streams acknowledged after %.0f s; rotating anyway",
                    candidate.number, candidate.subscriptions.live, len(candidate.subscriptions.wanted),
                    now - candidate.opened_at)
        return True

    def _open(self, slot: Slot, purpose: str) -> Connection:
        self.connection_count += 1
        connection = Connection(self.connection_count, slot.url, purpose, self.feed, wake=self.wake,
                                connect_timeout=self.connect_timeout, carries_array=slot.carries_array,
                                streams=slot.streams)
        log.info("connecting #%d (%s%s) to %s", connection.number, purpose, slot.label, slot.url,
                 extra=event("connect", conn=connection.number, slot=slot.index, purpose=purpose, url=slot.url))
        connection.start()
        return connection

    def _primary_closed(self, slot: Slot, connection: Connection, now: float) -> None:
        if connection.opened_at is None:
            what = "connection #%d failed" % connection.number
        else:
            what = "disconnected #%d after %.1f s connected" % (
                connection.number, (connection.closed_at or now) - connection.opened_at)
        kind = funding_disconnects.kind_of(connection.close_reason or "")
        self.feed.increment_status(funding_disconnects.status_key(kind))
        fields = {"conn": connection.number, "slot": slot.index, "kind": kind, "reason": connection.close_reason,
                  "connected_s": (connection.closed_at or now) - connection.opened_at
                  if connection.opened_at is not None else None}
        if slot.carries_array:
            self.feed.update_status(last_disconnect_time=time.time(),
                                    last_disconnect_reason=connection.close_reason)
        if slot.candidate is not None:
            log.warning("%s: %s; continuing on connection #%d", what, connection.close_reason,
                        slot.candidate.number, extra=event("disconnect", **fields, continue_on=slot.candidate.number))
            slot.primary, slot.candidate = slot.candidate, None
            return
        slot.primary = None
        if (connection.first_data_at is not None
                and (connection.closed_at or now) - connection.first_data_at >= self.healthy_reset_seconds):
            slot.backoff.reset()  # it delivered data for a healthy spell: this is a fresh failure, not a streak
        if not slot.carries_array and not slot.streams:
            log.info("%s%s: %s; no streams left for it", what, slot.label, connection.close_reason,
                     extra=event("disconnect", **fields))
            return
        delay = slot.backoff.next_delay()
        slot.next_attempt_at = now + delay
        if slot.carries_array:
            self.feed.update_status(reconnect_attempts=slot.backoff.attempts)
        log.warning("%s%s: %s; reconnecting in %.2f s (attempt %d)", what, slot.label, connection.close_reason,
                    delay, slot.backoff.attempts,
                    extra=event("disconnect", **fields, delay_s=delay, attempt=slot.backoff.attempts))

    def _rotation_failed(self, slot: Slot, connection: Connection, now: float) -> None:
        slot.candidate = None
        slot.next_rotation_at = now + self.rotation_retry_seconds
        log.warning("rotation connection #%d failed: %s; staying on #%s, next rotation attempt in %.0f s",
                    connection.number, connection.close_reason,
                    slot.primary.number if slot.primary else "-", self.rotation_retry_seconds)

    def _finish_rotation(self, slot: Slot, now: float) -> None:
        new, old = slot.candidate, slot.primary
        assert new is not None
        slot.primary, slot.candidate = new, None
        slot.next_rotation_at = None
        if slot.carries_array:
            self.feed.increment_status("rotations")
        if old is None:
            return
        age = now - old.opened_at if old.opened_at is not None else 0.0
        log.info("rotated: connection #%d receives data, closing #%d after %.0f s (%d symbol streams moved)",
                 new.number, old.number, age, new.subscriptions.live,
                 extra=event("rotated", conn=new.number, old_conn=old.number, age_s=age,
                             streams_moved=new.subscriptions.live))
        old.request_close("rotated to connection #%d" % new.number)
        slot.retired.append(old)

    def _check_no_data(self, slot: Slot, now: float) -> None:
        for connection in (slot.primary, slot.candidate):
            if connection is None:
                continue
            if connection.closing:
                continue
            silent = connection.seconds_without_data(now)
            if silent is None or silent < self.no_data_seconds:
                continue
            reason = "no markPriceUpdate for %.1f s on %s" % (silent, slot.url)
            if url_is_legacy(slot.url):
                reason += LEGACY_HINT
            log.info("connection #%d silent for %.1f s: closing it", connection.number, silent,
                     extra=event("no_data", conn=connection.number, silent_s=silent, url=slot.url))
            connection.request_close(reason)

    def _maybe_rotate(self, slot: Slot, now: float) -> None:
        primary = slot.primary
        if slot.candidate is not None or primary is None or primary.state != Connection.OPEN:
            return
        if primary.opened_at is None or now - primary.opened_at < self.rotate_seconds:
            return
        if slot.next_rotation_at is not None and now < slot.next_rotation_at:
            return
        log.info("connection #%d is %.0f s old: rotating before the 24 h limit", primary.number,
                 now - primary.opened_at, extra=event("rotate", conn=primary.number, age_s=now - primary.opened_at))
        slot.candidate = self._open(slot, "rotation")

    def _housekeeping(self, now: float) -> None:
        """Per-symbol streams for the array's gaps, expiry without a universe, coverage figures."""
        self.gap_streams.reconcile(self.slots, now)
        expired = self.feed.expire_symbols(self.expire_seconds, self.started_at)
        if expired:
            log.warning("removed %d symbols no stream carried for %.0f s (no universe known): %s", len(expired),
                        self.expire_seconds, ", ".join(expired[:20]))
        expected, missing = self.feed.coverage(self.stale_seconds)
        live = sum(c.subscriptions.live for slot in self.slots for c in (slot.primary,) if c is not None)
        open_count = sum(1 for slot in self.slots if slot.primary is not None and slot.primary.state == Connection.OPEN)
        with self.feed.lock:
            status = self.feed.status
            low = expected is not None and expected > 0 and (
                expected - len(missing) < expected * funding_health.COVERAGE_MIN_FRACTION)
            values = {
                "expected_symbols": expected,
                "missing_symbols": len(missing) if expected is not None else None,
                "coverage_low_since": (status.get("coverage_low_since") or time.time()) if low else None,
                "symbol_streams": live,
                "symbol_streams_wanted": len(self.gap_streams.stream_slot),
                "stream_connections": open_count,
            }
            changed = any(status.get(k) != v for k, v in values.items())
            status.update(values)
        if changed:
            self.feed.changed.set()

    def _update_connected(self) -> None:
        slot = self.slots[0]
        open_connections = [c for c in (slot.primary, slot.candidate) if c is not None and c.state == Connection.OPEN]
        connected = bool(open_connections)
        if connected != self.feed.status.get("connected"):
            # disconnected_since marks the start of a down spell; failed attempts within it do not move it.
            values: Dict[str, Any] = {"connected": connected, "disconnected_since": None if connected else time.time()}
            if connected:
                values["last_connected_time"] = time.time()
            self.feed.update_status(**values)
        for slot in self.slots:
            for connection in (slot.primary, slot.candidate):
                if connection is not None and connection.state == Connection.OPEN and not connection.announced:
                    connection.announced = True
                    self.feed.increment_status("connections_opened")
                    log.info("connected #%d to %s%s", connection.number, slot.url, slot.label,
                             extra=event("connected", conn=connection.number, url=slot.url))

    def log_summary(self, last_frames: int) -> int:
        counts = self.feed.counts()
        frames = counts["messages_received"]
        primary = self.primary
        on = "-"
        if primary is not None and primary.opened_at is not None and primary.state == Connection.OPEN:
            on = "#%d for %.0f s" % (primary.number, time.monotonic() - primary.opened_at)
        ignored = sum(counts.get(funding_state.IGNORED_STATUS_PREFIX + r, 0) for r in funding_universe.IGNORE_REASONS)
        log.info(
            "summary: %d symbols, connected=%s (%s), frames %d (+%d), items stored %d, rejected frames %d, "
            "rejected items %d, skipped without funding %d, out of order %d, ignored outside the universe %d, "
            "universe %s, missing %s, symbol streams %d of %d on %d connections, reconnect attempts %d, "
            "rotations %d, state writes %d, write errors %d",
            counts["symbols"], counts["connected"], on, frames, frames - last_frames, counts["items_accepted"],
            counts["frames_rejected"], counts["items_rejected"], counts["items_skipped_no_funding"],
            counts["items_out_of_order"], ignored,
            counts.get("expected_symbols") if counts.get("universe_known") else "unknown",
            counts.get("missing_symbols"), counts.get("symbol_streams", 0), counts.get("symbol_streams_wanted", 0),
            counts.get("stream_connections", 0), counts["reconnect_attempts"], counts["rotations"],
            self.writer.writes, counts["state_write_errors"],
            extra=event("summary", symbols=counts["symbols"], connected=bool(counts["connected"]), frames=frames,
                        frames_new=frames - last_frames, frames_rejected=counts["frames_rejected"],
                        items_rejected=counts["items_rejected"], ignored=ignored,
                        missing=counts.get("missing_symbols"), reconnect_attempts=counts["reconnect_attempts"],
                        rotations=counts["rotations"], state_writes=self.writer.writes,
                        write_errors=counts["state_write_errors"]),
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
            log.info("received %s, shutting down", signal.Signals(self.stop_signal).name,
                     extra=event("stop", signal=signal.Signals(self.stop_signal).name))
        connections = [c for slot in self.slots for c in slot.connections()]
        for connection in connections:
            connection.request_close("daemon stopping")
        deadline = time.monotonic() + SHUTDOWN_JOIN_SECONDS
        for connection in connections:
            connection.join(max(0.0, deadline - time.monotonic()))
        stopped = time.time()
        self.feed.update_status(connected=False, last_disconnect_time=stopped, disconnected_since=stopped,
                                last_disconnect_reason="daemon stopping", stream_connections=0, symbol_streams=0)
