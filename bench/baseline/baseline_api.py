#!/usr/bin/env python3
"""BASELINE FOR BENCHMARKS ONLY: the seed design's HTTP API, not the product.

A faithful re-implementation of "2. HTTP API Server" in
/work/shared/seed/binance-funding-architecture.md: FastAPI under uvicorn (one
process, `pip install fastapi uvicorn`, so h11 and the asyncio loop), serving from
an in-memory copy of the state file that is re-read when it is older than 1 s
(`CACHE_REFRESH_INTERVAL`), with the seed's endpoints and JSON:
GET /, /funding/health, /funding/batch?symbols=A,B and /funding/{symbol}.

Where the document leaves a choice open, the faster one is taken, so the
comparison flatters the baseline rather than our service: handlers are
`async def` (no thread-pool hop) and uvicorn's per-request access log is off.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

import uvicorn
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse

logger = logging.getLogger("baseline_api")

API_PORT = 8888
API_HOST = "127.0.0.1"
STALE_THRESHOLD_SEC = 180
CACHE_REFRESH_INTERVAL = 1.0  # Refresh every second
STATE_FILE = Path(__file__).parent / ".funding_state.json"

# In-memory cache
funding_state_cache: Dict[str, Dict[str, Any]] = {}
connection_status_cache: Dict[str, Any] = {}
cache_updated_at = 0.0
cache_lock = threading.Lock()

app = FastAPI(title="Binance Funding Rate API", version="1.0.0")


def load_state_from_file() -> None:
    """Load funding state from shared JSON file."""
    global funding_state_cache, connection_status_cache, cache_updated_at  # noqa: PLW0603 (the seed's globals)
    with cache_lock:
        try:
            with open(STATE_FILE) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            logger.warning(f"Could not load state file: {e}")
            return
        funding_state_cache = data.get("funding_state", {})
        connection_status_cache = data.get("connection_status", {})
        cache_updated_at = time.time()


def refresh_cache_if_needed() -> None:
    if time.time() - cache_updated_at > CACHE_REFRESH_INTERVAL:
        load_state_from_file()


def get_funding_data(symbol: str) -> Optional[Dict[str, Any]]:
    """Get funding data for a symbol from cache."""
    refresh_cache_if_needed()
    with cache_lock:
        return funding_state_cache.get(symbol)


def format_entry(symbol: str, data: Dict[str, Any], now: float) -> Dict[str, Any]:
    updated_at = data.get("updatedAt") or 0
    return {
        "symbol": symbol,
        "markPrice": data.get("markPrice"),
        "fundingRate": data.get("fundingRate"),
        "nextFundingTime": data.get("nextFundingTime"),
        "indexPrice": data.get("indexPrice"),
        "updatedAt": data.get("updatedAt"),
        "ageSeconds": round(now - updated_at, 2),
    }


@app.get("/")
async def root() -> Dict[str, Any]:
    return {
        "service": "Binance Funding Rate API",
        "version": "1.0.0",
        "endpoints": {
            "/funding/health": "Health check",
            "/funding/{symbol}": "Funding data for one symbol",
            "/funding/batch?symbols=A,B,C": "Funding data for several symbols",
        },
    }


@app.get("/funding/health")
async def health() -> JSONResponse:
    refresh_cache_if_needed()
    with cache_lock:
        state = funding_state_cache
        status = connection_status_cache
    now = time.time()
    ages = [now - rec["updatedAt"] for rec in state.values() if rec.get("updatedAt")]
    oldest = max(ages) if ages else None
    newest = min(ages) if ages else None
    connected = bool(status.get("connected", False))
    last_connected = status.get("last_connected_time")
    healthy = connected and newest is not None and newest <= STALE_THRESHOLD_SEC
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "websocketConnected": connected,
        "symbolCount": len(state),
        "uptimeSeconds": round(now - last_connected, 2) if last_connected else 0,
        "lastConnectedTime": last_connected,
        "messagesReceived": status.get("messages_received", 0),
        "reconnectAttempts": status.get("reconnect_attempts", 0),
        "oldestDataAgeSeconds": round(oldest, 2) if oldest is not None else None,
        "newestDataAgeSeconds": round(newest, 2) if newest is not None else None,
    }
    return JSONResponse(status_code=200 if healthy else 503, content=body)


@app.get("/funding/batch")
async def batch(symbols: str = Query(..., description="Comma-separated symbols")) -> Dict[str, Any]:
    names = [s.strip().upper() for s in symbols.split(",") if s.strip()]
    refresh_cache_if_needed()
    now = time.time()
    data = []
    missing = 0
    with cache_lock:
        for name in names:
            rec = funding_state_cache.get(name)
            if rec is None:
                missing += 1
                continue
            data.append(format_entry(name, rec, now))
    return {"data": data, "found": len(data), "missing": missing, "total": len(names)}


@app.get("/funding/{symbol}")
async def funding(symbol: str) -> Dict[str, Any]:
    symbol = symbol.upper()
    data = get_funding_data(symbol)
    if data is None:
        raise HTTPException(status_code=404, detail=f"Symbol {symbol} not found")
    now = time.time()
    entry = format_entry(symbol, data, now)
    if entry["ageSeconds"] > STALE_THRESHOLD_SEC:
        raise HTTPException(status_code=503, detail=f"Data for {symbol} is stale ({entry['ageSeconds']:.0f}s old)")
    return entry


def main(argv: Optional[list] = None) -> int:
    global STATE_FILE  # noqa: PLW0603
    parser = argparse.ArgumentParser(description="BASELINE (benchmarks only): the seed design's FastAPI server.")
    parser.add_argument("--host", default=API_HOST)
    parser.add_argument("--port", type=int, default=API_PORT)
    parser.add_argument("--state-file", default=str(STATE_FILE))
    parser.add_argument("--access-log", action="store_true", help="log every request, as uvicorn does by default")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    STATE_FILE = Path(args.state_file)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=args.access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
