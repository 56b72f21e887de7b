"""The API with several worker processes: counters add up, a killed worker is replaced, hung workers are noticed."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from funding_api_metrics import LOADS_SLOT, REGION_SLOTS, ROUTES
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import (
    RisingPrice,
    api_workers,  # noqa: F401  (module fixture)
    fresh_symbols,
    get,
    reuseport_sockets,
    short_tempdir,
    sockets_per_worker,
    start_api,
    wait_until,
    worker_pids,
    write_state,
)


def symbol_requests_200(api):
    families = text_string_to_metric_families(api.get("/metrics").body.decode("utf-8"))
    for family in families:
        for s in family.samples:
            if s.name == "funding_api_requests_total" and s.labels == {"route": "/funding/{symbol}", "status": "200"}:
                return s.value
    return 0


def per_worker_slot(api, slot):
    """One counter as each worker wrote it into its own region of the shared counters file."""
    (path,) = glob.glob(os.path.join(api.workdir, "api-counters-*"))
    with open(path, "rb") as handle:
        values = memoryview(handle.read()).cast("Q")
    return [values[region * REGION_SLOTS + slot] for region in range(len(values) // REGION_SLOTS)]


def per_worker_symbol_200(api):
    return per_worker_slot(api, ROUTES.index("/funding/{symbol}") * 501 + (200 - 99))


def test_one_scrape_shows_the_requests_of_both_workers(api_workers):  # noqa: F811
    before = symbol_requests_200(api_workers)
    sent = 0
    # Concurrent clients on new connections, until each worker has answered some (the kernel picks the worker).
    for _ in range(50):
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: api_workers.get("/funding/BTCUSDT").status, range(40)))
        assert statuses == [200] * 40
        sent += 40
        if all(per_worker_symbol_200(api_workers)):
            break
    regions = per_worker_symbol_200(api_workers)
    assert len(regions) == 2 and all(regions), regions
    # Whichever worker answers the scrape, it reports the sum of both.
    assert symbol_requests_200(api_workers) - before == sent
    assert symbol_requests_200(api_workers) == sum(regions)


def test_a_worker_killed_with_sigkill_is_replaced_and_requests_keep_succeeding(api_workers):  # noqa: F811
    before = worker_pids(api_workers)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    statuses = []
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        statuses.append(api_workers.get("/funding/BTCUSDT").status)
    assert statuses and set(statuses) == {200}
    after = wait_until(lambda: len(worker_pids(api_workers)) == 2 and worker_pids(api_workers), deadline=15)
    assert after and before[0] not in after and before[1] in after
    assert api_workers.process.poll() is None
    # The replacement took the dead worker's counter region: the totals did not drop.
    assert symbol_requests_200(api_workers) >= len(statuses)


def test_a_new_file_reaches_every_worker(api_workers):  # noqa: F811
    before = per_worker_slot(api_workers, LOADS_SLOT)
    write_state(api_workers.state_file, fresh_symbols(count=10))
    # Each worker parses it in the background, with no request to prompt it.
    assert wait_until(lambda: all(a > b for a, b in zip(per_worker_slot(api_workers, LOADS_SLOT), before)), deadline=5)
    assert api_workers.get("/funding/health").json()["symbolCount"] == 13


def test_no_worker_answers_with_an_older_price_than_another_already_served():
    # One SO_REUSEPORT socket per worker sends a client's successive connections to different workers, whose
    # refreshers see a new file at different moments (here up to 50 ms apart, while the file changes every 10 ms).
    # Each request must still return a price no older than the one before it.
    workdir = short_tempdir()
    state_file = Path(workdir) / "state.json"
    write_state(state_file, fresh_symbols())
    api = start_api(state_file, workdir=workdir,
                    env={"FUNDING_API_WORKERS": "2", "FUNDING_API_STATE_POLL_MS": "50", "TMPDIR": workdir})
    try:
        with RisingPrice(state_file, "BTCUSDT"):
            prices = []
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                prices.append(get(api.port, "/funding/BTCUSDT").json()["markPrice"])
        went_back = [(a, b) for a, b in zip(prices, prices[1:]) if b < a]
        assert not went_back, went_back[:5]
        assert len(set(prices)) >= 20, "the price hardly moved: the test proved nothing"
        assert all(per_worker_symbol_200(api)), "one worker answered every request: the test proved nothing"
    finally:
        api.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_watchdog_stops_when_every_worker_hangs(tmp_path):
    write_state(tmp_path / "state.json", fresh_symbols())
    api = start_api(tmp_path / "state.json", env={"WATCHDOG_USEC": "1000000", "FUNDING_API_WORKERS": "2"})
    workers = worker_pids(api)
    try:
        assert "WATCHDOG=1" in api.receive_notifications("WATCHDOG=1", 20)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            api.drain_notifications()
            api.receive_notifications("WATCHDOG=1", 3)
            # The supervisor itself runs; its pings stop because no worker answers its self-check.
            assert "WATCHDOG=1" not in api.notifications
            assert api.process.poll() is None
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        assert "WATCHDOG=1" in api.receive_notifications("WATCHDOG=1", 10)
    finally:
        api.close()


def test_sigterm_stops_supervisor_and_workers_with_status_0_within_5_s(tmp_path):
    write_state(tmp_path / "state.json", fresh_symbols())
    api = start_api(tmp_path / "state.json", env={"FUNDING_API_WORKERS": "2"})
    workers = worker_pids(api)
    try:
        assert api.get("/funding/BTCUSDT").status == 200
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(5) == 0
        assert not [pid for pid in workers if os.path.exists("/proc/%d" % pid) and not zombie(pid)]
        # Workers leave cleanly: no Rust panic, no traceback from a finalizing interpreter.
        assert "panicked" not in api.log() and "Traceback" not in api.log(), api.log()[-2000:]
    finally:
        api.close()


def zombie(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def open_keepalive_connections(port, count):
    """`count` connections opened at once (as wrk or a pool of clients does), each with one request answered."""
    connections = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    for connection in connections:
        connection.sendall(b"GET /funding/BTCUSDT HTTP/1.1\r\nHost: x\r\n\r\n")
    for connection in connections:
        assert connection.recv(65536).startswith(b"HTTP/1.1 200"), "a connection was not answered"
    return connections


def test_connections_opened_at_once_are_spread_over_every_worker(api_workers):  # noqa: F811
    # One socket shared by the workers let whichever woke first accept the whole burst (16 of 16 on one worker, half
    # the throughput); one SO_REUSEPORT socket per worker lets the kernel spread them.
    connections = open_keepalive_connections(api_workers.port, 32)
    try:
        per_worker = sockets_per_worker(api_workers, "01")
        assert len(per_worker) == 2 and sum(per_worker.values()) == 32, per_worker
        assert min(per_worker.values()) >= 4, per_worker
    finally:
        for connection in connections:
            connection.close()


def test_each_socket_from_systemd_is_served_by_a_worker_of_its_own():
    # The socket unit lists the address once per worker (ReusePort=yes); here three sockets and a setting of one
    # worker: every socket must still get a worker, or the connections the kernel hands to it would never be answered.
    workdir = short_tempdir()
    state_file = Path(workdir) / "state.json"
    write_state(state_file, fresh_symbols())
    sockets = reuseport_sockets(3)
    port = sockets[0].getsockname()[1]
    try:
        api = start_api(state_file, workdir=workdir, env={"FUNDING_API_WORKERS": "1"}, listen_sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()  # the server holds its own copies
    try:
        assert api.port == port
        assert "event=workers_raised" in api.log() and "sockets=3" in api.log()
        listening = sockets_per_worker(api, "0A")
        assert len(listening) == 3 and set(listening.values()) == {1}, listening
        # Each worker accepts on a different one of the three.
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _: get(api.port, "/funding/BTCUSDT").status, range(90)))
        assert statuses == [200] * 90
        assert "event=start" in api.log() and "3 sockets from systemd" in api.log()
    finally:
        api.close()
