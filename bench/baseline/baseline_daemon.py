#!/usr/bin/env python3
"""BASELINE FOR BENCHMARKS ONLY: the seed design's WebSocket daemon, not the product.

A faithful re-implementation of "1. WebSocket Daemon" and "Atomic File Writes" in
/work/shared/seed/binance-funding-architecture.md, so `make bench` compares our
daemon against what users run today:

- websocket-client `WebSocketApp`, `run_forever(ping_interval=None, ping_timeout=None)`,
  reconnect with backoff 1 s -> 60 s;
- `on_message` parses every frame, updates the global `funding_state` under
  `STATE_FILE_LOCK` and rewrites the whole state file on every message with
  `json.dump(payload, f, indent=2)` into `.funding_state_{pid}.tmp`, then `os.rename`.

Only what the benchmark needs differs from the seed: the URL and the state file are
arguments (the seed hard-codes wss://fstream.binance.com and a path next to the
script), and a field that is missing or not a number is stored as null instead of
raising (the seed's sketch calls float() bare, which would drop whole frames of the
simulator's dated contracts; its older parser returned None the same way).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import websocket

logger = logging.getLogger("baseline_daemon")

RECONNECT_INITIAL_DELAY = 1
RECONNECT_MAX_DELAY = 60
RECONNECT_MULTIPLIER = 2
DEFAULT_WS_URL = "wss://fstream.binance.com/stream?streams=!markPrice@arr"

# Global state (thread-safe with lock), as in the seed.
funding_state: Dict[str, Dict[str, Any]] = {}
connection_status: Dict[str, Any] = {
    "connected": False,
    "last_connected_time": None,
    "reconnect_attempts": 0,
    "messages_received": 0,
    "last_message_time": None,
}
STATE_FILE_LOCK = threading.Lock()
STATE_FILE = Path(__file__).parent / ".funding_state.json"


def _float_or_none(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def write_state_file(state_file: Path, payload: Dict[str, Any]) -> None:
    """The seed's atomic write: indent=2 into a PID-named temp file, then os.rename."""
    tmp_file = state_file.parent / f".funding_state_{os.getpid()}.tmp"
    try:
        with open(tmp_file, "w") as f:
            json.dump(payload, f, indent=2)
        os.rename(str(tmp_file), str(state_file))
    except Exception as e:
        logger.error(f"Error saving state file: {e}")
        if tmp_file.exists():
            try:
                tmp_file.unlink()
            except OSError:
                pass


def save_state_to_file() -> None:
    payload = {
        "funding_state": funding_state,
        "connection_status": connection_status,
        "updated_at": time.time(),
        "daemon_pid": os.getpid(),
    }
    write_state_file(STATE_FILE, payload)


def on_message(ws: Any, message: str) -> None:
    """Process !markPrice@arr stream messages."""
    try:
        data = json.loads(message)
    except ValueError as e:
        logger.warning(f"Invalid JSON message: {e}")
        return
    if not isinstance(data, dict):
        return
    stream = data.get("stream", "")
    payload = data.get("data", [])

    if not isinstance(payload, list):
        payload = [payload]

    # ONLY process markPrice stream
    if "markPrice" not in stream:
        return

    with STATE_FILE_LOCK:
        connection_status["messages_received"] += 1
        connection_status["last_message_time"] = time.time()
        for item in payload:
            if not isinstance(item, dict):
                continue
            symbol = item.get("s")
            if not symbol:
                continue
            rec = funding_state.setdefault(symbol, {})
            rec["fundingRate"] = _float_or_none(item.get("r"))
            rec["markPrice"] = _float_or_none(item.get("p"))
            rec["indexPrice"] = _float_or_none(item.get("i"))
            rec["nextFundingTime"] = _int_or_none(item.get("T"))
            rec["updatedAt"] = time.time()

        save_state_to_file()  # Atomic write, on every message


def on_error(ws: Any, error: Any) -> None:
    logger.error(f"WebSocket error: {error}")
    with STATE_FILE_LOCK:
        connection_status["connected"] = False


def on_close(ws: Any, close_status_code: Any, close_msg: Any) -> None:
    logger.warning(f"WebSocket closed: {close_status_code} {close_msg}")
    with STATE_FILE_LOCK:
        connection_status["connected"] = False
        save_state_to_file()


def on_open(ws: Any) -> None:
    logger.info("WebSocket connected")
    with STATE_FILE_LOCK:
        connection_status["connected"] = True
        connection_status["last_connected_time"] = time.time()
        connection_status["reconnect_attempts"] = 0


def create_websocket(url: str) -> websocket.WebSocketApp:
    return websocket.WebSocketApp(
        url,
        on_message=on_message,
        on_error=on_error,
        on_close=on_close,
        on_open=on_open,
    )


def connect_websocket(url: str) -> None:
    """Main connection loop with auto-reconnect."""
    delay = RECONNECT_INITIAL_DELAY
    while True:
        logger.info(f"WebSocket URL: {url}")
        ws = create_websocket(url)
        started = time.monotonic()
        ws.run_forever(ping_interval=None, ping_timeout=None)
        if time.monotonic() - started > 60:
            delay = RECONNECT_INITIAL_DELAY
        with STATE_FILE_LOCK:
            connection_status["reconnect_attempts"] += 1
        logger.info(f"Reconnecting in {delay}s (attempt {connection_status['reconnect_attempts']})...")
        time.sleep(delay)
        delay = min(delay * RECONNECT_MULTIPLIER, RECONNECT_MAX_DELAY)


def main(argv: Optional[list] = None) -> int:
    global STATE_FILE  # noqa: PLW0603
    parser = argparse.ArgumentParser(description="BASELINE (benchmarks only): the seed design's WebSocket daemon.")
    parser.add_argument("--url", default=DEFAULT_WS_URL, help="WebSocket URL (default: %(default)s)")
    parser.add_argument("--state-file", default=str(STATE_FILE), help="state file path (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    STATE_FILE = Path(args.state_file)
    try:
        connect_websocket(args.url)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
