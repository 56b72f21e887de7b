#!/usr/bin/env python3
"""Stream isolation (issue 15, point 2): /funding/stream clients must not take what answers ordinary requests.

One API (our server, default workers, FUNDING_API_MAX_STREAMS=64) on a state file of N symbols that this
bench rewrites every 50 ms (25 symbols each time, so each symbol changes every 2 s; the new markPrice is
the wall-clock time of the write, so a client knows how old each change is on arrival). Runs, alternated:
  without  wrk at 16 connections on /funding/{symbol}, no stream open
  with     the same wrk run while 64 streams are open: 63 read (in a separate process), one never reads
The figures: request throughput with streams / without (target >= 0.90), the healthy streams'
rewrite-to-event latency p50/p99 (target p99 < 50 ms; timed on every 4th healthy client, all of which get
the same events; the update events each healthy client received show none fell behind), whether the stalled
client was dropped (funding_api_stream_clients_dropped_total), and the stream events sent. Asserts nothing.

    python3 bench/bench_stream.py [--seconds 10] [--rounds 2] [--symbols 1000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = REPO / "roles" / "funding" / "files"
SERVER = PROGRAMS / "funding_api_server.py"
sys.path.insert(0, str(PROGRAMS))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load  # noqa: E402
import funding_state  # noqa: E402
import orjson  # noqa: E402
from bench_procs import free_port, http_get  # noqa: E402

STREAMS = 64
WRK_CONNECTIONS = 16
WRITE_INTERVAL = 0.05
SYMBOLS_PER_WRITE = 25
COALESCE_SECONDS = 1.0
SEND_TIMEOUT_SECONDS = 10.0
TIMED_EVERY = 4
THROUGHPUT_TARGET = 0.90
LATENCY_P99_TARGET_MS = 50.0


def say(text: str) -> None:
    print("[bench-stream %s] %s" % (time.strftime("%H:%M:%S"), text), file=sys.stderr, flush=True)


def metric(port: int, name: str, labels: str = "") -> float:
    _, body = http_get(port, "/metrics", timeout=10)
    prefix = name + ("{%s}" % labels if labels else "") + " "
    for line in body.decode("utf-8").splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


class StateWriter(threading.Thread):
    """Rewrites the state file every WRITE_INTERVAL, as the daemon would, changing SYMBOLS_PER_WRITE symbols."""

    def __init__(self, path: Path, count: int) -> None:
        super().__init__(name="state-writer", daemon=True)
        self.path = path
        now = time.time()
        self.symbols = {
            "SYM%04dUSDT" % i: {
                "fundingRate": ((i % 21) - 10) * 1e-5,
                "markPrice": 1.0 + i,
                "indexPrice": 1.0 + i,
                "nextFundingTime": 1764748800000,
                "updatedAt": now,
                "eventTime": int(now * 1000),
                "fundingIntervalHours": 8,
            }
            for i in range(count)
        }
        self.names = list(self.symbols)
        self.written_at: Dict[float, float] = {}  # markPrice stamp -> when the file with it was in place
        self.stop_event = threading.Event()
        self.write()

    def write(self, stamp: Optional[float] = None) -> None:
        status = funding_state.new_connection_status(connected=True, last_connected_time=time.time() - 60)
        payload = funding_state.build_payload(self.symbols, status, time.time(), os.getpid())
        funding_state.write_state_atomic(str(self.path), payload)
        if stamp is not None:
            # The file is in place (renamed) now: latency counts from here, not from before encoding and fsync.
            self.written_at[stamp] = time.time()

    def run(self) -> None:
        position = 0
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            stamp = time.time()
            for _ in range(SYMBOLS_PER_WRITE):
                name = self.names[position % len(self.names)]
                position += 1
                self.symbols[name] = dict(self.symbols[name], markPrice=stamp, updatedAt=stamp)
            self.write(stamp)
            next_at += WRITE_INTERVAL
            self.stop_event.wait(max(0.0, next_at - time.monotonic()))


def read_streams(port: int, count: int, ready: Any, stop: Any, results: Any) -> None:
    """In its own process: `count` stream clients on one selector. Every client reads everything and counts its update
    events; one in TIMED_EVERY parses them and records (markPrice, arrival time) of every change received once all
    have their snapshot (a changed markPrice is the stamp of the write that carried it). Every client gets the same
    events, and the timed ones are spread over the order in which they connected (the order a worker writes to
    them), so timing a quarter of them measures all; parsing every event of all 63 cost this process (not the API)
    twice the CPU, taken from the API on a 2-core machine."""
    selector = selectors.DefaultSelector()
    buffers: Dict[socket.socket, bytearray] = {}
    timed: Dict[socket.socket, bool] = {}
    updates: Dict[socket.socket, int] = {}
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /funding/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = bytearray()
        timed[sock] = index % TIMED_EVERY == 0
        updates[sock] = 0
    latencies: List[Tuple[float, float]] = []
    snapshots = 0
    closed = 0
    measuring = False
    measure_from = None
    while not stop.is_set():
        if measure_from is None and snapshots >= count:
            # A symbol sent in a snapshot may be held up to a second (one event per symbol per second): time only
            # the changes that follow.
            measure_from = time.monotonic() + COALESCE_SECONDS + 0.5
        if not measuring and measure_from is not None and time.monotonic() >= measure_from:
            ready.set()
        measuring = ready.is_set()
        for key, _ in selector.select(0.2):
            sock = key.fileobj
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                selector.unregister(sock)
                closed += 1
                continue
            arrived = time.time()
            buffer = buffers[sock]
            buffer += chunk
            if not timed[sock] and measuring:
                # Complete events only; what follows the last one stays for the next chunk.
                end = buffer.rfind(b"\n\n")
                if end >= 0:
                    updates[sock] += buffer.count(b"event: update", 0, end)
                    del buffer[: end + 2]
                continue
            while True:
                end = buffer.find(b"\n\n")
                if end < 0:
                    break
                block = bytes(buffer[:end])
                del buffer[: end + 2]
                if b"event: snapshot" in block:
                    snapshots += 1
                elif b"event: update" in block and measuring:
                    updates[sock] += 1
                    if timed[sock]:
                        data = block[block.index(b"data: ") + 6 :]
                        for record in orjson.loads(data)["data"]:
                            latencies.append((record["markPrice"], arrived))
    counts = sorted(updates.values())
    results.put({"latencies": latencies, "snapshots": snapshots, "closed": closed,
                 "timed_clients": sum(timed.values()), "updates_min": counts[0], "updates_max": counts[-1]})


def stalled_stream(port: int) -> socket.socket:
    """A client that asks for the stream and never reads: a 4 KiB receive buffer fills at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /funding/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return sock


