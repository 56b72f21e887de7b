#!/usr/bin/env python3
"""make bench: our service against the seed's design (bench/baseline), side by side, on loopback.

Phases (all against one simulated exchange with Binance's timings, N symbols):
  daemon   for each stack alone: daemon CPU (% of one core) and peak RSS on the
           !markPrice@arr@1s stream, and freshness (event time E -> first API answer
           showing the value), measured together over one window
  api      both stacks up, daemons live: wrk (or the Python generator) against
           /funding/{symbol}, /funding/batch (50 symbols), /funding/health and
           /funding?limit=100 at each connection count, ours and the baseline back
           to back per cell; memory of all the API's processes meanwhile
  rename   the API alone on a 1 000-symbol file replaced every 100 ms: rename ->
           first answer showing it, per worker, and the API's memory
  writes   state-file write time and size on the payloads the daemons wrote
  stream   /funding/stream isolation (bench/bench_stream.py): wrk throughput with 64 streams open (one stalled)
           against without, rewrite-to-event latency of the healthy streams, the stalled client dropped
Prints a Markdown table (every figure as a ratio to the baseline, targets beside it)
and writes it to bench/results/latest.md (raw figures: latest.json). Benchmarks
assert nothing; the exit status is 0 whenever the run completed.

Every option also reads a BENCH_* environment variable; BENCH_QUICK=1 (or --quick)
is a one-minute smoke run whose figures are too short to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

import bench_load
import bench_rename
import bench_stream
from bench_freshness import ApiPoller, PushRecorder, analyse
from bench_proc_stats import UsageSampler
from bench_procs import (
    REPO,
    STACKS,
    ProcessError,
    Stack,
    http_get,
    start_api_only,
    start_simulator,
    start_stack,
    wait_until_serving,
)
from bench_report import (
    Target,
    api_table,
    load_average,
    machine_info,
    num,
    percentile,
    service_table,
)
from bench_writes import measure_writes

RESULTS = REPO / "bench" / "results"
LISTING = "/funding?limit=100"
ENDPOINT_LABELS = ("/funding/{symbol}", "/funding/batch", "/funding/health", LISTING)
BATCH_SIZE = 50
FRESHNESS_SYMBOLS = 100  # polled in one batch request; more symbols, more updates per second to time
PHASES = ("daemon", "api", "rename", "writes", "stream")

# Issue 13's targets: throughput at 16 and 64 connections, p99 at every count, p50 with one client.
API_TARGETS = {
    "rps": {16: Target(3.0, at_most=False), 64: Target(3.0, at_most=False)},
    "p99": {1: Target(0.25, at_most=True), 16: Target(0.25, at_most=True), 64: Target(0.25, at_most=True)},
    "p50": {1: Target(0.5, at_most=True)},
}
FRESHNESS_P99_TARGET = Target(0.1, at_most=True)
RENAME_P99_TARGET = Target(5.0, at_most=True, unit="ms")
API_MEMORY_TARGET = Target(96.0, at_most=True, unit="MiB")
DAEMON_CPU_TARGET = Target(0.5, at_most=True)
DAEMON_RSS_TARGET = Target(40.0, at_most=True, unit="MiB")
LISTING_NOTE = ("the seed design has no listing endpoint; its row is the seed's way to get 100 records, "
                "/funding/batch with 100 symbols.")


def env(name: str, default: str) -> str:
    return os.environ.get("BENCH_" + name, default)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    quick = env("QUICK", "0").lower() in ("1", "true", "yes")
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=quick,
                        help="one-minute smoke run: short windows [BENCH_QUICK]")
    parser.add_argument("--symbols", type=int, default=int(env("SYMBOLS", "1000")),
                        help="contracts in the simulator [BENCH_SYMBOLS, 1000]")
    parser.add_argument("--daemon-seconds", type=float, default=None,
                        help="daemon/freshness window per stack [BENCH_DAEMON_SECONDS, 60; quick 10]")
    parser.add_argument("--api-seconds", type=float, default=None,
                        help="length of one load run [BENCH_API_SECONDS, 10; quick 1]")
    parser.add_argument("--warmup-seconds", type=float, default=None,
                        help="settling time before measuring [BENCH_WARMUP_SECONDS, 3; quick 1]")
    parser.add_argument("--connections", default=env("CONNECTIONS", "1,16,64"),
                        help="connection counts [BENCH_CONNECTIONS, 1,16,64]")
    parser.add_argument("--poll-interval", type=float, default=float(env("POLL_INTERVAL", "0.005")),
                        help="seconds between freshness polls [BENCH_POLL_INTERVAL, 0.005]")
    parser.add_argument("--writes", type=int, default=None,
                        help="state-file writes timed per writer [BENCH_WRITES, 200; quick 30]")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default=env("LOADGEN", "auto"),
                        help="load generator [BENCH_LOADGEN, auto: wrk when it works]")
    parser.add_argument("--phases", default=env("PHASES", ",".join(PHASES)),
                        help="which phases to run [BENCH_PHASES, %s]" % ",".join(PHASES))
    parser.add_argument("--rename-seconds", type=float, default=None,
                        help="rename phase: seconds of writes every 100 ms [BENCH_RENAME_SECONDS, 20; quick 3]")
    parser.add_argument("--output", default=env("OUTPUT", str(RESULTS / "latest.md")),
                        help="Markdown table written here [BENCH_OUTPUT, bench/results/latest.md]")
    args = parser.parse_args(argv)
    defaults = {"daemon_seconds": ("DAEMON_SECONDS", 60, 10), "api_seconds": ("API_SECONDS", 10, 1),
                "warmup_seconds": ("WARMUP_SECONDS", 3, 1), "writes": ("WRITES", 200, 30),
                "rename_seconds": ("RENAME_SECONDS", 20, 3)}
    for attribute, (name, full, short) in defaults.items():
        if getattr(args, attribute) is None:
            setattr(args, attribute, type(full)(float(env(name, str(short if args.quick else full)))))
    args.connections = [int(text) for text in args.connections.split(",") if text.strip()]
    args.phases = [text.strip() for text in args.phases.split(",") if text.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown or not args.connections or min(args.connections) < 1:
        parser.error("bad --phases or --connections")
    if "writes" in args.phases and "daemon" not in args.phases:
        parser.error("the writes phase uses the state files of the daemon phase")
    return args


def say(text: str) -> None:
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), text), file=sys.stderr, flush=True)


def pick_symbols(symbols: Dict[str, Dict[str, Any]], count: int) -> List[str]:
    """`count` perpetuals that both stacks serve (the ones !markPrice@arr carries), half from each shard of the
    simulator, named ones first."""
    perpetuals = sorted((s for s, v in symbols.items() if v["perpetual"] and v["onArray"]),
                        key=lambda s: (not s.endswith("USDT") or len(s) > 8, s))
    shards: Dict[int, List[str]] = {}
    for symbol in perpetuals:
        shards.setdefault(symbols[symbol]["shard"], []).append(symbol)
    picked: List[str] = []
    while len(picked) < count and any(shards.values()):
        for shard in sorted(shards):
            if shards[shard] and len(picked) < count:
                picked.append(shards[shard].pop(0))
    return picked


def daemon_phase(kind: str, sim: Any, context: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    client = sim.client
    stack = start_stack(kind, context["ws_url"], client.rest_url, context["work_dir"] / "daemon")
    try:
        wait_until_serving(stack, context["single"], context["serving"][kind])
        recorder = PushRecorder(context["ws_url"])
        recorder.start()
        recorder.connected.wait(15)
        if recorder.error:
            raise ProcessError(recorder.error)
        time.sleep(args.warmup_seconds)
        path = "/funding/batch?symbols=" + ",".join(context["fresh"])
        poller = ApiPoller(stack.api_port, path, context["fresh"], args.poll_interval)
        daemon_usage = UsageSampler(stack.daemon.pid)
        api_usage = UsageSampler(stack.api.pid, with_children=True)
        window_start = time.time()
        for thread in (daemon_usage, api_usage, poller):
            thread.start()
        say("%s: measuring the daemon and freshness for %.0f s" % (kind, args.daemon_seconds))
        time.sleep(args.daemon_seconds)
        window_end = time.time()
        poller.stop()
        daemon = daemon_usage.stop()
        api = api_usage.stop()
        recorder.stop()
        for managed in stack.processes():
            managed.check_alive()
        fresh = analyse(recorder, poller, window_start, window_end, settle=min(3.0, args.daemon_seconds / 4))
        if recorder.error:
            say("%s: push recorder: %s" % (kind, recorder.error))
        result = {
            "freshness_p50_ms": percentile(fresh.samples_ms, 50),
            "freshness_p99_ms": percentile(fresh.samples_ms, 99),
            "freshness_max_ms": max(fresh.samples_ms) if fresh.samples_ms else float("nan"),
            "freshness_from_receipt_p50_ms": percentile(fresh.from_receipt_ms, 50),
            "freshness_from_receipt_p99_ms": percentile(fresh.from_receipt_ms, 99),
            "freshness_updates": fresh.count,
            "freshness_missed": fresh.missed,
            "freshness_excluded": fresh.excluded,
            "freshness_polls": fresh.polls,
            "freshness_poll_failures": fresh.poll_failures,
            "daemon_cpu_percent": daemon.cpu_percent,
            "daemon_peak_rss_mib": max(daemon.hwm_rss_mib, daemon.peak_rss_mib),
            "api_cpu_percent": api.cpu_percent,
            "api_peak_rss_mib": max(api.hwm_rss_mib, api.peak_rss_mib),
            "state_file": str(stack.state_file),
            "window_seconds": window_end - window_start,
        }
        say("%s: freshness p50 %s ms p99 %s ms over %d updates (%d missed); daemon CPU %.1f %%, peak RSS %.1f MiB" % (
            kind, num(result["freshness_p50_ms"]), num(result["freshness_p99_ms"]), fresh.count, fresh.missed,
            daemon.cpu_percent, result["daemon_peak_rss_mib"]))
        return result
    finally:
        stack.stop()


def api_phase(sim: Any, context: Dict[str, Any], args: argparse.Namespace, generator: str) -> Dict[str, Any]:
    client = sim.client
    stacks: Dict[str, Stack] = {}
    results: Dict[str, Any] = {}
    shared = {
        "/funding/{symbol}": "/funding/%s" % context["single"],
        "/funding/batch": "/funding/batch?symbols=" + ",".join(context["batch"]),
        "/funding/health": "/funding/health",
    }
    paths = {kind: dict(shared) for kind in STACKS}
    paths["ours"][LISTING] = LISTING
    paths["baseline"][LISTING] = "/funding/batch?symbols=" + ",".join(context["fresh"][:100])
    memory: Optional[UsageSampler] = None
    try:
        for kind in STACKS:
            stacks[kind] = start_stack(kind, context["ws_url"], client.rest_url, context["work_dir"] / "api")
        for kind, stack in stacks.items():
            wait_until_serving(stack, context["single"], context["serving"][kind])
        ports = {kind: stack.api_port for kind, stack in stacks.items()}
        for kind, port in ports.items():  # warm-up: imports, caches, first state loads
            bench_load.run_load(generator, port, paths[kind]["/funding/{symbol}"], 4, max(1.0, args.warmup_seconds))
        memory = UsageSampler(stacks["ours"].api.pid, with_children=True)
        memory.start()
        cell = 0
        for label in ENDPOINT_LABELS:
            for conns in args.connections:
                order = list(STACKS) if cell % 2 == 0 else list(reversed(STACKS))
                cell += 1
                for kind in order:
                    for stack in stacks.values():
                        stack.api.check_alive()
                    load = bench_load.run_load(generator, ports[kind], paths[kind][label], conns, args.api_seconds)
                    results.setdefault(label, {}).setdefault(conns, {})[kind] = {
                        "rps": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "errors": load.errors,
                        "requests": load.requests,
                    }
                    say("%-9s %-18s c=%-3d %8.0f req/s  p50 %7.2f ms  p99 %8.2f ms%s" % (
                        kind, label, conns, load.rps, load.p50_ms, load.p99_ms,
                        "  errors %d" % load.errors if load.errors else ""))
    finally:
        if memory is not None:
            usage = memory.stop()
            results["_memory"] = {"peak_rss_mib": usage.peak_rss_mib, "cpu_percent": usage.cpu_percent}
        for stack in stacks.values():
            stack.stop()
    return results


def rename_phase(args: argparse.Namespace, context: Dict[str, Any]) -> Dict[str, Any]:
    """Rename -> first answer showing the new file, for both APIs alone (no daemon) on a 1 000-symbol file."""
    results: Dict[str, Any] = {}
    for kind in STACKS:
        directory = context["work_dir"] / "rename" / kind
        directory.mkdir(parents=True, exist_ok=True)
        state_file = directory / ".funding_state.json"
        bench_rename.write_generation(state_file, args.symbols, 0)
        api = start_api_only(kind, state_file, directory)
        usage = UsageSampler(api.pid, with_children=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                api.check_alive()
                try:
                    if http_get(api.port, "/funding/" + bench_rename.MARKER, timeout=2.0)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            usage.start()
            measured = bench_rename.measure(api.port, state_file, args.symbols, args.rename_seconds)
            memory = usage.stop()
        finally:
            api.stop()
        results[kind] = {
            "p50_ms": percentile(measured.samples_ms, 50), "p99_ms": percentile(measured.samples_ms, 99),
            "max_ms": max(measured.samples_ms) if measured.samples_ms else float("nan"),
            "samples": len(measured.samples_ms), "writes": measured.writes, "unseen": measured.unseen,
            "failures": measured.failures, "peak_rss_mib": memory.peak_rss_mib, "cpu_percent": memory.cpu_percent,
        }
        say("%s: rename -> served p50 %s ms p99 %s ms (%d samples, %d unseen); API RSS peak %.1f MiB" % (
            kind, num(results[kind]["p50_ms"], 2), num(results[kind]["p99_ms"], 2), len(measured.samples_ms),
            measured.unseen, memory.peak_rss_mib))
    return results


def choose_generator(wanted: str) -> str:
    if wanted == "python":
        return "python"
    problem = bench_load.wrk_available()
    if problem is None:
        return "wrk"
    if wanted == "wrk":
        raise SystemExit("--loadgen wrk: %s (apt-get install wrk)" % problem)
    say("%s: using the Python load generator (slower; its own CPU limits the figures)" % problem)
    return "python"


def render(args: argparse.Namespace, machine: Dict[str, str], generator: str, context: Dict[str, Any],
           daemon: Dict[str, Dict[str, Any]], api: Dict[str, Any], writes: Dict[str, Any], elapsed: float,
           loads: List[str], rename: Optional[Dict[str, Any]] = None) -> str:
    checks: List[Dict[str, Any]] = []
    loadgen = ("wrk (%s, Lua percentiles), 1 thread at 1 connection, else 2" % bench_load.wrk_version()
               if generator == "wrk" else "Python (raw keep-alive sockets, 2 processes of threads)")
    lines = [
        "# Benchmark: binance-funding against the seed design (baseline)",
        "",
        "Machine: %s CPUs (`nproc`), %s, %s RAM; %s; %s. Commit %s, %s." % (
            machine["nproc"], machine["cpu"], machine["memory"], machine["python"], machine["kernel"],
            machine["commit"], machine["date"]),
        "",
        "Run: %.1f min%s; load average at start/end: %s. Simulator: %d contracts (%d perpetuals), "
        "`!markPrice@arr@1s` stream. Load generator: %s, %g s per run, keep-alive. Baseline: bench/baseline "
        "(FastAPI %s + uvicorn %s, 1 s TTL cache; websocket-client daemon rewriting the file with indent=2 on "
        "every message)." % (
            elapsed / 60.0, " (QUICK smoke run: too short to quote)" if args.quick else "", " / ".join(loads),
            args.symbols, context.get("perpetuals", 0), loadgen, args.api_seconds, context.get("fastapi", "?"),
            context.get("uvicorn", "?")),
        "",
    ]
    if api:
        lines += ["## API (127.0.0.1, daemons live on the @1s stream; batch = %d symbols)" % BATCH_SIZE, ""]
        lines += api_table(api, list(ENDPOINT_LABELS), args.connections, API_TARGETS, checks, {LISTING: LISTING_NOTE})
        lines.append("")
    if rename or api.get("_memory"):
        ours_rename, base_rename = (rename or {}).get("ours", {}), (rename or {}).get("baseline", {})
        rows: List[Dict[str, Any]] = [
            {"what": "state file renamed -> served, p50 (ms)", "ours": ours_rename.get("p50_ms"),
             "baseline": base_rename.get("p50_ms"), "digits": 2},
            {"what": "state file renamed -> served, p99 (ms)", "ours": ours_rename.get("p99_ms"),
             "baseline": base_rename.get("p99_ms"), "digits": 2, "target": RENAME_P99_TARGET,
             "note": "%s writes every 100 ms of a %d-symbol file, polled on 2 connections; unseen: ours %s, "
                     "baseline %s (the seed caches for 1 s)" % (ours_rename.get("writes"), args.symbols,
                                                               ours_rename.get("unseen"), base_rename.get("unseen"))},
            {"what": "API processes, total RSS, peak while renamed-and-polled (MiB)",
             "ours": ours_rename.get("peak_rss_mib"), "baseline": base_rename.get("peak_rss_mib"),
             "target": API_MEMORY_TARGET},
            {"what": "API processes, total RSS, peak under the load runs above (MiB)",
             "ours": api.get("_memory", {}).get("peak_rss_mib"), "baseline": None, "target": API_MEMORY_TARGET,
             "note": "supervisor + %s workers, summed VmRSS (shared pages counted in each)" % os.cpu_count()},
        ]
        lines += ["## The API's own freshness and memory (%d symbols)" % args.symbols, ""]
        lines += service_table(rows, checks)
        lines.append("")
    if daemon:
        ours, base = daemon.get("ours", {}), daemon.get("baseline", {})
        rows: List[Dict[str, Any]] = [
            {"what": "freshness p50 (ms, E -> API answer)", "ours": ours.get("freshness_p50_ms"),
             "baseline": base.get("freshness_p50_ms")},
            {"what": "freshness p99 (ms)", "ours": ours.get("freshness_p99_ms"),
             "baseline": base.get("freshness_p99_ms"), "target": FRESHNESS_P99_TARGET},
            {"what": "freshness p50 from the frame's arrival at a bystander subscriber (ms; info)",
             "ours": ours.get("freshness_from_receipt_p50_ms"), "baseline": base.get("freshness_from_receipt_p50_ms")},
            {"what": "freshness p99 from the frame's arrival at a bystander subscriber (ms; info)",
             "ours": ours.get("freshness_from_receipt_p99_ms"), "baseline": base.get("freshness_from_receipt_p99_ms"),
             "note": "E -> arrival is the simulated exchange's own delay"},
            {"what": "freshness: updates measured (missed)", "ours": ours.get("freshness_updates"),
             "baseline": base.get("freshness_updates"), "digits": 0,
             "note": "missed: ours %s, baseline %s; left out (poller paused): ours %s, baseline %s; polled every "
                     "%g ms, %d symbols per poll" % (ours.get("freshness_missed"), base.get("freshness_missed"),
                                ours.get("freshness_excluded"), base.get("freshness_excluded"),
                                args.poll_interval * 1000, FRESHNESS_SYMBOLS)},
            {"what": "daemon CPU (%% of one core, %d symbols, %.0f s)" % (args.symbols, args.daemon_seconds),
             "ours": ours.get("daemon_cpu_percent"), "baseline": base.get("daemon_cpu_percent"),
             "digits": 2, "target": DAEMON_CPU_TARGET},
            {"what": "daemon peak RSS (MiB)", "ours": ours.get("daemon_peak_rss_mib"),
             "baseline": base.get("daemon_peak_rss_mib"), "target": DAEMON_RSS_TARGET},
        ]
        if writes:
            rows += [
                {"what": "state write p50 (ms)", "ours": writes["ours"]["p50_ms"],
                 "baseline": writes["baseline"]["p50_ms"], "digits": 2},
                {"what": "state write p99 (ms)", "ours": writes["ours"]["p99_ms"],
                 "baseline": writes["baseline"]["p99_ms"], "digits": 2,
                 "note": "%d writes each; ours includes fsync, the seed's does not" % writes["count"]},
                {"what": "state file size (KB)", "ours": writes["ours"]["bytes"] / 1000.0,
                 "baseline": writes["baseline"]["bytes"] / 1000.0,
                 "note": "symbols: ours %d, baseline %d" % (writes["ours"]["symbols"], writes["baseline"]["symbols"])},
            ]
        rows += [
            {"what": "API CPU while polled (% of one core; info)", "ours": ours.get("api_cpu_percent"),
             "baseline": base.get("api_cpu_percent")},
            {"what": "API peak RSS (MiB; info)", "ours": ours.get("api_peak_rss_mib"),
             "baseline": base.get("api_peak_rss_mib")},
        ]
        lines += ["## Freshness, daemon and state file", ""]
        lines += service_table(rows, checks)
        lines.append("")
    judged = [check for check in checks if check["met"] is not None]
    missed = [check["what"] for check in judged if not check["met"]]
    lines.append("Targets met: %d of %d%s." % (len(judged) - len(missed), len(judged),
                                                "; missed: " + "; ".join(missed) if missed else ""))
    return "\n".join(lines) + "\n"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    machine = machine_info()
    loads = [load_average()]
    generator = choose_generator(args.loadgen) if "api" in args.phases else "none"
    work_dir = RESULTS / "last-run"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    say("logs and state files in %s" % work_dir)
    context: Dict[str, Any] = {"work_dir": work_dir, "fastapi": package_version("fastapi"),
                               "uvicorn": package_version("uvicorn")}
    daemon: Dict[str, Dict[str, Any]] = {}
    api: Dict[str, Any] = {}
    writes: Dict[str, Any] = {}
    rename: Dict[str, Any] = {}
    sim = start_simulator(args.symbols, work_dir)
    try:
        symbols = sim.client.symbols()
        context["perpetuals"] = sum(1 for values in symbols.values() if values["perpetual"])
        # The seed's design reads !markPrice@arr alone, which omits the TradFi perpetuals: it can serve no more.
        context["serving"] = {"ours": context["perpetuals"], "baseline": sum(
            1 for values in symbols.values() if values["perpetual"] and values["onArray"])}
        context["fresh"] = pick_symbols(symbols, FRESHNESS_SYMBOLS)
        context["batch"] = context["fresh"][:BATCH_SIZE]
        context["single"] = "BTCUSDT" if "BTCUSDT" in context["batch"] else context["batch"][0]
        context["ws_url"] = sim.client.ws_url(fast=True)
        say("simulator on %s: %d contracts, %d perpetuals (%d on !markPrice@arr)" % (
            sim.client.base_http_url, len(symbols), context["perpetuals"], context["serving"]["baseline"]))
        if "daemon" in args.phases:
            for kind in reversed(STACKS):
                daemon[kind] = daemon_phase(kind, sim, context, args)
        if "api" in args.phases:
            api = api_phase(sim, context, args, generator)
        if "rename" in args.phases:
            rename = rename_phase(args, context)
        if "writes" in args.phases:
            say("timing %d state-file writes per writer" % args.writes)
            measured = measure_writes(Path(daemon["ours"]["state_file"]), Path(daemon["baseline"]["state_file"]),
                                      work_dir / "writes", args.writes)
            writes = {"count": args.writes}
            for kind, result in measured.items():
                writes[kind] = {"p50_ms": percentile(result.times_ms, 50), "p99_ms": percentile(result.times_ms, 99),
                                "bytes": result.file_bytes, "symbols": result.symbols}
    except ProcessError as exc:
        say("FAILED: %s" % exc)
        return 1
    finally:
        sim.stop()
    loads.append(load_average())
    elapsed = time.monotonic() - started
    table = render(args, machine, generator, context, daemon, api, writes, elapsed, loads, rename)
    if "stream" in args.phases:  # issue 15: bench/bench_stream.py, its own API on a state file it rewrites
        say("stream isolation: %d streams while wrk runs" % bench_stream.STREAMS)
        stream = bench_stream.run(args.api_seconds, 1 if args.quick else 2, args.symbols,
                                  "wrk" if bench_load.wrk_available() is None else "python")
        table += "\n## Stream isolation (/funding/stream)\n\n" + "\n".join(bench_stream.table(stream)) + "\n"
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table)
    raw = {"machine": machine, "args": {k: v for k, v in vars(args).items()}, "generator": generator,
           "daemon": daemon, "api": api, "rename": rename, "writes": writes, "elapsed_seconds": elapsed,
           "load_average": loads}
    output.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print()
    print(table)
    say("table written to %s (raw figures: %s); took %.1f min" % (output, output.with_suffix(".json"),
                                                                  elapsed / 60.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
