#!/usr/bin/env python3
"""A hostile exchange for the fuzz case: serves nothing but poisoned and malformed mark-price frames.

Runs inside the box in place of the simulator (same address, the simulator's virtualenv python and its fault
catalogue from /opt/binance-simulator). Every connection on the daemon's stream path receives frames from one
seeded sequence until --frames have been sent in total; other connections get nothing. No frame carries a single
item a correct daemon may store: each item is invalid in at least one way (or the whole frame is), and every
poisoned item names a real symbol with an eventTime newer than anything stored, so storing it would show.

Kinds: the simulator's malformed catalogue (truncated JSON, not JSON, wrong shapes, NaN, binary junk, empty, deeply
nested), its poisoned arrays (24hrTicker items, NaN/Infinity/negative/zero/huge/typed-wrong prices, rates and
times, missing or bad symbols, nested lists), seeded mutations of a real-looking frame (one breaker per item),
truncated frames, frames that are not UTF-8, another stream's frames, and a few frames above 1 MB.

Progress goes to --status (JSON, rewritten atomically) so the test can wait for the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from typing import Any, Dict, List, Tuple, Union

sys.path.insert(0, "/opt/binance-simulator")
from binance_sim_faults import malformed_frames, oversized_frame, poisoned_items  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

STREAM = "!markPrice@arr"
Frame = Tuple[str, Union[str, bytes], bool]  # kind, payload, send bytes as a text frame

# Each breaker makes one item invalid; the value of `p` stays a plausible "1.00000000" unless the breaker is `p`.
BREAKERS: List[Tuple[str, Any]] = [
    ("p", "NaN"), ("p", "nan"), ("p", "+inf"), ("p", "-1.5"), ("p", "0"), ("p", "1e999"), ("p", ""),
    ("p", "0x10"), ("p", " 1.5"), ("p", "1,5"), ("p", "1_000"), ("p", "\u0661\u0662\u0663"), ("p", "1" * 80),
    ("p", None), ("p", [1.5]), ("p", {"v": 1.5}), ("p", True), ("p", "1e13"),
    ("e", None), ("e", "markpriceupdate"), ("e", "markPriceUpdate "), ("e", "24hrTicker"), ("e", 1),
    ("s", None), ("s", ""), ("s", "btcusdt"), ("s", "BTC USDT"), ("s", "BTCUSDT\u0000"),
    ("s", "\u0412\u0422\u0421USDT"), ("s", "X" * 41), ("s", 42), ("s", ["BTCUSDT"]),
    ("E", None), ("E", "soon"), ("E", -1), ("E", 1.5), ("E", "12a"), ("E", 10**16),
    ("r", "NaN"), ("r", "2.5"), ("r", "-3"), ("r", [0.0001]),
    ("T", "later"), ("T", -5), ("T", 1.5), ("T", [1]),
    ("i", "NaN"), ("i", "-1"), ("i", {"x": 1}),
]


class FrameSource:
    def __init__(self, seed: int, symbols: List[str], total: int, oversized: int) -> None:
        self.rng = random.Random(seed)
        self.symbols = symbols or ["BTCUSDT"]
        self.total = total
        self.oversized_every = max(1, total // max(1, oversized)) if oversized else 0
        self.sent = 0
        self.by_kind: Dict[str, int] = {}

    def _item(self, event_ms: int) -> Dict[str, Any]:
        symbol = self.rng.choice(self.symbols)
        item: Dict[str, Any] = {"e": "markPriceUpdate", "E": event_ms, "s": symbol, "p": "1.00000000",
                                "P": "1.00000000", "i": "1.00000000", "r": "0.00010000", "T": event_ms + 3_600_000}
        if self.rng.random() < 0.1:
            del item[self.rng.choice(("e", "s", "p", "E"))]  # a required key missing (a missing `i` is fine)
        else:
            key, value = self.rng.choice(BREAKERS)
            item[key] = value
        return item

    def _combined(self, data: Any) -> str:
        return json.dumps({"stream": STREAM, "data": data}, separators=(",", ":"))

    def next_frames(self) -> List[Frame]:
        """A few frames of one kind; the caller stops at the total."""
        counter = self.sent
        event_ms = int(time.time() * 1000)
        if self.oversized_every and counter % self.oversized_every == self.oversized_every - 1:
            return [("oversized", oversized_frame(True, STREAM, event_ms), False)]
        choice = self.rng.random()
        if choice < 0.25:
            return [("malformed", frame, False) for frame in malformed_frames(counter, True, STREAM)]
        if choice < 0.5:
            victims = self.rng.sample(self.symbols, min(40, len(self.symbols)))
            return [("poisoned", self._combined(poisoned_items(victims, event_ms, counter)), False)]
        if choice < 0.8:
            items = [self._item(event_ms) for _ in range(self.rng.randint(1, 30))]
            return [("mutated", self._combined(items), False)]
        text = self._combined([{"e": "markPriceUpdate", "E": event_ms, "s": s, "p": "1.00000000",
                                 "i": "1.00000000", "r": "0.00010000", "T": event_ms + 3_600_000}
                                for s in self.rng.sample(self.symbols, min(10, len(self.symbols)))])
        if choice < 0.88:  # a proper prefix of a JSON document is never valid JSON
            return [("truncated", text[: self.rng.randint(1, len(text) - 1)], False)]
        if choice < 0.94:  # valid items inside text that is not UTF-8
            raw = bytearray(text.encode())
            raw.insert(self.rng.randint(1, len(raw) - 1), self.rng.choice((0xFF, 0xC0, 0xFE, 0x80)))
            return [("not_utf8", bytes(raw), True)]
        # Another stream's frame (the seed's bug): a 24hrTicker's `p` is a price change.
        tickers = [{"e": "24hrTicker", "E": event_ms, "s": s, "p": "-1234.50000000", "c": "1.00000000"}
                   for s in self.rng.sample(self.symbols, min(10, len(self.symbols)))]
        return [("other_stream", json.dumps({"stream": "!ticker@arr", "data": tickers}), False)]


def write_status(path: str, status: Dict[str, Any]) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(status, handle)
    os.replace(path + ".tmp", path)


async def main_async(args: argparse.Namespace) -> None:
    with open(args.state_file, encoding="utf-8") as handle:
        symbols = sorted(json.load(handle)["funding_state"])
    source = FrameSource(args.seed, symbols, args.frames, args.oversized)
    status: Dict[str, Any] = {"frames": args.frames, "sent": 0, "done": False, "connections": 0,
                              "daemonConnections": 0, "byKind": source.by_kind, "startedAt": time.time()}

    async def handler(connection: Any) -> None:
        status["connections"] += 1
        path = connection.request.path if connection.request is not None else ""
        if path != args.daemon_path:
            await connection.wait_closed()
            return
        status["daemonConnections"] += 1
        try:
            while source.sent < source.total:
                for kind, payload, as_text in source.next_frames():
                    if source.sent >= source.total:
                        break
                    await connection.send(payload, text=True) if as_text else await connection.send(payload)
                    source.sent += 1
                    source.by_kind[kind] = source.by_kind.get(kind, 0) + 1
                status["sent"] = source.sent
                if source.sent % 200 == 0:
                    write_status(args.status, status)
        except ConnectionClosed:
            status["closedByClient"] = status.get("closedByClient", 0) + 1
            return
        status.update(sent=source.sent, done=True, finishedAt=time.time())
        write_status(args.status, status)
        await connection.wait_closed()

    async with serve(handler, args.host, args.port, compression=None, max_size=2**20, ping_interval=None):
        write_status(args.status, status)
        await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--oversized", type=int, default=20, help="how many of the frames are above 1 MB")
    parser.add_argument("--seed", type=int, default=20260407)
    parser.add_argument("--daemon-path", default="/market/stream?streams=!markPrice@arr")
    parser.add_argument("--state-file", default="/var/lib/binance-funding/.funding_state.json")
    parser.add_argument("--status", required=True)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
