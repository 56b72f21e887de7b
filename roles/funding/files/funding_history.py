"""The settlement history: an SQLite database in the state directory, one writer, many readers.

One row per symbol and funding time: the settled rate and mark price, and where they
came from, `stream` (the daemon's last value before the settlement, a fallback) or
`rest` (GET /fapi/v1/fundingRate, which always wins). Binance's fundingTime is not
always an exact second (…005 ms seen), so rows are keyed by the funding time rounded
to the nearest second (`fundingTime`); the time Binance reported is kept as well.

Safety:
- WAL journal, synchronous=NORMAL: every transaction is atomic, a killed writer
  (kill -9) or a full disk rolls back to the last committed transaction and never
  corrupts the file (at worst the last transactions before a power cut are lost;
  REST gives them back on the next run).
- One writer: the recorder holds an exclusive lock file for its whole run and writes
  with BEGIN IMMEDIATE; readers open the file read-only (`mode=ro` URI), never block
  the writer and are never blocked by it (WAL), with a busy timeout for the moments
  a checkpoint needs the lock.
- The schema version is PRAGMA user_version; `migrate` brings an older file up to
  date in one transaction and refuses a newer one.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import quote

SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 5.0
MAX_ROWS = 1000
SOURCE_STREAM = "stream"
SOURCE_REST = "rest"
SOURCES = (SOURCE_STREAM, SOURCE_REST)
DB_MODE = 0o644

MIGRATIONS: Dict[int, Sequence[str]] = {
    1: (
        """CREATE TABLE settlements (
            symbol TEXT NOT NULL,
            funding_time INTEGER NOT NULL,      -- ms, rounded to the second: the settlement
            reported_time INTEGER NOT NULL,     -- ms, as Binance (or the stream's T) gave it
            funding_rate REAL NOT NULL,
            mark_price REAL,
            source TEXT NOT NULL CHECK (source IN ('stream', 'rest')),
            recorded_at INTEGER NOT NULL,       -- ms, when this row was last written
            PRIMARY KEY (symbol, funding_time)
        ) WITHOUT ROWID""",
        "CREATE INDEX settlements_by_time ON settlements (funding_time)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    ),
}


class HistoryError(Exception):
    """The database cannot be opened, read or written (the message says why)."""


class HistoryBusy(HistoryError):
    """Another writer holds the lock."""


@dataclass(frozen=True)
class Settlement:
    symbol: str
    funding_time: int  # ms, rounded to the second
    funding_rate: float
    mark_price: Optional[float]
    source: str
    reported_time: int = 0  # ms as reported; 0: same as funding_time

    def as_json(self) -> Dict[str, Any]:
        return {"symbol": self.symbol, "fundingTime": self.funding_time, "fundingRate": self.funding_rate,
                "markPrice": self.mark_price, "source": self.source}


CSV_HEADER = "symbol,fundingTime,fundingRate,markPrice,source\r\n"


def csv_line(row: Settlement) -> str:
    price = "" if row.mark_price is None else repr(row.mark_price)
    return "%s,%d,%r,%s,%s\r\n" % (row.symbol, row.funding_time, row.funding_rate, price, row.source)


def settlement_slot(funding_time_ms: int) -> int:
    """The settlement a reported fundingTime belongs to: rounded to the nearest second."""
    return (funding_time_ms + 500) // 1000 * 1000


def _connect(uri: str, read_only: bool) -> sqlite3.Connection:
    connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                 check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = %d" % int(BUSY_TIMEOUT_SECONDS * 1000))
    if read_only:
        connection.execute("PRAGMA query_only = ON")
    return connection


def file_uri(path: str, mode: str) -> str:
    return "file:%s?mode=%s" % (quote(os.path.abspath(path)), mode)


# --------------------------------------------------------------------------- writer


class HistoryWriter:
    """The one writer (the recorder). Use as a context manager; every method commits before it returns."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock_fd: Optional[int] = None
        self.db: Optional[sqlite3.Connection] = None

    def __enter__(self) -> "HistoryWriter":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise HistoryError("cannot open the lock file %s.lock: %s" % (self.path, exc.strerror or exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise HistoryBusy("another writer holds %s.lock" % self.path) from None
        self._lock_fd = fd
        try:
            created = not os.path.exists(self.path)
            self.db = _connect(file_uri(self.path, "rwc"), read_only=False)
            if created:
                os.chmod(self.path, DB_MODE)
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise HistoryError("%s: cannot switch to WAL (journal_mode is %s)" % (self.path, mode))
            self.db.execute("PRAGMA synchronous = NORMAL")
            migrate(self.db, self.path)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise HistoryError("%s (in %s): %s" % (self.path, directory, exc)) from None
        except HistoryError:
            self.close()
            raise

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self.db is None:
            raise HistoryError("history database is not open")
        return self.db

    def _transaction(self, statements: Iterable[Tuple[str, Sequence[Any]]]) -> int:
        db = self._db
        changed = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                changed += db.execute(sql, params).rowcount
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return changed

    def _insert_settlements(self, sql: str, rows: Iterable[Settlement], recorded_at_ms: int) -> int:
        """`sql` with each row's values and recorded_at, in one transaction; rows written."""
        return self._transaction(
            (sql, (r.symbol, r.funding_time, r.reported_time or r.funding_time, r.funding_rate, r.mark_price,
                   recorded_at_ms))
            for r in rows
        )

    def add_rest(self, rows: Iterable[Settlement], recorded_at_ms: int) -> int:
        """Upsert REST rows (REST always wins over stream rows) in one transaction; rows written."""
        sql = (
            "INSERT INTO settlements (symbol, funding_time, reported_time, funding_rate, mark_price, source, "
            "recorded_at) VALUES (?, ?, ?, ?, ?, 'rest', ?) ON CONFLICT (symbol, funding_time) DO UPDATE SET "
            "reported_time = excluded.reported_time, funding_rate = excluded.funding_rate, "
            "mark_price = excluded.mark_price, source = 'rest', recorded_at = excluded.recorded_at "
            "WHERE settlements.source != 'rest' OR settlements.funding_rate != excluded.funding_rate "
            "OR settlements.mark_price IS NOT excluded.mark_price"
        )
        return self._insert_settlements(sql, rows, recorded_at_ms)

    def add_stream(self, rows: Iterable[Settlement], recorded_at_ms: int) -> int:
        """Insert stream fallbacks where no row exists yet (never over a REST row); rows written."""
        sql = (
            "INSERT OR IGNORE INTO settlements (symbol, funding_time, reported_time, funding_rate, mark_price, "
            "source, recorded_at) VALUES (?, ?, ?, ?, ?, 'stream', ?)"
        )
        return self._insert_settlements(sql, rows, recorded_at_ms)

    def prune(self, before_ms: int) -> int:
        return self._transaction([("DELETE FROM settlements WHERE funding_time < ?", (before_ms,))])

    def set_meta(self, values: Dict[str, Any]) -> None:
        self._transaction(
            ("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
             (key, str(value)))
            for key, value in values.items()
        )

    def meta(self) -> Dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def unconfirmed(self, after_ms: int, before_ms: int) -> List[Tuple[str, int]]:
        """(symbol, fundingTime) of stream rows with after_ms < fundingTime < before_ms, oldest first (a range of
        the time index: cheap however large the table)."""
        return self._db.execute(
            "SELECT symbol, funding_time FROM settlements WHERE funding_time > ? AND funding_time < ? "
            "AND source = 'stream' ORDER BY funding_time", (after_ms, before_ms)).fetchall()

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file (after a large backfill), when no reader is in the way."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def migrate(db: sqlite3.Connection, path: str) -> int:
    """Bring the schema to SCHEMA_VERSION in one transaction; return the version found."""
    found = db.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise HistoryError("%s has schema version %d, newer than this program's %d; refusing to write it"
                           % (path, found, SCHEMA_VERSION))
    if found == SCHEMA_VERSION:
        return found
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                db.execute(statement)
        db.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return found


# --------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class HistoryFacts:
    """What health and /metrics report about the history."""

    last_settlement_ms: Optional[int]  # newest fundingTime stored
    last_confirmed_ms: Optional[int]  # newest fundingTime confirmed by REST
    rest_cursor_ms: Optional[int]  # REST sweeps are complete up to here (meta)
    rows: Optional[int] = None


class HistoryReader:
    """Read-only access for the API and the monitor; one connection per thread, opened lazily."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            if not os.path.exists(self.path):
                raise HistoryError("history database %s does not exist yet (the recorder has not run)" % self.path)
            try:
                db = _connect(file_uri(self.path, "ro"), read_only=True)
                version = db.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.Error as exc:
                raise HistoryError("cannot open history database %s: %s" % (self.path, exc)) from None
            if version != SCHEMA_VERSION:
                db.close()
                raise HistoryError("history database %s has schema version %d, expected %d"
                                   % (self.path, version, SCHEMA_VERSION))
            self._local.db = db
        return db

    def _query(self, sql: str, params: Sequence[Any]) -> List[Tuple[Any, ...]]:
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self.reset()
            raise HistoryError("history database %s: %s" % (self.path, exc)) from None

    def reset(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass
            self._local.db = None

    def symbol_rows(self, symbol: str, since: Optional[int], until: Optional[int], limit: int) -> List[Settlement]:
        """Newest first, fundingTime within [since, until], at most limit (<= MAX_ROWS)."""
        rows = self._query(
            "SELECT symbol, funding_time, funding_rate, mark_price, source FROM settlements WHERE symbol = ? "
            "AND funding_time >= ? AND funding_time <= ? ORDER BY funding_time DESC LIMIT ?",
            (symbol, since if since is not None else 0, until if until is not None else 2**62,
             min(limit, MAX_ROWS)))
        return [Settlement(*row) for row in rows]

    def at(self, funding_time_ms: int) -> List[Settlement]:
        rows = self._query(
            "SELECT symbol, funding_time, funding_rate, mark_price, source FROM settlements WHERE funding_time = ? "
            "ORDER BY symbol", (settlement_slot(funding_time_ms),))
        return [Settlement(*row) for row in rows]

    def has_symbol(self, symbol: str) -> bool:
        return bool(self._query("SELECT 1 FROM settlements WHERE symbol = ? LIMIT 1", (symbol,)))

    def facts(self) -> HistoryFacts:
        """Cheap (an index lookup and the meta table): health and /metrics call it per request."""
        last = self._query("SELECT max(funding_time) FROM settlements", ())[0][0]
        meta = dict(self._query("SELECT key, value FROM meta WHERE key IN ('rest_cursor_ms', 'last_confirmed_ms')",
                                ()))
        return HistoryFacts(last, _int_or_none(meta.get("last_confirmed_ms")), _int_or_none(meta.get("rest_cursor_ms")))


def _int_or_none(text: Optional[str]) -> Optional[int]:
    return int(text) if text is not None and text.isdigit() else None
