"""One WebSocket connection in its own thread: connect, receive, hand frames to the feed, keep its per-symbol
streams subscribed (websocket-client answers server pings itself)."""

from __future__ import annotations

import json
import struct
import threading
import time
from typing import Any, FrozenSet, Optional

import funding_feed
import funding_subscriptions
import websocket
from funding_daemon_feed import FeedState
from funding_daemon_log import describe_error, log

RECV_POLL_SECONDS = 0.25
CLOSE_HANDSHAKE_SECONDS = 1.0


class Connection:
    """One WebSocket connection in its own thread: connect, receive, hand frames to the feed, and keep its
    per-symbol streams subscribed (control messages are sent from this same thread, paced)."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"

    def __init__(self, number: int, url: str, purpose: str, feed: FeedState, *, wake: threading.Event,
                 connect_timeout: float, carries_array: bool = True,
                 streams: FrozenSet[str] = frozenset()) -> None:
        self.number = number
        self.url = url
        self.purpose = purpose
        self.feed = feed
        self.wake = wake
        self.connect_timeout = connect_timeout
        self.carries_array = carries_array
        self.subscriptions = funding_subscriptions.Subscriptions(streams)
        self.state = self.CONNECTING
        self.started_at = time.monotonic()
        self.opened_at: Optional[float] = None
        # Data that proves this connection works: the array's for the all-market connection, else any.
        self.first_data_at: Optional[float] = None
        self.last_data_at: Optional[float] = None
        self.closed_at: Optional[float] = None
        self.close_reason: Optional[str] = None
        self.frames = 0
        self.array_frames = 0  # frames of the all-market array with at least one valid item
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

    @property
    def ready(self) -> bool:
        """Delivers data (the array's, on the all-market connection) and every wanted stream is acknowledged."""
        if self.state != self.OPEN:
            return False
        if self.carries_array and self.first_data_at is None:
            return False
        return self.subscriptions.complete

    def seconds_without_data(self, now: float) -> Optional[float]:
        if self.state != self.OPEN or self.opened_at is None:
            return None
        if not self.carries_array and not self.subscriptions.acked:
            return None  # an overflow connection has nothing to deliver before its first acknowledgement
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
                self._send_control(ws)
            except Exception as exc:
                return "send error: %s" % describe_error(exc)
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

    def _send_control(self, ws: websocket.WebSocket) -> None:
        subscriptions = self.subscriptions
        now = time.monotonic()
        for request in subscriptions.expire(now):
            self.feed.increment_status("subscribe_errors")
            log.warning("connection #%d: no answer to %s of %d streams within %.0f s; retrying in %.0f s",
                        self.number, request.method, len(request.streams), funding_subscriptions.ACK_TIMEOUT_SECONDS,
                        subscriptions.retry_at - now)
        message = subscriptions.next_message(now)
        if message is None:
            return
        # A text frame: Binance closes the connection (1008) on a binary control frame.
        ws.send(json.dumps(message, separators=(",", ":")), websocket.ABNF.OPCODE_TEXT)
        self.feed.increment_status("subscribe_messages")
        log.info("connection #%d: %s %d streams (id %d)", self.number, message["method"], len(message["params"]),
                 message["id"])

    def _handle_frame(self, data: Any) -> None:
        self.frames += 1
        result, _stored = self.feed.apply_frame(data)
        if result.control is not None:
            self._handle_reply(result.control)
            return
        if result.frame_rejected:
            log.debug("connection #%d: frame rejected: %s", self.number, result.frame_reject_reason)
        elif result.reject_reasons:
            log.debug("connection #%d: items rejected: %s", self.number, dict(result.reject_reasons))
        if result.updates and not result.per_symbol:
            self.array_frames += 1
        if result.updates and (result.per_symbol != self.carries_array):
            now = time.monotonic()
            if self.first_data_at is None:
                self.first_data_at = now
                self.wake.set()
            self.last_data_at = now

    def _handle_reply(self, reply: funding_feed.ControlReply) -> None:
        now = time.monotonic()
        error = None
        if not reply.ok:
            error = "code %s: %s" % (reply.error_code, reply.error_message or "no message")
        outcome = self.subscriptions.on_reply(reply.request_id, error, now)
        if outcome.request is None:
            log.warning("connection #%d: answer to an unknown request id %.40r%s", self.number, reply.request_id,
                        " (%s)" % error if error else "")
            return
        if error is not None:
            self.feed.increment_status("subscribe_errors")
            log.warning("connection #%d: %s of %d streams refused (%s); retrying in %.0f s", self.number,
                        outcome.request.method, len(outcome.request.streams), error,
                        self.subscriptions.retry_at - now)
            return
        if self.subscriptions.complete:
            self.wake.set()


def describe_close_frame(data: Any) -> str:
    if isinstance(data, (bytes, bytearray)) and len(data) >= 2:
        code = struct.unpack("!H", bytes(data[:2]))[0]
        reason = bytes(data[2:]).decode("utf-8", "replace")
        return "code %d%s" % (code, ", %s" % reason if reason else "")
    return "no close code"
