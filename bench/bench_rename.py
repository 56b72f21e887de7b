"""The API's own freshness: from the rename of a new state file to the first answer that shows it.

A writer replaces a 1 000-symbol state file (atomically, as the daemon does) every
`interval` seconds with a new markPrice for one marker symbol, and notes the time
right after the rename. Pollers ask the API for that symbol back to back on
keep-alive connections (one per poller; with several workers they land on
different ones) and note when each answer arrived. Each poller's first answer
carrying a write's price, minus the write's rename time, is one sample: the time
that worker took to serve the new file. A poll takes well under a millisecond, which
bounds the sampling error. Memory of the API's processes is sampled meanwhile.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

_PROGRAMS = Path(__file__).resolve().parent.parent / "roles" / "funding" / "files"
if str(_PROGRAMS) not in sys.path:
    sys.path.insert(0, str(_PROGRAMS))

import funding_state  # noqa: E402

MARKER = "RENAMEUSDT"


def state_payload(symbols: int, price: float) -> Dict:
    now = time.time()
    records = {
        ("SYM%04dUSDT" % i): {"fundingRate": 0.0001, "markPrice": 100.0 + i, "indexPrice": 100.5 + i,
                              "nextFundingTime": 1764748800000, "updatedAt": now, "eventTime": int(now * 1000),
                              "fundingIntervalHours": 8}
        for i in range(symbols - 1)
    }
    records[MARKER] = {"fundingRate": 0.0001, "markPrice": price, "indexPrice": price, "nextFundingTime": 1764748800000,
                       "updatedAt": now, "eventTime": int(now * 1000), "fundingIntervalHours": 8}
    status = funding_state.new_connection_status(connected=True, last_connected_time=now - 60, messages_received=1)
    return funding_state.build_payload(records, status, now, 1)


def write_generation(path: Path, symbols: int, generation: int) -> float:
    """Write generation `generation` (markPrice of the marker = generation); the time right after its rename."""
    funding_state.write_state_atomic(str(path), state_payload(symbols, float(generation)))
    return time.time()


class Poller(threading.Thread):
    """Asks for the marker symbol back to back on one keep-alive connection; keeps (arrival time, markPrice)."""

    def __init__(self, port: int) -> None:
        super().__init__(name="rename-poller-%d" % port, daemon=True)
        self.port = port
        self.answers: List[Tuple[float, float]] = []
        self.failures = 0
        self.halt = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        path = "/funding/" + MARKER
        while not self.halt.wait(0.0005):  # a poll every ~0.7 ms: the sampling error, without saturating a core
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                arrived = time.time()
                if response.status == 200:
                    self.answers.append((arrived, json.loads(body)["markPrice"]))
            except (OSError, http.client.HTTPException, ValueError):
                self.failures += 1
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        connection.close()


@dataclass
class RenameResult:
    samples_ms: List[float]
    writes: int
    unseen: int
    failures: int


def measure(port: int, path: Path, symbols: int, seconds: float, interval: float = 0.1,
            pollers: int = 2) -> RenameResult:
    """Requires an API already serving `path` (written with generation 0)."""
    threads = [Poller(port) for _ in range(pollers)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    renamed: Dict[int, float] = {}
    generation = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        generation += 1
        renamed[generation] = write_generation(path, symbols, generation)
        time.sleep(interval)
    time.sleep(0.5)
    for thread in threads:
        thread.halt.set()
    for thread in threads:
        thread.join(10)
    samples: List[float] = []
    unseen = 0
    for thread in threads:
        first_seen: Dict[int, float] = {}
        for arrived, price in thread.answers:
            seen = int(price)
            if seen in renamed and seen not in first_seen:
                first_seen[seen] = arrived
        for number, at in renamed.items():
            if number in first_seen:
                # A later generation seen first means this one was superseded: its first sighting is that one's.
                samples.append(max(0.0, first_seen[number] - at) * 1000.0)
            else:
                unseen += 1
    return RenameResult(samples, len(renamed), unseen, sum(t.failures for t in threads))
