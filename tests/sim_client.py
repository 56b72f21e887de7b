"""Client and launcher for the simulated exchange (roles/binance_simulator/), standard library only.

Usable from pytest, Molecule's testinfra and benchmarks:

    with start_simulator(["--push-interval", "0.2"]) as sim:
        client = sim.client
        client.set_fault("stall")
        ...

    process, client = start_simulator()   # also unpacks; call stop_simulator(process) when done
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SIMULATOR_SCRIPT = REPO / "roles" / "binance_simulator" / "files" / "binance_simulator.py"
MARK_PRICE_STREAM = "!markPrice@arr"
FAST_MARK_PRICE_STREAM = "!markPrice@arr@1s"
STARTUP_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 5.0

# Fast settings for tests: pushes every 0.2 s (@1s: 0.1 s), pings every 5 s.
FAST_ARGS = ("--push-interval", "0.2", "--fast-push-interval", "0.1", "--ping-interval", "5")


class SimulatorError(RuntimeError):
    """The simulator answered a control request with an error, or could not be started."""


class SimulatorClient:
    """Talks to one running simulator over plain HTTP (urllib)."""

    def __init__(self, base_http_url: str, timeout: float = 5.0, log_path: Optional[Path] = None) -> None:
        self.base_http_url = base_http_url.rstrip("/")
        self.timeout = timeout
        self.log_path = log_path
        parts = urllib.parse.urlsplit(self.base_http_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.ws_base = "ws://" + parts.netloc

    def __repr__(self) -> str:
        return f"SimulatorClient({self.base_http_url!r})"

    # --- URLs ---

    def ws_url(self, kind: str = "stream", fast: bool = False) -> str:
        """kind: "stream" (combined frames), "ws" (raw arrays), "legacy-stream" or "legacy-ws" (silent paths)."""
        stream = FAST_MARK_PRICE_STREAM if fast else MARK_PRICE_STREAM
        paths = {
            "stream": f"/market/stream?streams={stream}",
            "ws": f"/market/ws/{stream}",
            "legacy-stream": f"/stream?streams={stream}",
            "legacy-ws": f"/ws/{stream}",
        }
        if kind not in paths:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(paths)}")
        return self.ws_base + paths[kind]

    def symbol_stream_url(self, symbols: Sequence[str], fast: bool = True, kind: str = "stream") -> str:
        """Per-symbol mark price streams in the URL: kind "stream" (combined) or "ws" (one symbol, raw)."""
        names = [symbol.lower() + ("@markPrice@1s" if fast else "@markPrice") for symbol in symbols]
        if kind == "ws":
            if len(names) != 1:
                raise ValueError("a raw /market/ws/ URL carries one stream")
            return self.ws_base + "/market/ws/" + names[0]
        return self.ws_base + "/market/stream?streams=" + "/".join(names)

    @property
    def rest_url(self) -> str:
        """Base URL for REST: append "/fapi/v1/premiumIndex" etc. (like https://fapi.binance.com)."""
        return self.base_http_url

    # --- HTTP ---

    def request(self, method: str, path: str, body: Optional[Mapping[str, Any]] = None) -> tuple:
        """(status, headers, body bytes) for any path; never raises on HTTP error statuses."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_http_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), error.read()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request("GET", path)
        if status != 200:
            raise SimulatorError(f"GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def _control(self, path: str, body: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        status, _, raw = self.request("POST", path, body if body is not None else {})
        if status != 200:
            raise SimulatorError(f"POST {path}: HTTP {status}: {raw[:300]!r}")
        return json.loads(raw)

    # --- control API ---

    def set_fault(self, name: str, **params: Any) -> Dict[str, Any]:
        """Turn a fault on (`on=False` turns a switch off). E.g. set_fault("rest_skew", percent=5)."""
        return self._control("/_sim/fault", {"fault": name, **params})

    def clear_fault(self, name: str) -> Dict[str, Any]:
        return self.set_fault(name, on=False)

    def clear(self) -> Dict[str, Any]:
        return self._control("/_sim/clear")

    def funding(self, symbol: Optional[str] = None) -> Dict[str, Any]:
        """Settlements: ledger size, interval switches, fundingRate/fundingInfo requests, the shared bucket; with
        `symbol`, that symbol's settled rows ({fundingTime, fundingRate, markPrice} as Binance sends them)."""
        return self.get_json("/_sim/funding" + (f"?symbol={symbol}" if symbol else ""))

    def status(self) -> Dict[str, Any]:
        return self.get_json("/_sim/status")

    def symbols(self, include_coin_m: bool = False) -> Dict[str, Dict[str, Any]]:
        """Values last pushed per contract of exchangeInfo, as numbers (fundingRate None when a row carries no
        funding: dated, SETTLING, PENDING_TRADING); `include_coin_m` adds the COIN-M rows the array also carries."""
        return self.get_json("/_sim/symbols" + ("?all=1" if include_coin_m else ""))

    def perpetuals(self) -> Dict[str, Dict[str, Any]]:
        """Every TRADING perpetual of exchangeInfo, TradFi included: what a client must serve."""
        return {symbol: values for symbol, values in self.symbols().items() if values["perpetual"]}

    def array_perpetuals(self) -> Dict[str, Dict[str, Any]]:
        """The TRADING perpetuals that !markPrice@arr carries (no TradFi): all a client without per-symbol
        streams can serve."""
        return {symbol: values for symbol, values in self.symbols().items()
                if values["perpetual"] and values["onArray"]}

    def universe(self) -> Dict[str, Any]:
        """Lists (tradingPerpetuals, tradfi, arraySymbols, arrayPerpetuals, notOnArray, settling, pendingTrading,
        dated, coinM), their counts, and the listings/delistings made at run time."""
        return self.get_json("/_sim/universe")

    def connections(self, names: bool = False) -> Dict[str, Any]:
        """Open and recently closed WebSocket connections with their counters, and the global `limits`."""
        return self.get_json("/_sim/connections" + ("?names=1" if names else ""))

    def limits(self) -> Dict[str, Any]:
        """Counters of Binance's connection rules: peaks of messages per second, 1008 closes, refused SUBSCRIBEs."""
        return self.status()["limits"]

    def reset_counters(self) -> Dict[str, Any]:
        return self._control("/_sim/counters/reset")

    def list_symbol(self, symbol: str = "", contract_type: str = "PERPETUAL", underlying_type: str = "",
                    **params: Any) -> Dict[str, Any]:
        """A new TRADING contract at once (exchangeInfo and its streams); returns the action (with the symbol)."""
        return self.set_fault("list", symbol=symbol, contractType=contract_type, underlyingType=underlying_type,
                              **params)["action"]

    def delist_symbol(self, symbol: str, rows: str = "no_funding") -> Dict[str, Any]:
        """TRADING -> SETTLING; rows="no_funding" keeps its rows flowing without funding, "stop" ends them."""
        return self.set_fault("delist", symbol=symbol, rows=rows)["action"]

    # --- REST helpers ---

    def ping(self) -> bool:
        try:
            status, _, body = self.request("GET", "/fapi/v1/ping")
        except OSError:
            return False
        return status == 200 and body.strip() == b"{}"

    def premium_index(self, symbol: Optional[str] = None) -> Any:
        query = "?" + urllib.parse.urlencode({"symbol": symbol}) if symbol is not None else ""
        return self.get_json("/fapi/v1/premiumIndex" + query)

    def funding_info(self) -> Any:
        return self.get_json("/fapi/v1/fundingInfo")

    def exchange_info(self) -> Any:
        return self.get_json("/fapi/v1/exchangeInfo")

    # --- waiting ---

    def wait_for_pushes(self, count: int = 2, fast: bool = False, timeout: float = 30.0) -> Dict[str, Any]:
        """Block until `count` more pushes of one speed have been made (subscribers or not)."""
        speed = "fast" if fast else "slow"
        target = self.status()["pushes"][speed] + count
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status["pushes"][speed] >= target:
                return status
            if time.monotonic() > deadline:
                raise SimulatorError(f"fewer than {count} {speed} pushes within {timeout} s")
            time.sleep(0.05)

    def log_text(self) -> str:
        """What the simulator has written to stderr so far (when started by start_simulator)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class RunningSimulator:
    """A simulator subprocess. Unpacks as (process, client); a context manager that stops it on exit."""

    def __init__(self, process: subprocess.Popen, client: SimulatorClient, log_path: Path, owns_log: bool) -> None:
        self.process = process
        self.client = client
        self.log_path = log_path
        self.port = client.port
        self._owns_log = owns_log

    def __iter__(self) -> Iterator[Any]:
        return iter((self.process, self.client))

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> Optional[int]:
        """SIGTERM, then SIGKILL after `timeout` s. Returns the exit code."""
        code = stop_simulator(self.process, timeout)
        if self._owns_log:
            try:
                self.log_path.unlink()
            except OSError:
                pass
        return code


def stop_simulator(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS) -> Optional[int]:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode


def start_simulator(
    extra_args: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
    log_dir: Optional[os.PathLike] = None,
    python: str = sys.executable,
    startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
) -> RunningSimulator:
    """Start the simulator on a free loopback port and wait until /fapi/v1/ping answers.

    The port is chosen by the simulator itself (--port 0) and read back from a port file, so parallel test runs
    never race for one. stderr goes to a log file (`client.log_text()`); kept when `log_dir` is given.
    """
    owns_log = log_dir is None
    directory = Path(log_dir) if log_dir is not None else Path(tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="binance-simulator-", suffix=".log", dir=str(directory))
    os.close(handle)
    log_path = Path(name)
    port_file = log_path.with_suffix(".port")
    child_env = {key: value for key, value in os.environ.items() if not key.startswith("SIM_")}
    child_env.update(env or {})
    command = [python, str(SIMULATOR_SCRIPT), "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
               *extra_args]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                   stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + startup_timeout
    client: Optional[SimulatorClient] = None
    try:
        while True:
            if process.poll() is not None:
                raise SimulatorError(
                    f"simulator exited with {process.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
            if client is None and port_file.exists():
                text = port_file.read_text().strip()
                if text.isdigit():
                    client = SimulatorClient(f"http://127.0.0.1:{int(text)}", log_path=log_path)
            if client is not None and client.ping():
                return RunningSimulator(process, client, log_path, owns_log)
            if time.monotonic() > deadline:
                raise SimulatorError(
                    f"simulator not answering within {startup_timeout} s: "
                    f"{log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
    except BaseException:
        stop_simulator(process)
        raise
    finally:
        try:
            port_file.unlink()
        except OSError:
            pass
