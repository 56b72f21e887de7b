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

import json
import logging
import os
import random
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

import funding_disconnects
import funding_feed
import funding_health
import funding_json
import funding_rest
import funding_settings
import funding_state
import funding_subscriptions
import funding_systemd
import funding_terms
import funding_universe
import requests
import websocket
from funding_log import event

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
HOUSEKEEPING_SECONDS = 1.0
ROTATION_READY_TIMEOUT_SECONDS = 60.0
# The array's pushes may be shards (binance-protocol.md section 2): measure over at least two of them.
ARRAY_PUSHES_MEASURED = 2
# A symbol the array delivered once but then left out this long (the array's content changes) gets its own stream.
ARRAY_ABSENCE_SECONDS = 60.0
UNIVERSE_RETRY_INITIAL_SECONDS = 15.0
EXCHANGE_INFO_PATH = "/fapi/v1/exchangeInfo"

log = logging.getLogger(PROG)


S = funding_settings
SETTINGS = (
    S.WS_URL, S.STATE_FILE, S.NO_DATA_SECONDS, S.RECONNECT_INITIAL, S.RECONNECT_MAX, S.HEALTHY_RESET, S.ROTATE_SECONDS,
    S.CONNECT_TIMEOUT, S.WRITE_COALESCE, S.WRITE_HEARTBEAT, S.SUMMARY_SECONDS, S.REST_URL, S.INTERVALS_REFRESH,
    S.UNIVERSE_REFRESH_SECONDS, S.ARRAY_GRACE_SECONDS, S.SYMBOL_EXPIRE_SECONDS, S.STALE_SECONDS, S.LOG_LEVEL,
)


def url_is_legacy(url: str) -> bool:
    return not urlsplit(url).path.startswith(MARKET_PATH_PREFIX)


