"""GET /funding/stream: the state file as server-sent events, on each API worker's event loop.

Events (`text/event-stream`; every event has an `id:`; a `: keepalive` comment
after 15 s without one):
  snapshot  {"data": [records], "count": n, "total": n, "health": {...}}: every selected symbol, first
  update    {"data": [records], "removed": [symbols]}: the records that changed, at most one event per
            symbol per second (changes in between are coalesced: the event carries the latest record);
            `removed` lists symbols that left the selection (gone from the state, or no longer passing
            minAbsFundingRate/contractType)
  health    the /funding/health body, sent when the status or the set of reason codes changes (a state
            file that turns corrupt: the stream keeps the last good data and says so here)
A record is what /funding serves without `ageSeconds` (it would be stale on arrival: now - updatedAt).

Filters (query): symbols=A,B (at most 1000), quote=USDT, contractType=PERPETUAL (records without the
field never match), minAbsFundingRate=0.0005. Anything else, or a malformed value: 400 JSON, before the
stream starts.

Event ids name a version of the state file (its `updated_at` in microseconds), the same in every worker,
so a client that reconnects with `Last-Event-ID` to any worker resumes: when that version is within the
last 60 s it gets, as one update, every selected symbol changed since, and no snapshot; otherwise (too
old, malformed, not ours) a snapshot. The id of an event is the newest version whose changes the client
has fully received (a change held back by the one-per-second rule keeps the id before it), so a resume
can repeat a record, never miss one.

Isolation. The hub (one per worker) notices a new view through the view refresher's callback, diffs it once,
and in the same pass notes each client's pending symbols and writes what may go out (never waiting on the
client; clients in step share one encoding). Granian queues what is written without a bound and does not say
how far the client has read, so each stream looks at its own TCP socket (found in /proc/self/fd by its
addresses): while the kernel holds more than HIGH_WATER_BYTES unsent for the client nothing more is written
(changes keep coalescing, so memory stays bounded), and a client that has had data waiting for
FUNDING_API_STREAM_SEND_TIMEOUT_SECONDS without a moment of catching up is dropped (reset). At most
FUNDING_API_MAX_STREAMS streams are open over all workers; one more is answered 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import re
import socket
import struct
import termios
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import parse_qsl

import orjson
from funding_api_view import SnapshotView, StateViews, SymbolRecord
from funding_log import event
from funding_state import StateSnapshot

log = logging.getLogger("funding_api")

HEARTBEAT_SECONDS = 15.0
COALESCE_SECONDS = 1.0
RESUME_WINDOW_SECONDS = 60.0
HEALTH_CHECK_SECONDS = 1.0
# While a client is behind, how often its socket is looked at again (it may catch up any moment).
BEHIND_CHECK_SECONDS = 0.02
# While it keeps up, at most this often (two system calls per look; a stalled client is noticed this much later,
# and at most this much more is queued for it meanwhile).
PROBE_INTERVAL_SECONDS = 0.1
# More than this waiting in the kernel for the client: nothing more is written until it drains.
HIGH_WATER_BYTES = 64 * 1024
RETRY_MILLISECONDS = 2000
RETRY_AFTER_SECONDS = 5
MAX_FILTER_SYMBOLS = 1000
MAX_QUERY_BYTES = 48 * 1024
MAX_ECHO_CHARS = 60
# Update bodies kept for clients in step, per state version (each distinct set of changes is one).
MAX_SHARED_BODIES = 256

EVENT_STREAM_HEADERS = [
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("X-Accel-Buffering", "no"),
    ("Server", "binance-funding"),
]
JSON_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Server", "binance-funding")]

SYMBOL_RE = re.compile(r"[A-Za-z0-9_]{1,40}")
QUOTE_RE = re.compile(r"[A-Za-z0-9]{1,12}")
CONTRACT_TYPE_RE = re.compile(r"[A-Za-z_]{1,40}")
EVENT_ID_RE = re.compile(r"v([0-9]{1,20})")
FILTER_NAMES = ("symbols", "quote", "contractType", "minAbsFundingRate")

TCP_CLOSE_WAIT = 8  # tcpi_state when the peer has closed its side
TCP_CLOSE = 7


def error_body(status: int, error: str, detail: str) -> bytes:
    return orjson.dumps({"error": error, "detail": detail, "status": status})


def echo(text: str) -> str:
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + "..."


class FilterError(ValueError):
    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


@dataclass(frozen=True)
class StreamFilters:
    """What a client asked for; names are checked when a change is noted, record fields when it is sent."""

    symbols: Optional[FrozenSet[str]] = None
    quote: str = ""
    contract_type: str = ""
    min_abs_rate: Optional[float] = None

    @property
    def by_name(self) -> bool:
        return self.symbols is not None or bool(self.quote)

    @property
    def by_record(self) -> bool:
        return self.min_abs_rate is not None or bool(self.contract_type)

    def wants_name(self, symbol: str) -> bool:
        if self.symbols is not None and symbol not in self.symbols:
            return False
        return not self.quote or symbol.endswith(self.quote)

    def wants_record(self, record: SymbolRecord, contract_type: Callable[[SymbolRecord], Optional[str]]) -> bool:
        rate = record.funding_rate
        if self.min_abs_rate is not None and (rate is None or abs(rate) < self.min_abs_rate):
            return False
        return not self.contract_type or contract_type(record) == self.contract_type


def parse_filters(query: str) -> StreamFilters:
    """The filters of a /funding/stream query string; FilterError for anything unknown or malformed."""
    if len(query) > MAX_QUERY_BYTES:
        raise FilterError("uri_too_long", "the query is longer than %d bytes" % MAX_QUERY_BYTES)
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise FilterError("bad_query", "the query is not valid UTF-8") from None
    names: List[str] = []
    single: Dict[str, str] = {}
    for key, value in pairs:
        if key not in FILTER_NAMES:
            raise FilterError(
                "unknown_parameter", "unknown parameter %r; allowed: %s" % (echo(key), ", ".join(FILTER_NAMES))
            )
        if key == "symbols":
            names.extend(n.strip() for n in value.split(","))
            if not value.strip():
                raise FilterError("bad_symbols", "symbols= needs at least one symbol: symbols=BTCUSDT,ETHUSDT")
            continue
        if key in single:
            raise FilterError("repeated_parameter", "%s is given more than once" % key)
        single[key] = value
    symbols: Optional[FrozenSet[str]] = None
    if names:
        names = [n for n in names if n]
        invalid = [echo(n) for n in names if not SYMBOL_RE.fullmatch(n)]
        if invalid:
            raise FilterError("invalid_symbol", "symbols must match [A-Z0-9_]{1,40}: %s" % ", ".join(invalid[:10]))
        symbols = frozenset(n.upper() for n in names)
        if len(symbols) > MAX_FILTER_SYMBOLS:
            raise FilterError("too_many_symbols", "at most %d symbols, got %d" % (MAX_FILTER_SYMBOLS, len(symbols)))
    quote = single.get("quote", "")
    if "quote" in single and not QUOTE_RE.fullmatch(quote):
        raise FilterError("bad_quote", "quote must match [A-Z0-9]{1,12}, e.g. USDT")
    contract_type = single.get("contractType", "")
    if "contractType" in single and not CONTRACT_TYPE_RE.fullmatch(contract_type):
        raise FilterError("bad_contract_type", "contractType must match [A-Z_]{1,40}, e.g. PERPETUAL")
    min_abs: Optional[float] = None
    if "minAbsFundingRate" in single:
        text = single["minAbsFundingRate"]
        try:
            min_abs = float(text)
        except ValueError:
            min_abs = math.nan
        if not math.isfinite(min_abs) or not 0.0 <= min_abs <= 1.0 or not text.strip():
            raise FilterError("bad_min_abs_funding_rate", "minAbsFundingRate must be a number from 0 to 1, e.g. 0.0005")
    return StreamFilters(symbols, quote.upper(), contract_type.upper(), min_abs)


def version_id(view: SnapshotView) -> int:
    """The state file's version: its updated_at in microseconds (every worker reads the same number)."""
    if view.state_updated_at is not None:
        return int(round(view.state_updated_at * 1_000_000))
    return view.loads


