#!/usr/bin/env python3
"""Keeps a WebSocket to Binance USD-M futures `!markPrice@arr` and the state file current.

Threads:
- main: the supervisor (funding_daemon_supervisor). Opens, watches, rotates and replaces connections,
  pings the systemd watchdog, logs summaries, handles SIGTERM/SIGINT.
- one per connection (funding_daemon_connection): receives frames (websocket-client answers server pings
  itself), parses them and merges them into the shared state (funding_daemon_feed).
- the writer (funding_daemon_writer): coalesces changes into atomic state-file writes.
- the refreshers: REST /fapi/v1/fundingInfo at start and hourly (funding_daemon_terms_refresher), the universe
  from /fapi/v1/exchangeInfo (funding_daemon_universe_refresher).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import List, Optional

import funding_daemon_log
import funding_settings
import funding_state
import funding_systemd
from funding_daemon_feed import FeedState
from funding_daemon_log import describe_error, log
from funding_daemon_restore import load_previous_state
from funding_daemon_slots import url_is_legacy
from funding_daemon_supervisor import Supervisor
from funding_daemon_terms_refresher import FundingIntervalRefresher
from funding_daemon_universe_refresher import UniverseRefresher
from funding_daemon_writer import StateWriter
from funding_log import event

PROG = funding_daemon_log.PROGRAM
DESCRIPTION = "Binance USD-M futures funding/mark price WebSocket daemon: keeps the shared state file current."

S = funding_settings
SETTINGS = (
    S.WS_URL, S.STATE_FILE, S.NO_DATA_SECONDS, S.RECONNECT_INITIAL, S.RECONNECT_MAX, S.HEALTHY_RESET, S.ROTATE_SECONDS,
    S.CONNECT_TIMEOUT, S.WRITE_COALESCE, S.WRITE_HEARTBEAT, S.SUMMARY_SECONDS, S.REST_URL, S.INTERVALS_REFRESH,
    S.UNIVERSE_REFRESH_SECONDS, S.ARRAY_GRACE_SECONDS, S.SYMBOL_EXPIRE_SECONDS, S.STALE_SECONDS, S.LOG_LEVEL,
)


def main(argv: Optional[List[str]] = None) -> int:
    _args, config = funding_settings.load(PROG, DESCRIPTION, SETTINGS, argv)
    funding_settings.setup_logging(config["FUNDING_LOG_LEVEL"], PROG)
    url = config["FUNDING_WS_URL"]
    path = config["FUNDING_STATE_FILE"]
    log.info("starting (pid %d): WebSocket URL %s, state file %s", os.getpid(), url, path,
             extra=event("start", pid=os.getpid(), url=url, state_file=path))
    if url_is_legacy(url):
        log.warning("FUNDING_WS_URL %s is not under /market: Binance sends no markPrice data on the legacy "
                    "paths; expect no-data reconnects (use %s)", url, funding_settings.DEFAULT_WS_URL)
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
