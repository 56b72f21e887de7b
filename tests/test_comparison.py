"""funding_rest_comparison.py: every symbol of the state file against the simulated exchange's REST premiumIndex."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Dict

import funding_rest_comparison as comparison_module
import pytest
from fakes.support import closed_url, daemon_state, run_program, write_state

WIDE = "=" * 140
SEED_HEADER = (
    "SYMBOL          REST FR         WS FR           FR MATCH   REST PRICE      WS PRICE        DIFF $       STATUS"
)
SEED_ROW = (
    "0GUSDT              0.00000685     0.00000685 ✅ YES      $         1.18 $         1.18 $      0.00  ✅ GOOD"
)


class Compare:
    def __init__(self, state_file, rest_url: str) -> None:
        self.state_file = state_file
        self.env: Dict[str, str] = {
            "FUNDING_STATE_FILE": str(state_file),
            "FUNDING_REST_URL": rest_url,
            "FUNDING_HTTP_TIMEOUT_SECONDS": "5",
        }

    def write(self, payload: Dict[str, Any]) -> None:
        write_state(self.state_file, payload)

    def run(self, *args: str, **env: str):
        result = run_program("funding_rest_comparison.py", {**self.env, **env}, args)
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        return result


@pytest.fixture
def market(simulator):
    simulator.set_fault("freeze")
    return simulator.symbols()


@pytest.fixture
def compare(simulator, tmp_path):
    return Compare(tmp_path / "funding_state.json", simulator.rest_url)


def perpetuals(market):
    """The TRADING perpetuals: the daemon's universe, all that it serves."""
    return {s: q for s, q in market.items() if q["perpetual"] and q["fundingRate"] is not None}


def section(text: str, title: str) -> list:
    lines = text.rstrip("\n").split("\n")
    start = lines.index(title)
    assert lines[start - 1] == WIDE and lines[start + 1] == WIDE
    end = next((i for i in range(start + 2, len(lines)) if lines[i] == WIDE), len(lines))
    return lines[start + 2 : end]


def test_matching_state_is_excellent_with_the_seed_layout(compare, market, simulator):
    compare.write(daemon_state(market))
    fetched = len(simulator.premium_index())
    count = len(perpetuals(market))
    result = compare.run()
    text = result.stdout
    lines = text.split("\n")
    assert result.returncode == 0
    assert lines[:3] == [WIDE, "HONEST WEBSOCKET vs REST API COMPARISON REPORT", WIDE]
    assert re.match(r"^Generated: \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", lines[3])
    assert lines[5] == "Fetching REST API data for all symbols..."
    assert re.match(r"^  Fetched %d symbols in \d+ms$" % fetched, lines[6])
    assert re.match(r"^  Not compared: %d symbols outside the contract universe " % (fetched - count), lines[7])
    assert lines[8] == "Reading WebSocket state file..."
    assert re.match(r"^  Loaded %d symbols in \d+ms$" % count, lines[9])

    sample = section(text, "SAMPLE DATA (First 20 symbols)")
    assert sample[0] == "" and sample[1] == SEED_HEADER and sample[2] == "-" * 140
    rows = [line for line in sample[3:] if line and line != "..."]
    assert len(rows) == 20
    assert [row.split()[0] for row in rows] == sorted(perpetuals(market))[:20]
    assert all(row.endswith("✅ GOOD") and "✅ YES" in row for row in rows)

    summary = section(text, "STATISTICAL SUMMARY")
    assert summary[0] == "Total symbols compared: %d" % count
    full = "%d/%d (100.0%%)" % (count, count)
    none = "0/%d (0.0%%)" % count
    assert "  Identical (diff < 0.0000001): " + full in summary
    assert "  Different: " + none in summary
    assert "  Small (<$10):      " + full in summary
    assert "  Medium ($10-$100): " + none in summary
    assert "  Large (>$100):     " + none in summary
    assert "  <0.01%:            " + full in summary
    assert "  >1%:               " + none in summary
    assert "  Average difference: $0.00" in summary and "  Max difference:     $0.00" in summary
    assert not any(line.startswith("Only in") for line in summary)

    assert section(text, "FINAL VERDICT") == [
        "✅ EXCELLENT: WebSocket daemon is working correctly",
        "✅ Safe to use WebSocket for Volume Alert enrichment",
        "✅ Funding rates are identical",
        "✅ Mark prices have acceptable real-time lag",
    ]