def format_event(kind: str, event_id: int, data: bytes, retry: bool = False) -> bytes:
    head = b"retry: %d\n" % RETRY_MILLISECONDS if retry else b""
    return head + b"event: " + kind.encode("ascii") + b"\nid: v%d\ndata: " % event_id + data + b"\n\n"


def update_body(parts: Sequence[bytes], removed: Sequence[str]) -> bytes:
    """An update's data: the encoded records and the symbols that left the selection."""
    return b'{"data":[' + b",".join(parts) + b'],"removed":' + orjson.dumps(list(removed)) + b"}"


def parse_event_id(text: Optional[str]) -> Optional[int]:
    match = EVENT_ID_RE.fullmatch((text or "").strip())
    return int(match.group(1)) if match else None


@dataclass
class Version:
    """One state file as this worker saw it: what changed against the one before."""

    id: int
    previous_id: int
    seen_at: float  # monotonic
    changed: Tuple[str, ...]
    removed: Tuple[str, ...]


def address_of(text: str) -> Tuple[str, int]:
    """'127.0.0.1:8888' or '[::1]:8888' as (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


class ClientSocket:
    """This process's own handle on a stream's TCP connection, to see how much the client has not yet taken.

    Found by its addresses among the process's sockets and duplicated, so it stays valid whatever Granian
    does with its descriptor; closing it never closes the connection, `reset` does.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def find(cls, server: str, client: str) -> Optional["ClientSocket"]:
        try:
            local, peer = address_of(server), address_of(client)
            names = os.listdir("/proc/self/fd")
        except (OSError, ValueError):
            return None
        for name in names:
            try:
                if not os.readlink("/proc/self/fd/" + name).startswith("socket:"):
                    continue
                duplicate = os.dup(int(name))
            except (OSError, ValueError):
                continue
            sock = socket.socket(fileno=duplicate)
            try:
                if (
                    sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM
                    and sock.getpeername()[:2] == peer
                    and sock.getsockname()[1] == local[1]
                ):
                    return cls(sock)
            except OSError:
                pass
            sock.close()
        return None

    def unsent_bytes(self) -> int:
        """Bytes written but not yet acknowledged by the client (SIOCOUTQ); 0 when it cannot be told."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def peer_closed(self) -> bool:
        try:
            state = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except OSError:
            return True
        return state in (TCP_CLOSE_WAIT, TCP_CLOSE)

    def reset(self) -> None:
        """End the connection at once, unsent data discarded (RST): Granian's next write fails and it lets go."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


