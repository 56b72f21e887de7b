"""CPU time and memory of a running process, from /proc (Linux only), sampled in a thread."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> List[int]:
    """Direct children of `pid` (the API's worker processes)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    text = handle.read()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def tree_rss_mib(pid: int) -> float:
    """VmRSS of `pid` and its children, summed (shared pages count once per process, as `ps` shows them)."""
    return sum(memory_kib(p)["VmRSS"] for p in [pid] + children(pid)) / 1024.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    with open("/proc/%d/stat" % pid) as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    values = {}
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                values[name] = int(value.split()[0])
    return values


@dataclass
class ProcessUsage:
    cpu_percent: float  # of one core, over the window
    cpu_seconds: float
    wall_seconds: float
    peak_rss_mib: float  # max VmRSS seen while sampling
    hwm_rss_mib: float  # the kernel's VmHWM at the end (peak since the process started)
    rss_samples_mib: List[float] = field(default_factory=list)


class UsageSampler(threading.Thread):
    """Samples one process every `interval` s from start() until stop(); `result()` after join()."""

    def __init__(self, pid: int, interval: float = 0.5, with_children: bool = False) -> None:
        super().__init__(name="usage-%d" % pid, daemon=True)
        self.pid = pid
        self.with_children = with_children
        self.interval = interval
        self._halt = threading.Event()
        self._samples: List[float] = []
        self._start_cpu = 0.0
        self._start_wall = 0.0
        self._usage: Optional[ProcessUsage] = None

    def _cpu(self) -> float:
        if not self.with_children:
            return cpu_seconds(self.pid)
        return sum(cpu_seconds(p) for p in [self.pid] + children(self.pid))

    def run(self) -> None:
        self._start_cpu = self._cpu()
        self._start_wall = time.monotonic()
        hwm = 0.0
        cpu = self._start_cpu
        while True:
            stopping = self._halt.wait(self.interval)
            try:
                memory = memory_kib(self.pid)
                if self.with_children:
                    self._samples.append(tree_rss_mib(self.pid))
                    hwm = 0.0  # per-process high-water marks do not add up to the tree's peak
                else:
                    self._samples.append(memory["VmRSS"] / 1024.0)
                    hwm = memory["VmHWM"] / 1024.0
                cpu = self._cpu()
            except (OSError, KeyError, ValueError):
                break  # the process is gone
            if stopping:
                break
        wall = time.monotonic() - self._start_wall
        used = cpu - self._start_cpu
        self._usage = ProcessUsage(
            cpu_percent=100.0 * used / wall if wall > 0 else 0.0,
            cpu_seconds=used,
            wall_seconds=wall,
            peak_rss_mib=max(self._samples) if self._samples else 0.0,
            hwm_rss_mib=hwm,
            rss_samples_mib=self._samples,
        )

    def stop(self) -> ProcessUsage:
        self._halt.set()
        self.join(10)
        if self._usage is None:
            raise RuntimeError("process %d vanished while it was being measured" % self.pid)
        return self._usage
