"""The API under concurrent use: slow clients do not hold others up, a busy writer never tears a response."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import (
    HTTP_TIMEOUT,
    api,  # noqa: F401  (module fixture)
    api_workdir,  # noqa: F401  (module fixture)
    fresh_symbols,
    record,
    write_state,
)

HALF_REQUEST = b"GET /funding/BTCUSDT HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # the blank line never comes


def fetch(connection, target):
    connection.request("GET", target)
    response = connection.getresponse()
    return response.status, response.getheader("Content-Type"), response.read()


def test_300_clients_holding_half_sent_requests_do_not_delay_others(api):  # noqa: F811
    write_state(api.state_file, fresh_symbols())
    stalled = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", api.port), timeout=HTTP_TIMEOUT)
            sock.sendall(HALF_REQUEST)
            stalled.append(sock)
        latencies = []
        errors = []

        def client():
            try:
                connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=HTTP_TIMEOUT)
                for _ in range(10):
                    started = time.monotonic()
                    status = fetch(connection, "/funding/BTCUSDT")[0]
                    latencies.append((time.monotonic() - started, status))
                connection.close()
            except Exception as exc:  # recorded, asserted below
                errors.append(repr(exc))

        threads = [threading.Thread(target=client) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert [status for _, status in latencies] == [200] * 200
        # Nothing waited for the stalled ones (which hold their sockets for FUNDING_API_HEADER_TIMEOUT, 30 s): the
        # issue's bound is 50 ms for the other clients; the median is asserted, the slowest is only kept under 1 s
        # so that a loaded test machine cannot fail it.
        ordered = sorted(latency for latency, _ in latencies)
        assert ordered[len(ordered) // 2] < 0.05, ordered[-10:]
        assert ordered[-1] < 1.0, ordered[-10:]
        # The stalled clients are still waiting (nothing was answered for them) ...
        for sock in stalled:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.setblocking(True)
        # ... and one of them is answered as soon as it finishes its request.
        stalled[0].sendall(b"Connection: close\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = stalled[0].recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        for sock in stalled:
            sock.close()


def generation_state(generation, symbols):
    now = time.time()
    return {
        name: record(now, age=0.0, rate=generation * 1e-7, price=float(generation), generation=generation)
        for name in symbols
    }


def test_a_file_rewritten_100_times_a_second_never_yields_an_invalid_response(api):  # noqa: F811
    symbols = ["G%03dUSDT" % i for i in range(200)]
    write_state(api.state_file, generation_state(0, symbols))
    # Requests that arrive while another one parses a new file are served the view before it ("at most one write
    # old"), so start once generation 0 is what the API serves.
    deadline = time.monotonic() + 10
    while api.get("/funding/G000USDT").status != 200:
        assert time.monotonic() < deadline, "the API never served generation 0"
        time.sleep(0.01)
    writes_wanted = 300
    stop = threading.Event()
    writer_done = threading.Event()
    problems = []
    seen_generations = set()
    responses = [0]
    lock = threading.Lock()

    def writer():
        try:
            start = time.monotonic()
            for generation in range(1, writes_wanted + 1):
                if stop.is_set():
                    break
                write_state(api.state_file, generation_state(generation, symbols), messages_received=generation)
                # Pace to 100 writes per second (slower if the disk is slower; never faster).
                delay = start + generation / 100.0 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        except Exception as exc:
            problems.append("writer: %r" % exc)
        finally:
            writer_done.set()

    def check_records(records, last):
        generations = {int(r["markPrice"]) for r in records}
        if len(generations) != 1:
            raise AssertionError("records from different writes in one response: %s" % sorted(generations))
        (generation,) = generations
        for r in records:
            if r["indexPrice"] != r["markPrice"] + 0.5 or r["fundingRate"] != generation * 1e-7:
                raise AssertionError("fields of one record from different writes: %r" % r)
        if generation < last:
            raise AssertionError("went back from generation %d to %d" % (last, generation))
        return generation

    def reader(index):
        connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=HTTP_TIMEOUT)
        last = 0
        targets = [
            "/funding/G%03dUSDT" % index,
            "/funding/batch?symbols=" + ",".join(symbols[:20]),
            "/funding?limit=50",
            "/funding/health",
            "/metrics",
        ]
        step = 0
        try:
            while not writer_done.is_set() and not stop.is_set():
                target = targets[step % len(targets)]
                step += 1
                status, content_type, body = fetch(connection, target)
                if status != 200:
                    raise AssertionError("%s answered %d: %r" % (target, status, body[:300]))
                if target == "/metrics":
                    list(text_string_to_metric_families(body.decode("utf-8")))
                    continue
                if content_type != "application/json":
                    raise AssertionError("%s content type %s" % (target, content_type))
                parsed = json.loads(body)
                if target == "/funding/health":
                    if parsed["status"] != "healthy" or parsed["symbolCount"] != 200:
                        raise AssertionError("health: %r" % parsed)
                    continue
                records = parsed["data"] if "data" in parsed else [parsed]
                last = check_records(records, last)
                with lock:
                    seen_generations.add(last)
                    responses[0] += 1
        except Exception as exc:
            problems.append("reader %d: %r" % (index, exc))
            stop.set()
        finally:
            connection.close()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    assert not any(t.is_alive() for t in threads)
    assert not problems, problems[:5]
    # The readers really overlapped the writes: they saw many different files.
    assert responses[0] >= 50
    assert len(seen_generations) >= 10, sorted(seen_generations)