@dataclass(frozen=True)
class StreamConfig:
    max_streams: int = 64
    send_timeout_seconds: float = 10.0
    heartbeat_seconds: float = HEARTBEAT_SECONDS
    coalesce_seconds: float = COALESCE_SECONDS
    resume_window_seconds: float = RESUME_WINDOW_SECONDS


HealthProbe = Callable[[Optional[SnapshotView], StateSnapshot], Dict[str, Any]]


def health_key(body: Dict[str, Any]) -> Tuple[str, Tuple[str, ...]]:
    """What makes a health transition: the status and the set of reason codes (not the changing ages)."""
    codes = sorted({str(reason).split(":", 1)[0] for reason in body.get("reasons", ())})
    return str(body.get("status")), tuple(codes)


class StreamHub:
    """One per worker: follows the state views, keeps 60 s of versions for resumes, wakes the clients."""

    def __init__(
        self, views: StateViews, config: StreamConfig, counter: Any, health: HealthProbe
    ) -> None:
        self.views = views
        self.config = config
        self.counter = counter
        self.health = health
        self.clients: Set["StreamClient"] = set()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.view: Optional[SnapshotView] = None
        self.published: Any = None
        self.history: Deque[Version] = deque()
        self.health_body: Dict[str, Any] = {}
        self.health_state: Optional[Tuple[str, Tuple[str, ...]]] = None
        self.health_event_id = 0
        self._encoded: Dict[str, Tuple[SymbolRecord, bytes]] = {}
        self._bodies: Dict[Tuple[Tuple[str, ...], Tuple[str, ...]], bytes] = {}  # for the current view
        self._contract_types: Dict[str, Tuple[SymbolRecord, Optional[str]]] = {}
        self._poll_scheduled = False

    # --- following the state -------------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """In the worker's event loop: take the current view, then follow every change."""
        self.loop = loop
        self.poll()
        loop.call_later(HEALTH_CHECK_SECONDS, self._health_tick)

    def notify(self) -> None:
        """From any thread (the view refresher): the published view or state-file error may have changed."""
        loop = self.loop
        if loop is None or self._poll_scheduled:
            return
        self._poll_scheduled = True
        try:
            loop.call_soon_threadsafe(self.poll)
        except RuntimeError:  # the loop is closed: the worker is stopping
            pass

    def _health_tick(self) -> None:
        try:
            self.check_health()
        finally:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_later(HEALTH_CHECK_SECONDS, self._health_tick)

    def poll(self) -> None:
        self._poll_scheduled = False
        published = self.views.current()
        if published is self.published:
            return
        self.published = published
        # A health transition first: a client learns the state is readable again before the data it brings.
        self.check_health()
        view = published[0]
        if view is not None and view is not self.view:
            self._new_version(view)

    def _new_version(self, view: SnapshotView) -> None:
        old = self.view
        new_id = version_id(view)
        previous_id = version_id(old) if old is not None else new_id - 1
        if old is None:
            changed: Tuple[str, ...] = tuple(view.records)
            removed: Tuple[str, ...] = ()
        else:
            old_records = old.records
            old_get = old_records.get
            # An unchanged symbol keeps its record object (funding_api_view.build_records): identity first.
            changed = tuple(
                s for s, r in view.records.items()
                if (before := old_get(s)) is not r and (before is None or before.head != r.head)
            )
            removed = tuple(s for s in old_records if s not in view.records)
        self.view = view
        self._bodies.clear()
        if new_id <= previous_id:  # a state file with an older updated_at (a clock step): keep ids increasing
            new_id = previous_id + 1
        now = time.monotonic()
        self.history.append(Version(new_id, previous_id, now, changed, removed))
        cutoff = now - self.config.resume_window_seconds
        while self.history and self.history[0].seen_at < cutoff:
            self.history.popleft()
        for client in tuple(self.clients):
            client.note_changes(changed, removed, previous_id)

    @property
    def current_id(self) -> int:
        return self.history[-1].id if self.history else 0

    def check_health(self) -> None:
        view, snapshot = self.views.published()
        body = self.health(view, snapshot)
        self.health_body = body
        state = health_key(body)
        if state == self.health_state:
            return
        first = self.health_state is None
        self.health_state = state
        if first:
            return
        log.debug("stream: health is now %s %s", state[0], ",".join(state[1]) or "-")
        data = orjson.dumps(body)
        for client in tuple(self.clients):
            client.note_health(data)

    # --- what clients are sent ---------------------------------------------------------------------------------

    def encoded(self, record: SymbolRecord) -> bytes:
        """The record's JSON as events carry it (no ageSeconds), encoded once per record."""
        cached = self._encoded.get(record.symbol)
        if cached is not None and cached[0] is record:
            return cached[1]
        data = record.head + b"}"
        self._encoded[record.symbol] = (record, data)
        return data

    def update_body(self, ready: Tuple[str, ...], removed: Tuple[str, ...]) -> bytes:
        """The body of an update of `ready` (symbols of the current view) and `removed`, encoded once for all the
        clients in step; b"" when there is nothing to say."""
        if not ready and not removed:
            return b""
        key = (ready, removed)
        body = self._bodies.get(key)
        if body is None:
            if len(self._bodies) >= MAX_SHARED_BODIES:
                self._bodies.clear()
            records = self.view.records if self.view is not None else {}
            body = self._bodies[key] = update_body([self.encoded(records[s]) for s in ready], removed)
        return body

    def contract_type(self, record: SymbolRecord) -> Optional[str]:
        known = getattr(record, "contract_type", self)  # a record that carries it as an attribute
        if known is not self:
            return known if isinstance(known, str) else None
        cached = self._contract_types.get(record.symbol)
        if cached is not None and cached[0] is record:
            return cached[1]
        try:
            value = orjson.loads(record.head + b"}").get("contractType")
        except orjson.JSONDecodeError:
            value = None
        value = value if isinstance(value, str) else None
        self._contract_types[record.symbol] = (record, value)
        return value

    def changes_since(self, event_id: int) -> Optional[Tuple[Dict[str, int], Set[str]]]:
        """({symbol: version before its change}, removed) after version `event_id`; None when not resumable."""
        if not self.history or not self.history[0].previous_id <= event_id <= self.history[-1].id:
            return None
        changed: Dict[str, int] = {}
        removed: Set[str] = set()
        for version in self.history:
            if version.id <= event_id:
                continue
            for symbol in version.changed:
                changed.setdefault(symbol, version.previous_id)
                removed.discard(symbol)
            for symbol in version.removed:
                removed.add(symbol)
                changed.pop(symbol, None)
        return changed, removed