def process_tree(pid: int) -> List[int]:
    """pid and its children (the API's workers)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as handle:
                    if int(handle.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def cpu_seconds(pids: List[int]) -> float:
    """User + system CPU seconds of these processes so far."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid, "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def percentile(values: List[float], pct: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100.0 * (len(ordered) - 1))))]


def start_server(state_file: Path, port: int, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNDING_", "NOTIFY_", "WATCHDOG_", "LISTEN_"))}
    env.update({"FUNDING_API_PORT": str(port), "FUNDING_STATE_FILE": str(state_file), "FUNDING_LOG_LEVEL": "WARNING",
                "FUNDING_API_MAX_STREAMS": str(STREAMS)})
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, str(SERVER)], env=env, stdout=log, stderr=subprocess.STDOUT)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            if http_get(port, "/funding/health", timeout=10)[0] == 200:
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the API did not start; log: %s" % log_path)


def run(seconds: float, rounds: int, symbols: int, generator: str) -> Dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    state_file = work / "state.json"
    writer = StateWriter(state_file, symbols)
    port = free_port()
    server = start_server(state_file, port, work / "api.log")
    writer.start()
    path = "/funding/SYM0001USDT"
    without: List[float] = []
    with_streams: List[float] = []
    latencies: List[float] = []
    dropped_before = metric(port, "funding_api_stream_clients_dropped_total", 'reason="slow"')
    events_before = metric(port, "funding_api_stream_events_total", 'event="update"')
    stalled_open = 0.0
    update_counts: List[int] = []
    try:
        bench_load.run_load(generator, port, path, 4, 2.0)  # warm-up
        for round_number in range(rounds):
            server_pids = process_tree(server.pid)
            cpu_before = cpu_seconds(server_pids)
            load = bench_load.run_load(generator, port, path, WRK_CONNECTIONS, seconds)
            server_cpu = (cpu_seconds(server_pids) - cpu_before) / load.seconds
            without.append(load.rps)
            say("round %d without streams: %8.0f req/s  p99 %.2f ms  API CPU %.0f %%" % (
                round_number + 1, load.rps, load.p99_ms, 100 * server_cpu))
            context = multiprocessing.get_context("spawn")
            ready, stop, results = context.Event(), context.Event(), context.Queue()
            stalled = stalled_stream(port)
            reader = context.Process(target=read_streams, args=(port, STREAMS - 1, ready, stop, results))
            reader.start()
            if not ready.wait(60):
                raise RuntimeError("the %d streams did not all get their snapshot" % (STREAMS - 1))
            stalled_open = max(stalled_open, metric(port, "funding_api_streams_open"))
            cpu_before, reader_before = cpu_seconds(server_pids), cpu_seconds([reader.pid])
            load = bench_load.run_load(generator, port, path, WRK_CONNECTIONS, seconds)
            server_cpu = (cpu_seconds(server_pids) - cpu_before) / load.seconds
            reader_cpu = (cpu_seconds([reader.pid]) - reader_before) / load.seconds
            with_streams.append(load.rps)
            stop.set()
            outcome = results.get(timeout=60)
            reader.join(30)
            # The stalled client must be dropped FUNDING_API_STREAM_SEND_TIMEOUT_SECONDS (10) after it fell behind.
            deadline = time.monotonic() + SEND_TIMEOUT_SECONDS + 5
            while time.monotonic() < deadline and metric(
                port, "funding_api_stream_clients_dropped_total", 'reason="slow"'
            ) < dropped_before + round_number + 1:
                time.sleep(0.5)
            stalled.close()
            written_at = writer.written_at
            timed = outcome["latencies"]
            latencies.extend(arrived - written_at[stamp] for stamp, arrived in timed if stamp in written_at)
            update_counts.extend((outcome["updates_min"], outcome["updates_max"]))
            say("round %d with %d streams:   %8.0f req/s  p99 %.2f ms  API CPU %.0f %%, stream readers %.0f %%"
                "  (%d changes timed on %d clients; update events per healthy client %d-%d)"
                % (round_number + 1, STREAMS, load.rps, load.p99_ms, 100 * server_cpu, 100 * reader_cpu,
                   len(outcome["latencies"]), outcome["timed_clients"], outcome["updates_min"],
                   outcome["updates_max"]))
        time.sleep(1.0)
        dropped = metric(port, "funding_api_stream_clients_dropped_total", 'reason="slow"') - dropped_before
        events = metric(port, "funding_api_stream_events_total", 'event="update"') - events_before
    finally:
        writer.stop_event.set()
        server.terminate()
        server.wait(15)
    mean_without = sum(without) / len(without)
    mean_with = sum(with_streams) / len(with_streams)
    latencies_ms = [1000.0 * value for value in latencies]
    return {
        "rps_without_streams": mean_without,
        "rps_with_streams": mean_with,
        "throughput_ratio": mean_with / mean_without if mean_without else None,
        "updates_per_client_min": min(update_counts) if update_counts else 0,
        "updates_per_client_max": max(update_counts) if update_counts else 0,
        "latency_p50_ms": percentile(latencies_ms, 50),
        "latency_p99_ms": percentile(latencies_ms, 99),
        "latency_max_ms": max(latencies_ms) if latencies_ms else None,
        "changes_timed": len(latencies_ms),
        "streams_open": stalled_open,
        "stalled_clients_dropped": dropped,
        "update_events_sent": events,
        "rounds": rounds,
        "seconds": seconds,
        "symbols": symbols,
    }