class FeedState:
    """funding_state, connection_status, the universe and the delisted map, guarded by one lock.

    `changed` wakes the writer.
    """

    def __init__(self, funding: Dict[str, Dict[str, Any]], status: Dict[str, Any],
                 delisted: Optional[Dict[str, float]] = None) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.funding = funding
        self.status = status
        self.funding_terms: Optional[Dict[str, funding_terms.FundingTerms]] = None
        self.items_accepted = 0
        self.contracts: Optional[Dict[str, Dict[str, str]]] = None  # the universe; None while unknown
        self.universe_symbols: Optional[FrozenSet[str]] = None
        self.excluded: Dict[str, str] = {}  # listed symbols outside the universe -> ignore reason
        self.universe_fetched_at: Optional[float] = None
        self.delisted: Dict[str, float] = dict(delisted or {})
        self.listed_at: Dict[str, float] = {}  # monotonic time a symbol entered the universe after the first one
        self.array_seen: Dict[str, float] = {}  # monotonic time the all-market array last delivered each symbol
        self.array_frames = 0  # all-market frames with at least one valid item, on any connection
        self._universe_json: Optional[funding_state.EncodedJson] = None
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
        if result.control is not None:
            return result, 0
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
            updates = result.updates
            if updates and not result.per_symbol:
                self.array_frames += 1
                seen = time.monotonic()
                array_seen = self.array_seen
                for update in updates:
                    array_seen[update.symbol] = seen
            universe = self.universe_symbols
            if universe is not None:
                if updates:
                    updates = [u for u in updates if u.symbol in universe
                               and u.market_marker != funding_universe.COIN_M_MARKER]
                    if len(updates) != len(result.updates):
                        self._count_ignored(result.updates, universe)
                # Rows without funding (dated, SETTLING) are skipped by the parser; say why they are not served.
                for symbol in result.skipped_symbols:
                    if symbol not in universe:
                        key = funding_state.IGNORED_STATUS_PREFIX + funding_universe.ignore_reason(
                            symbol, None, self.excluded)
                        status[key] = status.get(key, 0) + 1
            if updates:
                merge = funding_feed.merge_updates(self.funding, updates, now, self.funding_terms,
                                                   contracts=self.contracts)
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

    def _count_ignored(self, updates: List[funding_feed.MarkPriceUpdate], universe: FrozenSet[str]) -> None:
        for update in updates:
            if update.symbol in universe and update.market_marker != funding_universe.COIN_M_MARKER:
                continue
            key = funding_state.IGNORED_STATUS_PREFIX + funding_universe.ignore_reason(
                update.symbol, update.market_marker, self.excluded)
            self.status[key] = self.status.get(key, 0) + 1

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

    def apply_universe(self, universe: funding_universe.Universe, fetched_at: float,
                       initial: bool = False) -> "UniverseChange":
        """Make `universe` the one in use: drop records outside it, note delistings, tag records with their type.

        A symbol is noted as delisted when it leaves a known universe or is listed as no longer trading; a record
        that was never a contract (unknown, dated, COIN-M) is dropped without a note. `initial` is the universe
        loaded from the previous state file at start.
        """
        now = time.time()
        mono = time.monotonic()
        with self.lock:
            previous = self.universe_symbols
            symbols = universe.symbols
            added = symbols - previous if previous is not None else frozenset()
            left = previous - symbols if previous is not None else frozenset()
            self.contracts = universe.contracts
            self._universe_json = None
            self.universe_symbols = symbols
            self.excluded = dict(universe.excluded)
            self.universe_fetched_at = fetched_at
            for symbol in added:
                self.listed_at[symbol] = mono
            for symbol in list(self.listed_at):
                if symbol not in symbols:
                    del self.listed_at[symbol]
            delisted_now = set(left)
            removed = [s for s in self.funding if s not in symbols]
            for symbol in removed:
                del self.funding[symbol]
                if self.excluded.get(symbol) in (funding_universe.IGNORE_SETTLING, funding_universe.IGNORE_NOT_TRADING):
                    delisted_now.add(symbol)
            for symbol in delisted_now:
                self.delisted.setdefault(symbol, now)
            for symbol in symbols:
                self.delisted.pop(symbol, None)
            prune_delisted(self.delisted, now)
            tagged = apply_contracts(self.funding, universe.contracts)
            self.status.update(
                universe_known=True,
                universe_fetched_at=fetched_at,
                expected_symbols=len(symbols),
                universe_bad_entries=universe.bad_entries,
                universe_held_back=False,
            )
            if not initial:
                self.status["universe_refreshes"] = self.status.get("universe_refreshes", 0) + 1
            self.status["symbols_removed"] = self.status.get("symbols_removed", 0) + len(removed)
        self.changed.set()
        return UniverseChange(sorted(added), sorted(left), sorted(removed), tagged)

    def expire_symbols(self, expire_seconds: float, started_at: float) -> List[str]:
        """Without a universe: remove symbols no stream carried for expire_seconds (counted from the start at
        the earliest, so a restart gives loaded symbols that long to reappear)."""
        now = time.time()
        with self.lock:
            if self.universe_symbols is not None:
                return []
            expired = [s for s, r in self.funding.items()
                       if now - max(_number(r.get("updatedAt")), started_at) > expire_seconds]
            for symbol in expired:
                del self.funding[symbol]
                self.delisted.setdefault(symbol, now)
            pruned = prune_delisted(self.delisted, now)
            if expired:
                self.status["symbols_removed"] = self.status.get("symbols_removed", 0) + len(expired)
        if expired or pruned:
            self.changed.set()
        return expired

    def coverage(self, stale_seconds: float) -> Tuple[Optional[int], List[str]]:
        """(expected, missing): universe symbols without data newer than stale_seconds; (None, []) without one."""
        cutoff = time.time() - stale_seconds
        with self.lock:
            universe = self.universe_symbols
            if universe is None:
                return None, []
            funding = self.funding
            missing = sorted(s for s in universe
                             if s not in funding or _number(funding[s].get("updatedAt")) < cutoff)
        return len(universe), missing

    def gap_symbols(self, connected_since: float, grace_seconds: float, now: float) -> Optional[FrozenSet[str]]:
        """Universe symbols the all-market array did not deliver within grace_seconds of `connected_since` (or of
        their listing), or has stopped delivering for ARRAY_ABSENCE_SECONDS: the ones that need their own stream.
        None while it cannot be measured yet."""
        with self.lock:
            universe = self.universe_symbols
            if universe is None:
                return None
            array_seen = self.array_seen
            listed_at = self.listed_at
            gaps = set()
            for symbol in universe:
                since = max(connected_since, listed_at.get(symbol, connected_since))
                if now - since < grace_seconds:
                    continue
                if array_seen.get(symbol, -1.0) < max(since, now - ARRAY_ABSENCE_SECONDS):
                    gaps.add(symbol)
        return frozenset(gaps)

    def universe_for_file(self) -> Optional[funding_state.EncodedJson]:
        """The state file's `universe`, encoded once per universe (it is a third of the file, written every change)."""
        if self.contracts is None:
            return None
        if self._universe_json is None:
            self._universe_json = funding_state.EncodedJson(
                funding_json.dumps({"fetched_at": self.universe_fetched_at, "symbols": self.contracts}))
        return self._universe_json

    def payload(self) -> Dict[str, Any]:
        # Records are replaced, never mutated, so shallow copies are consistent snapshots. The universe dict is
        # replaced as a whole too.
        with self.lock:
            return funding_state.build_payload(dict(self.funding), dict(self.status), time.time(), os.getpid(),
                                               universe=self.universe_for_file(), delisted=dict(self.delisted))

    def counts(self) -> Dict[str, Any]:
        with self.lock:
            return dict(self.status, symbols=len(self.funding), items_accepted=self.items_accepted)