class _Rest:
    """What is left of an awaitable that did not finish at once, for the event loop to drive."""

    def __init__(self, first: Any, iterator: Any) -> None:
        self.first = first
        self.iterator = iterator

    def __await__(self) -> Any:
        yield self.first
        return (yield from self.iterator)


def send_now(transport: Any, data: bytes, on_failure: Callable[[], None]) -> bool:
    """Hand `data` to a stream's transport without a trip through the event loop; False when the stream is closed.

    Granian's RSGI stream transport (2.5) queues the bytes on the spot and returns an awaitable that is already
    done, or that raises when the client is gone. An awaitable that is not done at once is left to the event loop
    (`on_failure` if it fails there).
    """
    try:
        iterator = transport.send_bytes(data).__await__()
        first = next(iterator)
    except StopIteration:
        return True
    except Exception:  # Granian's "stream closed": the client went away
        return False
    rest = asyncio.ensure_future(_Rest(first, iterator))
    rest.add_done_callback(lambda task: task.cancelled() or task.exception() is None or on_failure())
    return True


class StreamClient:
    """One open stream: pending changes, coalesced per symbol, written as soon as they may be and the client can take
    them.

    Writing happens in `deliver`: called by the hub right after it noted a new version (one pass over its clients,
    no task switch per client), by a timer when the one-per-second rule held a change back, and by the client's
    coroutine, which otherwise only sends the first event and heartbeats, and watches a client that fell behind.
    """

    def __init__(
        self, hub: StreamHub, filters: StreamFilters, transport: Any, client_socket: Optional[ClientSocket]
    ) -> None:
        self.hub = hub
        self.filters = filters
        self.by_name = filters.by_name
        self.by_record = filters.by_record
        self.transport = transport
        self.client_socket = client_socket
        self.pending: Dict[str, int] = {}  # symbol -> the version before its first unsent change
        self.removed: Dict[str, int] = {}
        self.sent: Set[str] = set()  # symbols the client holds
        self.last_sent: Dict[str, float] = {}
        self.health_data: Optional[bytes] = None
        self.wake = asyncio.Event()
        self.ready = False  # the first event is out: updates may follow
        self.gone = False
        self.dropped = ""
        self.last_write = time.monotonic()
        self.behind_since: Optional[float] = None
        self.next_probe = 0.0
        self.timer: Optional[asyncio.TimerHandle] = None
        self.timer_at = math.inf

    # --- called by the hub ---------------------------------------------------------------------------------------

    def note_changes(self, changed: Sequence[str], removed: Iterable[str], previous_id: int) -> None:
        wanted = [s for s in changed if self.filters.wants_name(s)] if self.by_name else changed
        pending = self.pending
        noted = bool(wanted)
        if not pending:
            self.pending = pending = dict.fromkeys(wanted, previous_id)
        else:
            setdefault = pending.setdefault
            for symbol in wanted:
                setdefault(symbol, previous_id)
        if self.removed:
            for symbol in wanted:
                self.removed.pop(symbol, None)
        for symbol in removed:
            if symbol in self.sent:
                self.removed.setdefault(symbol, previous_id)
                pending.pop(symbol, None)
                noted = True
        if noted:
            self.deliver()

    def note_health(self, data: bytes) -> None:
        self.health_data = data
        self.deliver()

    def disconnected(self) -> None:
        self.gone = True
        self.cancel_timer()
        self.wake.set()

    # --- writing -------------------------------------------------------------------------------------------------

    def deliver(self) -> None:
        """Write what may be written now; arm a timer for what the one-per-second rule holds back."""
        if self.gone or not self.ready:
            return
        was_behind = self.behind_since is not None
        keeps_up = self.client_keeps_up()
        if self.gone or (self.behind_since is not None) != was_behind:
            self.wake.set()  # the coroutine watches a client that is behind (and ends for one that is gone)
        if not keeps_up:
            return
        if self.health_data is not None:
            data, self.health_data = self.health_data, None
            if not self.send(format_event("health", self.delivered_id(), data)):
                return
            self.hub.counter.count_stream_event("health")
        if self.pending or self.removed:
            event = self.update_event()
            if event:
                if not self.send(event):
                    return
                self.hub.counter.count_stream_event("update")
        if self.pending:
            last_sent = self.last_sent
            self.arm_timer(min(last_sent.get(s, 0.0) for s in self.pending) + self.hub.config.coalesce_seconds)

    def arm_timer(self, at: float) -> None:
        if self.timer is not None:
            if self.timer_at <= at:
                return
            self.timer.cancel()
        loop = self.hub.loop
        if loop is None:
            return
        self.timer_at = at
        self.timer = loop.call_later(max(0.0, at - time.monotonic()), self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.timer_at = math.inf
        self.deliver()

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.timer_at = math.inf

    def send(self, data: bytes) -> bool:
        if send_now(self.transport, data, self.disconnected):
            self.last_write = time.monotonic()
            return True
        self.disconnected()
        return False

    # --- the coroutine -------------------------------------------------------------------------------------------

    async def run(self, resume_from: Optional[int]) -> None:
        hub = self.hub
        resumed = hub.changes_since(resume_from) if resume_from is not None else None
        if resumed is None:
            self.send(self.snapshot_event())
        else:
            changed, removed = resumed
            self.sent = {s for s in (hub.view.records if hub.view else ()) if self.filters.wants_name(s)}
            self.sent.update(removed)
            for symbol, previous in changed.items():
                if self.filters.wants_name(symbol):
                    self.pending[symbol] = previous
            self.removed = {s: resume_from for s in removed if self.filters.wants_name(s)}
            # Headers go out with the first bytes: say at once that the stream is open.
            self.send(b": resumed after v%d\n\n" % resume_from)
        self.ready = True
        self.deliver()
        heartbeat = hub.config.heartbeat_seconds
        while not self.gone:
            if self.behind_since is not None:
                # Nothing more can be written until the client drains: look again soon.
                await self.wait(BEHIND_CHECK_SECONDS)
                self.deliver()
                continue
            quiet_for = time.monotonic() - self.last_write
            if quiet_for < heartbeat:
                await self.wait(heartbeat - quiet_for)
            elif self.send(b": keepalive\n\n"):
                self.deliver()  # a first look at a client that stopped reading since the last change
        self.cancel_timer()

    async def wait(self, timeout: float) -> None:
        # Cheaper than asyncio.wait_for, which makes a task per wait.
        timer = asyncio.get_running_loop().call_later(timeout, self.wake.set)
        await self.wake.wait()
        timer.cancel()
        self.wake.clear()

    def client_keeps_up(self) -> bool:
        """False while the client has too much unread to write more; drops it when that lasted too long."""
        client_socket = self.client_socket
        if client_socket is None:
            return True
        now = time.monotonic()
        if self.behind_since is None and now < self.next_probe:
            return True
        self.next_probe = now + PROBE_INTERVAL_SECONDS
        if client_socket.peer_closed():
            self.gone = True
            return False
        unsent = client_socket.unsent_bytes()
        if unsent == 0:
            self.behind_since = None
            return True
        if self.behind_since is None:
            self.behind_since = now
        elif now - self.behind_since >= self.hub.config.send_timeout_seconds:
            log.warning(
                "stream: dropping a client that took nothing for %.1f s (%d bytes waiting)",
                now - self.behind_since,
                unsent,
                extra=event("stream_client_dropped", reason="slow", behind_s=round(now - self.behind_since, 1),
                            unsent_bytes=unsent),
            )
            self.dropped = "slow"
            self.gone = True
            client_socket.reset()
            return False
        return unsent <= HIGH_WATER_BYTES

    def delivered_id(self) -> int:
        """The newest version whose changes this client has fully received."""
        held = [*self.pending.values(), *self.removed.values()]
        return min(held) if held else self.hub.current_id

    def snapshot_event(self) -> bytes:
        hub = self.hub
        view = hub.view
        parts: List[bytes] = []
        self.sent = set()
        if view is not None:
            wants_name, wants_record = self.filters.wants_name, self.filters.wants_record
            now = time.monotonic()
            for symbol, record in view.records.items():
                if wants_name(symbol) and wants_record(record, hub.contract_type):
                    parts.append(hub.encoded(record))
                    self.sent.add(symbol)
                    self.last_sent[symbol] = now
        rest = orjson.dumps({"count": len(parts), "total": view.count if view else 0, "health": hub.health_body})
        data = b'{"data":[' + b",".join(parts) + b"]," + rest[1:]
        hub.counter.count_stream_event("snapshot")
        return format_event("snapshot", hub.current_id, data, retry=True)

    def update_event(self) -> bytes:
        hub = self.hub
        view = hub.view
        now = time.monotonic()
        ready_before = now - hub.config.coalesce_seconds
        last_sent = self.last_sent
        removed: List[str] = list(self.removed)
        self.removed = {}
        records = view.records if view is not None else {}
        pending = self.pending
        get = last_sent.get
        ready = [s for s in pending if get(s, 0.0) <= ready_before]
        if len(ready) == len(pending):
            self.pending = {}
        else:
            for symbol in ready:
                del pending[symbol]
        sent = self.sent
        if not self.by_record and len(records.keys() & ready) == len(ready):
            # The usual case: every ready symbol is served and no filter looks at records. Clients in step (same
            # changes, same removals) share one encoding of the body.
            data = hub.update_body(tuple(ready), tuple(removed))
            sent.update(ready)
            last_sent.update(dict.fromkeys(ready, now))
        else:
            data = self.filtered_update_body(ready, removed, records, now)
        sent.difference_update(removed)
        if not data:
            return b""
        return format_event("update", self.delivered_id(), data)

    def filtered_update_body(
        self, ready: List[str], removed: List[str], records: Mapping[str, SymbolRecord], now: float
    ) -> bytes:
        """The update's body for `ready` symbols record by record (a filter on records, or a symbol gone); b"" when
        there is nothing to say. Appends to `removed` what leaves the client's selection."""
        hub = self.hub
        parts: List[bytes] = []
        encoded, sent, last_sent = hub.encoded, self.sent, self.last_sent
        for symbol in ready:
            record = records.get(symbol)
            if record is None:
                if symbol in sent:
                    removed.append(symbol)
                continue
            if not self.by_record or self.filters.wants_record(record, hub.contract_type):
                parts.append(encoded(record))
                sent.add(symbol)
                last_sent[symbol] = now
            elif symbol in sent:
                removed.append(symbol)
        if not parts and not removed:
            return b""
        return update_body(parts, removed)


class StreamEndpoint:
    """The RSGI handler of GET /funding/stream."""

    def __init__(self, hub: StreamHub, count_request: Callable[[str, str], None]) -> None:
        self.hub = hub
        self.count_request = count_request

    def reply(
        self, proto: Any, status: int, body: bytes, method: str, extra: Optional[List[Tuple[str, str]]] = None
    ) -> None:
        self.count_request("/funding/stream", str(status))
        proto.response_bytes(status, JSON_HEADERS + (extra or []), b"" if method == "HEAD" else body)

    async def __call__(self, scope: Any, proto: Any) -> None:
        method = scope.method
        if method not in ("GET", "HEAD"):
            body = error_body(405, "method_not_allowed", "only GET and HEAD are supported")
            self.reply(proto, 405, body, method, [("Allow", "GET, HEAD")])
            return
        try:
            filters = parse_filters(scope.query_string)
        except FilterError as exc:
            self.reply(proto, 400, error_body(400, exc.error, exc.detail), method)
            return
        # A client that just read a newer state from another worker must not get an older snapshot from this one.
        self.hub.poll()
        known_types = getattr(self.hub.view, "contract_types", None)  # the contract types the state knows, if any
        if filters.contract_type and known_types is not None and filters.contract_type not in known_types:
            known = ", ".join(sorted(known_types))
            detail = "unknown contractType %r; known: %s" % (echo(filters.contract_type), known)
            self.reply(proto, 400, error_body(400, "bad_contract_type", detail), method)
            return
        if method == "HEAD":
            self.count_request("/funding/stream", "200")
            proto.response_empty(200, list(EVENT_STREAM_HEADERS))
            return
        hub = self.hub
        counter = hub.counter
        if not counter.open_stream(hub.config.max_streams):
            detail = "%d streams are open, the most this server keeps; retry later" % hub.config.max_streams
            self.reply(proto, 503, error_body(503, "too_many_streams", detail), method,
                       [("Retry-After", str(RETRY_AFTER_SECONDS))])
            return
        client: Optional[StreamClient] = None
        client_socket: Optional[ClientSocket] = None
        watcher: Optional[asyncio.Future] = None
        try:
            self.count_request("/funding/stream", "200")
            transport = proto.response_stream(200, list(EVENT_STREAM_HEADERS))
            client_socket = ClientSocket.find(scope.server, scope.client)
            if client_socket is None:
                log.debug("stream: no socket found for %s; a slow client cannot be told", scope.client)
            client = StreamClient(hub, filters, transport, client_socket)
            watcher = asyncio.ensure_future(proto.client_disconnect())
            watcher.add_done_callback(lambda _: client.disconnected())
            hub.clients.add(client)
            await client.run(parse_event_id(scope.headers.get("last-event-id")))
        except Exception:
            log.exception("stream: unexpected error; dropping the client")
            if client is not None:
                client.dropped = client.dropped or "error"
        finally:
            if client is not None:
                hub.clients.discard(client)
            if client_socket is not None:
                client_socket.close()
            if watcher is not None:
                watcher.cancel()
            counter.close_stream(client.dropped if client is not None else "error")