def table(result: Dict[str, Any]) -> List[str]:
    """Markdown rows for bench/run.py's report (and this script's own output)."""

    def fmt(value: Optional[float], digits: int = 1) -> str:
        return "n/a" if value is None else "%.*f" % (digits, value)

    ratio, p99 = result["throughput_ratio"], result["latency_p99_ms"]
    return [
        "| Stream isolation (%d streams, 1 never reading; wrk c=%d, %d x %g s) | measured | target | met |"
        % (STREAMS, WRK_CONNECTIONS, result["rounds"], result["seconds"]),
        "|---|---|---|---|",
        "| /funding/{symbol} req/s without streams | %s | | |" % fmt(result["rps_without_streams"], 0),
        "| /funding/{symbol} req/s with streams | %s | | |" % fmt(result["rps_with_streams"], 0),
        "| throughput with / without | %s | >= %.2f | %s |"
        % (fmt(ratio, 3), THROUGHPUT_TARGET, "yes" if ratio is not None and ratio >= THROUGHPUT_TARGET else "NO"),
        "| rewrite-to-event latency p50 / p99 / max (ms) | %s / %s / %s | p99 < %g | %s |"
        % (fmt(result["latency_p50_ms"]), fmt(p99), fmt(result["latency_max_ms"]), LATENCY_P99_TARGET_MS,
           "yes" if p99 is not None and p99 < LATENCY_P99_TARGET_MS else "NO"),
        "| streams open during the run / stalled clients dropped | %d / %d | 64 / %d | %s |"
        % (result["streams_open"], result["stalled_clients_dropped"], result["rounds"],
           "yes" if result["stalled_clients_dropped"] >= result["rounds"] else "NO"),
        "| changes timed / update events sent | %d / %d | | |"
        % (result["changes_timed"], result["update_events_sent"]),
        "| update events per healthy client and round, fewest / most | %d / %d | | |"
        % (result["updates_per_client_min"], result["updates_per_client_max"]),
    ]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_STREAM_SECONDS", "10")),
                        help="length of one wrk run [BENCH_STREAM_SECONDS, 10]")
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_STREAM_ROUNDS", "2")),
                        help="without/with pairs [BENCH_STREAM_ROUNDS, 2]")
    parser.add_argument("--symbols", type=int, default=int(os.environ.get("BENCH_SYMBOLS", "1000")),
                        help="symbols in the state file [BENCH_SYMBOLS, 1000]")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default="wrk" if bench_load.wrk_available() is None
                        else "python")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.rounds, args.symbols, args.loadgen)
    print("\n".join(table(result)))
    print(json.dumps(result, indent=2, sort_keys=True), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