@dataclass
class UniverseChange:
    added: List[str]
    left: List[str]  # left the universe
    removed: List[str]  # records removed from funding_state
    tagged: int  # records whose contractType/underlyingType changed


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def prune_delisted(delisted: Dict[str, float], now: float) -> int:
    old = [s for s, t in delisted.items() if now - t > funding_state.DELISTED_KEEP_SECONDS]
    for symbol in old:
        del delisted[symbol]
    return len(old)


def apply_contracts(funding: Dict[str, Dict[str, Any]], contracts: Dict[str, Dict[str, str]]) -> int:
    """Set contractType/underlyingType on every record from the universe (new dicts); return how many changed."""
    changed = 0
    for symbol, record in list(funding.items()):
        contract = contracts.get(symbol)
        if contract is None:
            continue
        values = {k: contract[k] for k in funding_state.CONTRACT_KEYS if contract.get(k)}
        if any(record.get(k) != v for k, v in values.items()):
            funding[symbol] = dict(record, **values)
            changed += 1
    return changed


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
                         self._failing_since_errors,
                         extra=event("state_write_recovered", path=self.path, failed=self._failing_since_errors))
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
                      self.path, description, extra=event("state_write_error", path=self.path, error=description))


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


def overflow_url(url: str) -> str:
    """The URL of a connection without the all-market stream, for per-symbol streams only (same path family)."""
    parts = urlsplit(url)
    path = parts.path
    marker = path.find("/ws/")
    if marker >= 0:
        path = path[:marker + 3]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Slot:
    """One serving connection (two while rotating) and the per-symbol streams it carries.

    Slot 0 carries the all-market array plus up to 1023 per-symbol streams and drives connection_status;
    further slots carry the overflow, 1024 streams each.
    """

    def __init__(self, index: int, url: str, backoff: "Backoff") -> None:
        self.index = index
        self.url = url
        self.carries_array = index == 0
        self.backoff = backoff
        self.streams: FrozenSet[str] = frozenset()
        self.primary: Optional[Connection] = None
        self.candidate: Optional[Connection] = None
        self.retired: List[Connection] = []
        self.next_attempt_at = time.monotonic()
        self.next_rotation_at: Optional[float] = None

    @property
    def label(self) -> str:
        return "" if self.index == 0 else " (overflow %d)" % self.index

    def connections(self) -> List[Connection]:
        return [c for c in (self.primary, self.candidate, *self.retired) if c is not None]

    def set_streams(self, streams: FrozenSet[str]) -> None:
        self.streams = streams
        for connection in (self.primary, self.candidate):
            if connection is not None:
                connection.subscriptions.set_wanted(streams)


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
        self.stream_slot: Dict[str, int] = {}  # symbol -> slot of its per-symbol stream
        self.connection_count = 0
        self.stop_signal: Optional[int] = None
        self.next_housekeeping = time.monotonic()
        self._spell: Optional[Tuple[float, int]] = None
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
        self._reconcile_streams(now)
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
                "symbol_streams_wanted": len(self.stream_slot),
                "stream_connections": open_count,
            }
            changed = any(status.get(k) != v for k, v in values.items())
            status.update(values)
        if changed:
            self.feed.changed.set()

    def _array_spell(self) -> Optional[Tuple[float, int]]:
        """(since when, feed.array_frames then) of the current spell of all-market data without a break.

        A rotation does not break it (the old connection delivers until the new one does); a reconnect does.
        """
        slot = self.slots[0]
        delivering = [c for c in (slot.primary, slot.candidate, *slot.retired)
                      if c is not None and c.state == Connection.OPEN and c.first_data_at is not None]
        if not delivering:
            self._spell = None
        elif self._spell is None:
            first = min(delivering, key=lambda c: c.opened_at or 0.0)
            self._spell = (first.opened_at or time.monotonic(), self.feed.array_frames - first.array_frames)
        return self._spell

    def _reconcile_streams(self, now: float) -> None:
        spell = self._array_spell()
        if spell is None or self.feed.array_frames - spell[1] < ARRAY_PUSHES_MEASURED:
            return
        universe = self.feed.universe_symbols
        if universe is None:
            return
        # Symbols keep their stream once they have one (measuring again after every reconnect would open gaps);
        # only a symbol that leaves the universe loses it.
        gaps = self.feed.gap_symbols(spell[0], self.array_grace_seconds, now)
        if gaps is None:
            return
        wanted = {s for s in self.stream_slot if s in universe} | gaps
        if wanted == set(self.stream_slot):
            return
        added = sorted(wanted - set(self.stream_slot))
        removed = sorted(set(self.stream_slot) - wanted)
        self.stream_slot = funding_subscriptions.assign_slots(self.stream_slot, wanted)
        if added:
            log.info("%d universe symbols not delivered by the all-market array: per-symbol streams for %s%s",
                     len(added), ", ".join(added[:20]), ", ..." if len(added) > 20 else "")
        if removed:
            log.info("%d symbols left the universe: unsubscribing %s", len(removed), ", ".join(removed[:20]))
        slot_count = max(self.stream_slot.values(), default=0) + 1
        while len(self.slots) < slot_count:
            self.slots.append(Slot(len(self.slots), overflow_url(self.url), self._new_backoff()))
        for slot in self.slots:
            slot.set_streams(frozenset(funding_subscriptions.stream_name(s)
                                       for s, index in self.stream_slot.items() if index == slot.index))
        for slot in self.slots[1:]:
            if not slot.streams and slot.primary is not None and not slot.primary.closing:
                slot.primary.request_close("no per-symbol streams left")

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