def test_rows_and_header_use_the_seed_columns():
    row = comparison_module.Row(
        symbol="0GUSDT", rest_rate=0.00000685, local_rate=0.00000685, rest_price=1.18, local_price=1.18,
        price_diff=0.0, price_diff_percent=0.0, time_gap_seconds=0.0, behind_seconds=0.0,
        funding_verdict="match", price_verdict="ok",
    )
    assert comparison_module.format_row(row) == SEED_ROW


def test_sub_dollar_prices_keep_their_digits():
    assert comparison_module._money(0.000042) == "0.0000420"
    assert comparison_module._money(0.03123) == "0.0312"
    assert comparison_module._money(91897.674) == "91897.67"
    assert comparison_module._money(0.0) == "0.00"


def test_prices_skewed_two_percent_are_problems(compare, market, simulator):
    simulator.set_fault("rest_skew", percent=2)
    compare.write(daemon_state(market))
    count = len(perpetuals(market))
    result = compare.run()
    assert result.returncode == 1
    summary = section(result.stdout, "STATISTICAL SUMMARY")
    assert "  >1%%:               %d/%d (100.0%%)" % (count, count) in summary
    verdict = section(result.stdout, "FINAL VERDICT")
    assert verdict[0] == "❌ PROBLEMS: WebSocket data does not match Binance REST"
    assert "❌ %d mark prices differ by more than 1%% (or are missing)" % count in verdict
    rows = [line for line in section(result.stdout, "SAMPLE DATA (First 20 symbols)")[3:] if line.strip()]
    assert all(row.endswith("❌ BAD") for row in rows if row != "...")


def test_prices_skewed_half_a_percent_are_acceptable(compare, market, simulator):
    simulator.set_fault("rest_skew", percent=0.5)
    compare.write(daemon_state(market))
    result = compare.run()
    verdict = section(result.stdout, "FINAL VERDICT")
    assert result.returncode == 0
    assert verdict[0] == "⚠️  ACCEPTABLE: WebSocket daemon is working, with small differences"
    assert any(line.startswith("⚠️  ") and "mark prices differ by 0.1-1%" in line for line in verdict)


def test_symbols_on_one_side_only_are_listed(compare, market):
    payload = daemon_state(market)
    dropped = sorted(perpetuals(market))[:3]
    for symbol in dropped:
        del payload["funding_state"][symbol]
    extra = dict(payload["funding_state"]["BTCUSDT"])
    payload["funding_state"]["DELISTEDUSDT"] = extra
    compare.write(payload)
    result = compare.run()
    summary = section(result.stdout, "STATISTICAL SUMMARY")
    assert "Only in REST (3): %s" % ", ".join(dropped) in summary
    assert "Only in state file (1): DELISTEDUSDT" in summary
    assert result.returncode == 0  # 3 of ~700 is within the 1 % allowance
    assert "⚠️  3 REST symbols with funding are missing from the state file" in section(result.stdout, "FINAL VERDICT")


def test_many_missing_symbols_are_a_problem(compare, market):
    payload = daemon_state(market)
    for symbol in sorted(payload["funding_state"])[100:]:
        del payload["funding_state"][symbol]
    compare.write(payload)
    result = compare.run()
    assert result.returncode == 1
    assert any("REST symbols with funding are missing from the state file" in line
               for line in section(result.stdout, "FINAL VERDICT"))


def test_dated_contracts_without_funding_are_not_compared(compare, market):
    dated = [s for s, q in market.items() if q["fundingRate"] is None]
    assert dated, "the simulated market lists dated contracts"
    compare.write(daemon_state(market))
    data = json.loads(compare.run("--json").stdout)
    assert not set(dated) & {row["symbol"] for row in data["rows"]}
    assert not set(dated) & set(data["only_in_rest"])


def test_contract_type_compares_only_the_tradfi_perpetuals(compare, market):
    compare.write(daemon_state(market))
    tradfi = {s for s, q in perpetuals(market).items() if q["contractType"] == "TRADIFI_PERPETUAL"}
    assert len(tradfi) > 100
    data = json.loads(compare.run("--json", "--contract-type", "tradifi_perpetual").stdout)
    assert data["verdict"] == "EXCELLENT" and data["contract_type"] == "TRADIFI_PERPETUAL"
    assert {row["symbol"] for row in data["rows"]} == tradfi
    assert data["state"]["symbols"] == len(tradfi)


def test_contract_type_finds_a_tradfi_symbol_missing_from_the_state(compare, market):
    payload = daemon_state(market)
    del payload["funding_state"]["XAUUSDT"]
    compare.write(payload)
    data = json.loads(compare.run("--json", "--contract-type", "TRADIFI_PERPETUAL").stdout)
    assert data["only_in_rest"] == ["XAUUSDT"]


