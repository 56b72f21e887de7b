"""The machine a run happened on, and the final table (Markdown), every figure as a ratio to the baseline."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from bench_procs import REPO


def machine_info() -> Dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as handle:
            kib = int(handle.readline().split()[1])
            memory = "%.0f GiB" % (kib / 1024 / 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": memory,
        "python": "%s %s" % (platform.python_implementation(), platform.python_version()),
        "kernel": "%s %s" % (platform.system(), platform.release()),
        "commit": commit or "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def load_average() -> str:
    try:
        return " ".join("%.2f" % value for value in os.getloadavg())
    except OSError:
        return "?"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN without values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100.0 * len(ordered)) - 1))
    return ordered[rank]


def ratio(ours: Optional[float], baseline: Optional[float]) -> Optional[float]:
    if ours is None or baseline is None or not baseline or math.isnan(ours) or math.isnan(baseline):
        return None
    return ours / baseline


def num(value: Optional[float], digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def times(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.2fx" % value


@dataclass
class Target:
    """`value <= limit` (at_most) or `value >= limit`; what the value is a ratio of, or an absolute."""

    limit: float
    at_most: bool
    unit: str = "x"  # "x" for a ratio to the baseline, else an absolute unit

    def text(self) -> str:
        limit = "%.2fx" % self.limit if self.unit == "x" else "%g %s" % (self.limit, self.unit)
        return ("<= " if self.at_most else ">= ") + limit

    def met(self, value: Optional[float]) -> Optional[bool]:
        if value is None or math.isnan(value):
            return None
        return value <= self.limit if self.at_most else value >= self.limit


def verdict(met: Optional[bool]) -> str:
    return "n/a" if met is None else ("met" if met else "**MISSED**")


def api_table(api: Dict[str, Dict[int, Dict[str, Any]]], endpoints: List[str], connections: List[int],
              targets: Dict[str, Dict[int, Target]], checks: List[Dict[str, Any]],
              notes: Optional[Dict[str, str]] = None) -> List[str]:
    """targets: {"rps"|"p50"|"p99": {connections: Target}}; each judged cell is also appended to `checks`."""
    lines = [
        "| endpoint | conns | ours req/s | baseline req/s | ratio | ours p50 ms | baseline p50 ms | ratio "
        "| ours p99 ms | baseline p99 ms | ratio | targets |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for endpoint in endpoints:
        for conns in connections:
            cell = api.get(endpoint, {}).get(conns)
            if not cell:
                continue
            ours, base = cell.get("ours"), cell.get("baseline")
            if ours is None or base is None:
                continue
            ratios = {"rps": ratio(ours["rps"], base["rps"]), "p50": ratio(ours["p50_ms"], base["p50_ms"]),
                      "p99": ratio(ours["p99_ms"], base["p99_ms"])}
            verdicts = []
            for name in ("rps", "p50", "p99"):
                target = targets.get(name, {}).get(conns)
                if target is None:
                    continue
                met = target.met(ratios[name])
                verdicts.append("%s %s: %s" % ("req/s" if name == "rps" else name, target.text(), verdict(met)))
                checks.append({"what": "%s %s at %d conns" % (endpoint, name, conns), "met": met})
            errors = ""
            if ours["errors"] or base["errors"]:
                errors = " (errors: ours %d, baseline %d)" % (ours["errors"], base["errors"])
            lines.append("| `%s` | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s%s |" % (
                endpoint, conns, num(ours["rps"], 0), num(base["rps"], 0), times(ratios["rps"]),
                num(ours["p50_ms"], 2), num(base["p50_ms"], 2), times(ratios["p50"]),
                num(ours["p99_ms"], 2), num(base["p99_ms"], 2), times(ratios["p99"]), "; ".join(verdicts), errors))
    for endpoint, note in (notes or {}).items():
        lines.append("")
        lines.append("`%s`: %s" % (endpoint, note))
    return lines


def service_table(rows: List[Dict[str, Any]], checks: List[Dict[str, Any]]) -> List[str]:
    """rows: {"what", "ours", "baseline", "digits", "target": Target|None, "absolute": bool, "note"}."""
    lines = [
        "| metric | ours | baseline | ours/baseline | target | result |",
        "|---|--:|--:|--:|---|---|",
    ]
    for row in rows:
        ours, base = row.get("ours"), row.get("baseline")
        row_ratio = ratio(ours, base)
        target: Optional[Target] = row.get("target")
        target_text, result = "", ""
        if target is not None:
            met = target.met(ours if target.unit != "x" else row_ratio)
            target_text = target.text()
            result = verdict(met)
            checks.append({"what": row["what"], "met": met})
        digits = row.get("digits", 1)
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            row["what"], num(ours, digits), num(base, digits), times(row_ratio), target_text,
            result + (" " + row["note"] if row.get("note") else "")))
    return lines
