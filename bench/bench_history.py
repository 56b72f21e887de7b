#!/usr/bin/env python3
"""make bench (history part): the settlement history's queries and size, against asking (simulated) Binance REST.

Builds (once, cached in .cache/bench/) a history database of SYMBOLS x SETTLEMENTS rows written by the product's own
writer (funding_history.HistoryWriter, 1 h apart, REST rows), then measures, with the product's read-only reader
and the API's own handler code (funding_api_history: query + JSON encoding, no HTTP):

  symbol   GET /funding/{symbol}/history?limit=1000 for a random symbol: p50/p99 of query + JSON
  at       GET /funding/history?at=<t> for a random settlement of every symbol: p50/p99
  size     database bytes per row, and per symbol-year at 1 h (8 760 settlements) and 8 h (1 095)

The baseline, measured in the same run, is what a consumer does without this service: the same question asked of
GET /fapi/v1/fundingRate (symbol=, limit=1000; startTime=t without symbol) on the simulated exchange over loopback
(real Binance adds its network round trip and spends the shared 500 / 5 min budget on every call). Prints a
Markdown table with the ratios and writes bench/results/history.md and history.json. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List

REPO = Path(__file__).resolve().parents[1]
for sub in ("roles/funding/files", "tests", "roles/binance_simulator/files"):
    if str(REPO / sub) not in sys.path:
        sys.path.insert(0, str(REPO / sub))

import funding_api_history  # noqa: E402
import funding_history  # noqa: E402
from funding_history import HistoryReader, HistoryWriter  # noqa: E402
from sim_client import start_simulator  # noqa: E402

HOUR_MS = 3_600_000
START_MS = 1_700_000_000_000 // HOUR_MS * HOUR_MS
RESULTS = REPO / "bench" / "results"
CACHE = REPO / ".cache" / "bench"


def env(name: str, default: str) -> str:
    return os.environ.get("BENCH_HISTORY_" + name, default)


def parse_args(argv: Any = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/bench_history.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=int(env("SYMBOLS", "700")))
    parser.add_argument("--settlements", type=int, default=int(env("SETTLEMENTS", "10000")))
    parser.add_argument("--queries", type=int, default=int(env("QUERIES", "300")))
    parser.add_argument("--db", default=env("DB", ""), help="database path (default: cached under .cache/bench)")
    parser.add_argument("--out", default=env("OUT", str(RESULTS)))
    return parser.parse_args(argv)


def symbol_name(index: int) -> str:
    return "S%04dUSDT" % index


def build(path: Path, symbols: int, settlements: int) -> float:
    """Write the database with the product's writer; seconds it took."""
    started = time.perf_counter()
    rng = random.Random(14)
    tmp = path.with_suffix(".building")
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    with HistoryWriter(str(tmp)) as writer:
        for index in range(symbols):
            name = symbol_name(index)
            price = 10 ** rng.uniform(-3, 4)
            rows = [funding_history.Settlement(name, START_MS + i * HOUR_MS, round(rng.gauss(0.0001, 0.0002), 8),
                                               round(price * (1 + rng.gauss(0, 0.01)), 4), "rest")
                    for i in range(settlements)]
            writer.add_rest(rows, START_MS)
        writer.set_meta({"rest_cursor_ms": START_MS + settlements * HOUR_MS})
        writer.checkpoint()
    for suffix in ("-wal", "-shm", ".lock"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    tmp.rename(path)
    return time.perf_counter() - started


def percentiles(samples: List[float]) -> Dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50_ms": at(0.50) * 1000, "p99_ms": at(0.99) * 1000, "n": len(ordered)}


def timed(action: Callable[[], Any], count: int) -> Dict[str, float]:
    action()  # warm: page cache, connection
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def error_body(status: int, error: str, detail: str, **extra: Any) -> bytes:
    return json.dumps({"error": error, "detail": detail, "status": status, **extra}).encode()


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def main(argv: Any = None) -> int:
    args = parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    db = Path(args.db) if args.db else CACHE / ("history-%dx%d-v%d.sqlite3" % (
        args.symbols, args.settlements, funding_history.SCHEMA_VERSION))
    build_seconds = None
    if not db.exists():
        print("building %s (%d symbols x %d settlements) ..." % (db, args.symbols, args.settlements), flush=True)
        build_seconds = build(db, args.symbols, args.settlements)
    reader = HistoryReader(str(db))
    rows = args.symbols * args.settlements
    rng = random.Random(1)

    def one_symbol() -> bytes:
        name = symbol_name(rng.randrange(args.symbols))
        reply = funding_api_history.symbol_history(reader, name, {"limit": "1000"}, served_live=True,
                                                   delisted=False, accept="", error_body=error_body)
        assert reply.status == 200 and reply.body.count(b'"fundingTime"') == min(1000, args.settlements)
        return reply.body

    def at_time() -> bytes:
        t = START_MS + rng.randrange(args.settlements) * HOUR_MS
        reply = funding_api_history.history_at(reader, {"at": str(t)}, "", error_body)
        assert reply.status == 200 and reply.body.count(b'"symbol"') == args.symbols
        return reply.body

    ours = {"symbol": timed(one_symbol, args.queries), "at": timed(at_time, args.queries)}

    # Baseline: the same questions to (simulated) Binance REST over loopback.
    with start_simulator(["--funding-history-hours", "1000"]) as sim:
        base_url = sim.client.rest_url
        symbols = sim.client.symbols()
        hourly = [s for s, v in symbols.items() if v.get("perpetual") and v.get("fundingIntervalHours") == 1]
        funding = sim.client.funding()
        last = funding["lastFundingTime"]
        eight_hour_boundary = (last // (8 * HOUR_MS)) * 8 * HOUR_MS
        baseline = {
            "symbol": timed(lambda: fetch("%s/fapi/v1/fundingRate?symbol=%s&limit=1000" % (
                base_url, rng.choice(hourly))), min(args.queries, 100)),
            "at": timed(lambda: fetch("%s/fapi/v1/fundingRate?startTime=%d&endTime=%d&limit=1000" % (
                base_url, eight_hour_boundary, eight_hour_boundary + 1000)), min(args.queries, 100)),
        }
        at_rows = len(json.loads(fetch("%s/fapi/v1/fundingRate?startTime=%d&endTime=%d&limit=1000" % (
            base_url, eight_hour_boundary, eight_hour_boundary + 1000))))

    size = db.stat().st_size
    per_row = size / rows
    result = {
        "database": str(db), "symbols": args.symbols, "settlements_per_symbol": args.settlements, "rows": rows,
        "build_seconds": build_seconds, "bytes": size, "bytes_per_row": per_row,
        "mb_per_symbol_year_1h": per_row * 8760 / 1e6, "mb_per_symbol_year_8h": per_row * 1095 / 1e6,
        "ours": ours, "baseline_rest_loopback": baseline, "baseline_at_rows": at_rows,
    }
    lines = [
        "## Settlement history (%d symbols x %d settlements = %d rows, %.0f MB)" % (
            args.symbols, args.settlements, rows, size / 1e6),
        "",
        "| query | ours p50 | ours p99 | REST (simulated, loopback) p99 | p99 ratio ours / REST |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("symbol", "one symbol x 1000 rows (`/funding/{symbol}/history?limit=1000`)"),
                       ("at", "%d symbols at one time (`/funding/history?at=`); REST: %d rows" % (
                           args.symbols, at_rows))):
        lines.append("| %s | %.2f ms | %.2f ms | %.2f ms | %.2f |" % (
            label, ours[key]["p50_ms"], ours[key]["p99_ms"], baseline[key]["p99_ms"],
            ours[key]["p99_ms"] / baseline[key]["p99_ms"]))
    lines += [
        "",
        "Size: %.1f bytes per settlement; %.2f MB per symbol-year at 1 h (8 760 settlements), %.2f MB at 8 h "
        "(1 095)." % (per_row, result["mb_per_symbol_year_1h"], result["mb_per_symbol_year_8h"]),
        "Query times include the API handler's JSON encoding, not HTTP; REST times are the simulated exchange over "
        "loopback (real Binance adds its round trip and spends the 500 / 5 min budget per call).",
    ]
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.md").write_text(table + "\n")
    (out / "history.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