def test_contract_type_without_a_universe_cannot_compare(compare, market):
    payload = daemon_state(market)
    del payload["universe"]
    compare.write(payload)
    result = compare.run("--contract-type", "TRADIFI_PERPETUAL")
    assert result.returncode == 2 and "needs the contract universe" in result.stdout


@pytest.mark.parametrize("value", ["CURRENT_QUARTER", "bad-type", ""])
def test_a_bad_contract_type_is_refused_with_exit_2(compare, market, value):
    compare.write(daemon_state(market))
    result = compare.run("--contract-type", value)
    assert result.returncode == 2 and "--contract-type" in result.stderr


def test_state_far_behind_rest_is_a_problem(compare, market):
    payload = daemon_state(market)
    for record in payload["funding_state"].values():
        record["eventTime"] -= 600_000
    compare.write(payload)
    result = compare.run()
    assert result.returncode == 1
    assert any("symbols are more than 180s behind REST" in line for line in section(result.stdout, "FINAL VERDICT"))


def test_limit_sets_the_sample_size(compare, market):
    compare.write(daemon_state(market))
    result = compare.run("--limit", "5")
    sample = section(result.stdout, "SAMPLE DATA (First 5 symbols)")
    assert len([line for line in sample[3:] if line and line != "..."]) == 5


def test_json_output(compare, market, simulator):
    compare.write(daemon_state(market))
    count = len(perpetuals(market))
    result = compare.run("--json")
    data = json.loads(result.stdout)
    assert result.returncode == 0 and data["exit_code"] == 0
    assert data["verdict"] == "EXCELLENT" and data["error"] is None
    assert data["rest"]["symbols"] == len(simulator.premium_index()) and data["state"]["symbols"] == count
    assert data["rest"]["outside_universe"] == data["rest"]["symbols"] - count
    assert data["summary"]["compared"] == count and data["summary"]["funding_identical"] == count
    assert data["summary"]["price_relative_buckets"] == {"<0.01%": count, "0.01-0.1%": 0, "0.1-1%": 0, ">1%": 0}
    assert data["summary"]["price_absolute_buckets"]["Small (<$10)"] == count
    assert len(data["rows"]) == count and data["rows"][0]["status"] == "GOOD"


def test_rest_down_cannot_compare_and_exits_2(compare, market, simulator):
    simulator.set_fault("rest_outage")
    compare.write(daemon_state(market))
    result = compare.run()
    assert result.returncode == 2
    verdict = section(result.stdout, "FINAL VERDICT")
    assert verdict[0].startswith("❌ CANNOT COMPARE: cannot fetch Binance REST premiumIndex: ")
    assert "HTTP 503" in verdict[0]
    assert json.loads(compare.run("--json").stdout)["exit_code"] == 2


def test_rest_refusing_connections_cannot_compare(compare, market):
    compare.write(daemon_state(market))
    result = compare.run(FUNDING_REST_URL=closed_url())
    assert result.returncode == 2 and "cannot connect" in result.stdout


def test_rest_garbage_cannot_compare(compare, market, simulator):
    simulator.set_fault("rest_garbage")
    compare.write(daemon_state(market))
    result = compare.run()
    assert result.returncode == 2 and "answered HTML, not JSON" in result.stdout


def test_missing_or_corrupt_state_file_cannot_compare(compare, market, tmp_path):
    result = compare.run(FUNDING_STATE_FILE=str(tmp_path / "none.json"))
    assert result.returncode == 2
    assert "❌ CANNOT COMPARE: cannot read the state file: state file" in result.stdout
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("[1, 2")
    result = compare.run(FUNDING_STATE_FILE=str(corrupt))
    assert result.returncode == 2 and "not valid JSON" in result.stdout


def test_empty_state_cannot_compare(compare, market):
    compare.write(daemon_state({}, now=time.time()))
    result = compare.run()
    assert result.returncode == 2
    assert "no symbol with funding is in both REST and the state file" in result.stdout


def test_help_lists_the_settings(compare):
    result = compare.run("--help")
    assert result.returncode == 0
    for setting in comparison_module.SETTINGS:
        assert setting.env in result.stdout
    assert "--limit" in result.stdout and "--json" in result.stdout


def test_rest_url_off_is_a_clear_cannot_compare_not_a_configuration_error(compare):
    compare.write(daemon_state({}, now=time.time()))
    result = compare.run(FUNDING_REST_URL="off")
    assert result.returncode == 2
    assert "FUNDING_REST_URL is off" in result.stdout and "invalid configuration" not in result.stderr
