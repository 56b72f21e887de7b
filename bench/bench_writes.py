"""State-file write time: our writer against the seed's, on the payloads the two daemons really wrote.

Ours is `funding_state.write_state_atomic` (compact JSON, fsync, rename); the
baseline is the seed's `json.dump(payload, f, indent=2)` + `os.rename`. Both write
into the same directory on the same file system, alternately, `count` times.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List

from bench_procs import BASELINE, PROGRAMS

for _directory in (PROGRAMS, BASELINE):
    if str(_directory) not in sys.path:
        sys.path.insert(0, str(_directory))

import baseline_daemon  # noqa: E402
import funding_state  # noqa: E402


@dataclass
class WriteResult:
    times_ms: List[float]
    file_bytes: int
    symbols: int


def _time_writes(write: Callable[[], None], count: int) -> List[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        write()
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def measure_writes(ours_state: Path, baseline_state: Path, directory: Path, count: int) -> Dict[str, WriteResult]:
    directory.mkdir(parents=True, exist_ok=True)
    ours_payload: Dict[str, Any] = funding_state.read_state(str(ours_state))
    with open(baseline_state) as handle:
        baseline_payload: Dict[str, Any] = json.load(handle)
    ours_target = directory / "ours.json"
    baseline_target = directory / "baseline.json"

    def write_ours() -> None:
        funding_state.write_state_atomic(str(ours_target), ours_payload)

    def write_baseline() -> None:
        baseline_daemon.write_state_file(baseline_target, baseline_payload)

    ours_times: List[float] = []
    baseline_times: List[float] = []
    write_ours()
    write_baseline()  # warm both up once
    for _ in range(count):
        ours_times.extend(_time_writes(write_ours, 1))
        baseline_times.extend(_time_writes(write_baseline, 1))
    return {
        "ours": WriteResult(ours_times, ours_target.stat().st_size, len(ours_payload["funding_state"])),
        "baseline": WriteResult(baseline_times, baseline_target.stat().st_size,
                                len(baseline_payload["funding_state"])),
    }
