"""bench/bench_history.py runs end to end on a tiny history and writes its table (the figures are not checked)."""

from __future__ import annotations

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import bench_history  # noqa: E402


def test_history_bench_builds_queries_and_reports_ratios_and_size(tmp_path):
    out = tmp_path / "results"
    assert bench_history.main(["--symbols", "4", "--settlements", "30", "--queries", "5",
                               "--db", str(tmp_path / "h.sqlite3"), "--out", str(out)]) == 0
    result = json.loads((out / "history.json").read_text())
    assert result["rows"] == 120 and result["bytes_per_row"] > 0
    assert result["ours"]["symbol"]["n"] == 5 and result["baseline_rest_loopback"]["at"]["p99_ms"] > 0
    assert "| one symbol x 1000 rows" in (out / "history.md").read_text()