class UniverseRefresher(threading.Thread):
    """Fetches the contract universe (REST exchangeInfo) at start and then every refresh_seconds (jittered).

    Never in the way of the stream: the supervisor connects at once whatever happens here. A failed or unusable
    answer keeps the last good universe; the problem is logged once per episode (a warning when it starts, a line
    when it ends) and retried sooner, with a doubling delay capped at the refresh interval.
    """

    def __init__(self, rest_url: str, refresh_seconds: float, timeout: float, feed: FeedState,
                 rng: Optional[random.Random] = None) -> None:
        super().__init__(name="exchange-info", daemon=True)
        self.client = funding_rest.JsonHttpClient(rest_url, timeout)
        self.refresh_seconds = refresh_seconds
        self.feed = feed
        self.gate = funding_universe.UniverseGate()
        self.stop_requested = threading.Event()
        self.failures = 0
        self._rng = rng or random.Random()

    def run(self) -> None:
        while not self.stop_requested.is_set():
            try:
                ok = self.refresh_once()
            except Exception:  # a bug here must never take the stream down with it
                log.exception("exchangeInfo refresh failed unexpectedly")
                ok = False
            if ok:
                wait = self.refresh_seconds * self._rng.uniform(0.9, 1.1)
            else:
                wait = min(self.refresh_seconds, UNIVERSE_RETRY_INITIAL_SECONDS * 2 ** min(self.failures - 1, 10))
            self.stop_requested.wait(wait)
        self.client.close()

    def refresh_once(self) -> bool:
        url = self.client.url_for(EXCHANGE_INFO_PATH)
        try:
            response = self.client.get(EXCHANGE_INFO_PATH)
            universe = funding_universe.parse_exchange_info(response.body)
        except (funding_rest.RestError, funding_universe.UniverseError) as exc:
            self._failed("%s" % exc if isinstance(exc, funding_rest.RestError) else "%s: %s" % (url, exc))
            return False
        fetched_at = time.time()
        if universe.bad_entries:
            log.warning("exchangeInfo: skipped %d malformed entries (first: %s)", universe.bad_entries,
                        universe.bad_entry_example)
        decision = self.gate.decide(self.feed.universe_symbols, universe.symbols)
        if not decision.apply:
            self.feed.update_status(universe_held_back=True)
            log.warning("exchangeInfo would remove %d of %d known symbols at once: kept the current universe until "
                        "the next refresh agrees (first: %s)", len(decision.removed),
                        len(self.feed.universe_symbols or ()), ", ".join(sorted(decision.removed)[:10]))
            self._recovered()
            return True
        change = self.feed.apply_universe(universe, fetched_at)
        self._recovered()
        log.info("universe: %d perpetuals TRADING (%d TradFi), %d other listed symbols excluded; +%d -%d, "
                 "%d records removed%s", len(universe.contracts), universe.tradifi_count(), len(universe.excluded),
                 len(change.added), len(change.left), len(change.removed),
                 "; left: %s" % ", ".join(change.left[:20]) if change.left else "")
        return True

    def _failed(self, description: str) -> None:
        self.failures += 1
        self.feed.update_status(universe_last_error=description)
        self.feed.increment_status("universe_errors")
        known = "keeping the last good universe" if self.feed.universe_symbols is not None else (
            "no universe known yet: serving what the streams bring")
        if self.failures == 1:
            log.warning("exchangeInfo failed: %s; %s (retrying; repeats are counted in universe_errors, not "
                        "logged)", description, known)
        else:
            log.debug("exchangeInfo failed again (%d): %s", self.failures, description)

    def _recovered(self) -> None:
        if self.failures:
            log.info("exchangeInfo answers again after %d failed attempts", self.failures)
            self.failures = 0
            self.feed.update_status(universe_last_error=None)


@dataclass
class PreviousState:
    records: Dict[str, Dict[str, Any]]
    universe: Optional[funding_universe.Universe] = None
    universe_fetched_at: Optional[float] = None
    delisted: Optional[Dict[str, float]] = None


def load_previous_state(path: str) -> PreviousState:
    """The previous file's records (keeping their updatedAt), universe and delisted map; empty when there is none
    or it is unusable."""
    if not os.path.exists(path):
        log.info("no previous state file at %s: starting empty", path)
        return PreviousState({})
    try:
        payload = funding_state.read_state(path)
    except funding_state.StateFileError as exc:
        log.warning("previous state file is unusable (%s): starting empty, it will be replaced", exc)
        return PreviousState({})
    records, dropped = funding_feed.restore_funding_state(payload["funding_state"])
    log.info("loaded %d symbols from the previous state file %s%s (stale until refreshed)", len(records), path,
             ", dropped %d unusable records" % dropped if dropped else "")
    previous = PreviousState(records, delisted=funding_state.delisted_of(payload))
    saved = funding_state.universe_of(payload)
    if saved:
        try:
            previous.universe = funding_universe.parse_exchange_info(
                {"symbols": [dict(contract, symbol=symbol, status=funding_universe.TRADING)
                             for symbol, contract in saved.items()]})
            previous.universe_fetched_at = funding_state.universe_fetched_at(payload)
        except funding_universe.UniverseError as exc:
            log.warning("the universe in the previous state file is unusable (%s): ignored", exc)
    return previous


def main(argv: Optional[List[str]] = None) -> int:
    _args, config = funding_settings.load(PROG, DESCRIPTION, SETTINGS, argv)
    funding_settings.setup_logging(config["FUNDING_LOG_LEVEL"], PROG)
    url = config["FUNDING_WS_URL"]
    path = config["FUNDING_STATE_FILE"]
    log.info("starting (pid %d): WebSocket URL %s, state file %s", os.getpid(), url, path,
             extra=event("start", pid=os.getpid(), url=url, state_file=path))
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
    previous = load_previous_state(path)
    feed = FeedState(previous.records, status, previous.delisted)
    if previous.universe is not None:
        change = feed.apply_universe(previous.universe, previous.universe_fetched_at or started, initial=True)
        log.info("loaded the universe of the previous state file: %d perpetuals; %d loaded records outside it "
                 "removed", len(previous.universe.contracts), len(change.removed))
    writer = StateWriter(path, feed, config["FUNDING_WRITE_COALESCE_SECONDS"],
                         config["FUNDING_WRITE_HEARTBEAT_SECONDS"])
    supervisor = Supervisor(config, feed, writer)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    writer.start()
    refresher: Optional[FundingIntervalRefresher] = None
    universe_refresher: Optional[UniverseRefresher] = None
    if config["FUNDING_REST_URL"]:
        refresher = FundingIntervalRefresher(config["FUNDING_REST_URL"], config["FUNDING_INTERVALS_REFRESH_SECONDS"],
                                             config["FUNDING_CONNECT_TIMEOUT_SECONDS"], feed)
        refresher.start()
        universe_refresher = UniverseRefresher(config["FUNDING_REST_URL"], config["FUNDING_UNIVERSE_REFRESH_SECONDS"],
                                               config["FUNDING_CONNECT_TIMEOUT_SECONDS"], feed)
        universe_refresher.start()
    else:
        log.warning("FUNDING_REST_URL is off: no contract universe; serving what the streams bring")
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
    if universe_refresher is not None:
        universe_refresher.stop_requested.set()
    supervisor.shutdown()
    writer.stop()
    writer.join(1.0)
    if writer.write_once(lock_timeout=1.0):
        log.info("final state written (connected: false); exiting", extra=event("exit", final_state_written=True))
    else:
        log.error("final state could not be written; exiting", extra=event("exit", final_state_written=False))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
