#!/usr/bin/env python3
"""Compare every symbol in the state file with Binance REST premiumIndex (the seed's honest_websocket_comparison.py).

Fetches GET /fapi/v1/premiumIndex (all symbols, one request), reads the state
file, and compares the symbols that have funding on both sides: funding rate
(identical below 1e-7; a difference is judged with both timestamps in mind, by
the same rules as the health monitor's spot check) and mark price (absolute and
relative difference buckets). Symbols present on only one side are listed.

The state file's contract universe (the daemon's exchangeInfo TRADING perpetuals), when it has one, bounds the
comparison: REST symbols outside it (SETTLING, delisted) are not expected in the state file and are only counted.
`--contract-type TRADIFI_PERPETUAL` (or PERPETUAL, ...) compares only the perpetuals of that type, by the universe.

Verdict and exit code:
  0  EXCELLENT   every funding rate identical, every price within 0.1 %, no REST symbol missing
  0  ACCEPTABLE  no errors: differing rates explained by time, prices within 1 %,
                 at most 1 % of the REST symbols missing from the state file
  1  PROBLEMS    anything worse (wrong rates, prices off by more than 1 %, data more than
                 FUNDING_COMPARE_BEHIND_SECONDS behind REST,
                 many symbols missing)
  2  cannot compare (REST or the state file unusable, no symbol in common)
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import funding_json
import funding_settings
from funding_compare import compare_price, judge_funding_rate, local_event_ms
from funding_rest import BinanceRest, PremiumIndex, RestError
from funding_state import StateFileError, read_state, universe_of

PROG = "funding_rest_comparison"
WIDE = "=" * 140
RULE = "-" * 140
NAMES_SHOWN = 20
MISSING_ACCEPTABLE_FRACTION = 0.01

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_CANNOT_COMPARE = 2

S = funding_settings
SETTINGS = (
    S.LOG_LEVEL, S.STATE_FILE, S.REST_URL, S.HTTP_TIMEOUT, S.COMPARE_BEHIND, S.PRICE_WARN_PERCENT,
    S.PRICE_ERROR_PERCENT, S.SPOT_SAME_MOMENT,
)

ABSOLUTE_BUCKETS = (("Small (<$10):", 10.0), ("Medium ($10-$100):", 100.0), ("Large (>$100):", None))
RELATIVE_BUCKETS = (("<0.01%:", 0.01), ("0.01-0.1%:", 0.1), ("0.1-1%:", 1.0), (">1%:", None))


@dataclass
class Row:
    symbol: str
    rest_rate: Optional[float]
    local_rate: Optional[float]
    rest_price: float
    local_price: Optional[float]
    price_diff: Optional[float]
    price_diff_percent: Optional[float]
    time_gap_seconds: Optional[float]
    behind_seconds: Optional[float]  # how much older our value is than REST's
    funding_verdict: str
    price_verdict: str

    @property
    def status(self) -> str:
        if self.funding_verdict in ("mismatch", "wrong", "missing") or self.price_verdict in ("error", "missing"):
            return "BAD"
        if self.funding_verdict == "moved" or self.price_verdict == "warning":
            return "WARN"
        return "GOOD"


@dataclass
class Comparison:
    generated_at: float
    rest_count: int = 0
    rest_fetch_ms: Optional[float] = None
    rest_rejected: List[str] = field(default_factory=list)
    state_count: int = 0
    state_load_ms: Optional[float] = None
    rows: List[Row] = field(default_factory=list)
    only_in_rest: List[str] = field(default_factory=list)
    only_in_state: List[str] = field(default_factory=list)
    error: Optional[str] = None
    verdict: str = ""
    verdict_lines: List[str] = field(default_factory=list)
    exit_code: int = EXIT_CANNOT_COMPARE
    outside_universe: int = 0  # REST symbols outside the state file's contract universe (or the --contract-type)
    contract_type: Optional[str] = None


def compare(rest: Sequence[PremiumIndex], funding_state: Mapping[str, Any], config: Mapping[str, Any]) -> Comparison:
    """Rows for the symbols with funding on both sides, and the symbols on one side only."""
    result = Comparison(generated_at=time.time())
    rest_by_symbol = {e.symbol: e for e in rest if e.has_funding}
    local_by_symbol = {
        s: r for s, r in funding_state.items() if isinstance(r, dict) and r.get("fundingRate") is not None
    }
    result.only_in_rest = sorted(set(rest_by_symbol) - set(local_by_symbol))
    result.only_in_state = sorted(set(local_by_symbol) - set(rest_by_symbol))
    for symbol in sorted(set(rest_by_symbol) & set(local_by_symbol)):
        result.rows.append(compare_one(rest_by_symbol[symbol], local_by_symbol[symbol], config))
    return result


def compare_one(rest: PremiumIndex, local: Mapping[str, Any], config: Mapping[str, Any]) -> Row:
    event_ms = local_event_ms(local)
    gap = abs(rest.time_ms - event_ms) / 1000.0 if event_ms is not None else None
    behind = (rest.time_ms - event_ms) / 1000.0 if event_ms is not None else None
    local_price = local.get("markPrice")
    price = compare_price(
        rest.mark_price, local_price, config["FUNDING_PRICE_WARN_PERCENT"], config["FUNDING_PRICE_ERROR_PERCENT"]
    )
    local_rate = local.get("fundingRate")
    return Row(
        symbol=rest.symbol,
        rest_rate=rest.funding_rate,
        local_rate=local_rate,
        rest_price=rest.mark_price,
        local_price=local_price,
        price_diff=price.diff,
        price_diff_percent=price.percent,
        time_gap_seconds=gap,
        behind_seconds=behind,
        funding_verdict=judge_funding_rate(
            rest.funding_rate, local_rate, gap, config["FUNDING_SPOT_SAME_MOMENT_SECONDS"]
        ),
        price_verdict=price.verdict,
    )


@dataclass
class Summary:
    compared: int
    identical: int
    moved: int
    different: int
    absolute: List[int]
    relative: List[int]
    average_diff: Optional[float]
    min_diff: Optional[float]
    max_diff: Optional[float]
    average_percent: Optional[float]
    max_percent: Optional[float]
    price_warnings: int
    price_errors: int
    stale: int
    average_gap: Optional[float]
    max_gap: Optional[float]


def _bucket(value: float, limits: Sequence[Tuple[str, Optional[float]]]) -> int:
    for index, (_, limit) in enumerate(limits):
        if limit is None or value < limit:
            return index
    return len(limits) - 1


def summarize(comparison: Comparison, stale_seconds: float) -> Summary:
    rows = comparison.rows
    diffs = [r.price_diff for r in rows if r.price_diff is not None]
    percents = [r.price_diff_percent for r in rows if r.price_diff_percent is not None]
    gaps = [r.time_gap_seconds for r in rows if r.time_gap_seconds is not None]
    absolute = [0] * len(ABSOLUTE_BUCKETS)
    relative = [0] * len(RELATIVE_BUCKETS)
    for value in diffs:
        absolute[_bucket(value, ABSOLUTE_BUCKETS)] += 1
    for value in percents:
        relative[_bucket(value, RELATIVE_BUCKETS)] += 1
    return Summary(
        compared=len(rows),
        identical=sum(1 for r in rows if r.funding_verdict == "match"),
        moved=sum(1 for r in rows if r.funding_verdict == "moved"),
        different=sum(1 for r in rows if r.funding_verdict in ("mismatch", "wrong", "missing")),
        absolute=absolute,
        relative=relative,
        average_diff=sum(diffs) / len(diffs) if diffs else None,
        min_diff=min(diffs) if diffs else None,
        max_diff=max(diffs) if diffs else None,
        average_percent=sum(percents) / len(percents) if percents else None,
        max_percent=max(percents) if percents else None,
        price_warnings=sum(1 for r in rows if r.price_verdict == "warning"),
        price_errors=sum(1 for r in rows if r.price_verdict in ("error", "missing")),
        stale=sum(1 for r in rows if r.behind_seconds is not None and r.behind_seconds > stale_seconds),
        average_gap=sum(gaps) / len(gaps) if gaps else None,
        max_gap=max(gaps) if gaps else None,
    )


def decide(comparison: Comparison, summary: Optional[Summary], config: Mapping[str, Any]) -> None:
    """Set the verdict, its lines and the exit code."""
    if comparison.error or summary is None:
        comparison.verdict = "CANNOT COMPARE"
        comparison.verdict_lines = ["❌ CANNOT COMPARE: %s" % (comparison.error or "nothing to compare")]
        comparison.exit_code = EXIT_CANNOT_COMPARE
        return
    missing = len(comparison.only_in_rest)
    rest_with_funding = summary.compared + missing
    missing_ok = missing <= MISSING_ACCEPTABLE_FRACTION * rest_with_funding
    problems: List[str] = []
    if summary.different:
        problems.append("❌ %d funding rates differ from REST beyond what time explains" % summary.different)
    if summary.price_errors:
        problems.append(
            "❌ %d mark prices differ by more than %g%% (or are missing)"
            % (summary.price_errors, config["FUNDING_PRICE_ERROR_PERCENT"])
        )
    if summary.stale:
        problems.append(
            "❌ %d symbols are more than %.0fs behind REST" % (summary.stale, config["FUNDING_COMPARE_BEHIND_SECONDS"])
        )
    if not missing_ok:
        problems.append("❌ %d REST symbols with funding are missing from the state file" % missing)
    if problems:
        comparison.verdict = "PROBLEMS"
        comparison.verdict_lines = [
            "❌ PROBLEMS: WebSocket data does not match Binance REST",
            "❌ Do not use WebSocket data for Volume Alert enrichment until this is fixed",
            *problems,
        ]
        comparison.exit_code = EXIT_PROBLEMS
        return
    notes: List[str] = []
    if summary.moved:
        notes.append("⚠️  %d funding rates moved between the two reads (timestamps apart)" % summary.moved)
    if summary.price_warnings:
        notes.append(
            "⚠️  %d mark prices differ by %g-%g%%"
            % (summary.price_warnings, config["FUNDING_PRICE_WARN_PERCENT"], config["FUNDING_PRICE_ERROR_PERCENT"])
        )
    if missing:
        notes.append("⚠️  %d REST symbols with funding are missing from the state file" % missing)
    comparison.exit_code = EXIT_OK
    if notes:
        comparison.verdict = "ACCEPTABLE"
        comparison.verdict_lines = [
            "⚠️  ACCEPTABLE: WebSocket daemon is working, with small differences",
            "✅ Safe to use WebSocket for Volume Alert enrichment",
            *notes,
        ]
        return
    comparison.verdict = "EXCELLENT"
    comparison.verdict_lines = [
        "✅ EXCELLENT: WebSocket daemon is working correctly",
        "✅ Safe to use WebSocket for Volume Alert enrichment",
        "✅ Funding rates are identical",
        "✅ Mark prices have acceptable real-time lag",
    ]


# --------------------------------------------------------------------------- output


def _money(value: Optional[float]) -> str:
    """Two decimals like the seed, more for sub-dollar values so that they do not all print as 0.00."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude == 0 or magnitude >= 1:
        return "%.2f" % value
    decimals = 2
    while decimals < 8 and magnitude < 10 ** -(decimals - 2):
        decimals += 1
    return "%.*f" % (decimals, value)


def _rate(value: Optional[float]) -> str:
    return "-" if value is None else "%.8f" % value


def _share(count: int, total: int) -> str:
    return "%d/%d (%.1f%%)" % (count, total, 100.0 * count / total if total else 0.0)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (", ... (%d more)" % (len(names) - NAMES_SHOWN) if len(names) > NAMES_SHOWN else "")


MATCH_LABEL = {"match": "✅ YES", "moved": "⚠️ MOVED", "mismatch": "❌ NO", "wrong": "❌ NO", "missing": "❌ NONE"}
STATUS_LABEL = {"GOOD": "✅ GOOD", "WARN": "⚠️  WARN", "BAD": "❌ BAD"}


def format_row(row: Row) -> str:
    return "%-15s%15s%15s %-10s $%13s $%13s $%10s  %s" % (
        row.symbol,
        _rate(row.rest_rate),
        _rate(row.local_rate),
        MATCH_LABEL[row.funding_verdict],
        _money(row.rest_price),
        _money(row.local_price),
        _money(row.price_diff),
        STATUS_LABEL[row.status],
    )


def render_header(comparison: Comparison) -> List[str]:
    lines = [
        WIDE,
        "HONEST WEBSOCKET vs REST API COMPARISON REPORT",
        WIDE,
        "Generated: %s" % datetime.fromtimestamp(comparison.generated_at).strftime("%Y-%m-%d %H:%M:%S"),
        "",
        "Fetching REST API data for all symbols...",
    ]
    if comparison.rest_fetch_ms is not None:
        lines.append("  Fetched %d symbols in %.0fms" % (comparison.rest_count, comparison.rest_fetch_ms))
        if comparison.rest_rejected:
            lines.append("  Skipped %d malformed entries: %s" % (
                len(comparison.rest_rejected), _names(comparison.rest_rejected)))
        if comparison.outside_universe:
            scope = ("contractType %s" % comparison.contract_type if comparison.contract_type
                     else "the contract universe")
            lines.append("  Not compared: %d symbols outside %s (SETTLING, delisted or another type)" % (
                comparison.outside_universe, scope))
    return lines


def render_text(comparison: Comparison, summary: Optional[Summary], limit: int) -> str:
    lines = render_header(comparison)
    if comparison.error and comparison.rest_fetch_ms is None:
        lines.append("  ❌ %s" % comparison.error)
    else:
        lines.append("Reading WebSocket state file...")
        if comparison.state_load_ms is not None:
            lines.append("  Loaded %d symbols in %.0fms" % (comparison.state_count, comparison.state_load_ms))
        elif comparison.error:
            lines.append("  ❌ %s" % comparison.error)
    if summary is not None and not comparison.error:
        shown = comparison.rows[:limit]
        lines += ["", WIDE, "SAMPLE DATA (First %d symbols)" % len(shown), WIDE, ""]
        lines.append(
            "%-16s%-16s%-16s%-11s%-16s%-16s%-13s%s"
            % ("SYMBOL", "REST FR", "WS FR", "FR MATCH", "REST PRICE", "WS PRICE", "DIFF $", "STATUS")
        )
        lines.append(RULE)
        lines += [format_row(row) for row in shown]
        if len(comparison.rows) > len(shown):
            lines.append("...")
        total = summary.compared
        lines += ["", WIDE, "STATISTICAL SUMMARY", WIDE, "Total symbols compared: %d" % total]
        if comparison.only_in_rest:
            lines.append("Only in REST (%d): %s" % (len(comparison.only_in_rest), _names(comparison.only_in_rest)))
        if comparison.only_in_state:
            lines.append(
                "Only in state file (%d): %s" % (len(comparison.only_in_state), _names(comparison.only_in_state))
            )
        lines += [
            "",
            "FUNDING RATE:",
            "  Identical (diff < 0.0000001): %s" % _share(summary.identical, total),
            "  Different: %s" % _share(total - summary.identical, total),
        ]
        if summary.moved:
            lines.append("    moved between the two reads: %s" % _share(summary.moved, total))
        lines += ["", "MARK PRICE DIFFERENCES:"]
        for (label, _), count in zip(ABSOLUTE_BUCKETS, summary.absolute):
            lines.append("  %-19s%s" % (label, _share(count, total)))
        lines += ["", "  Relative:"]
        for (label, _), count in zip(RELATIVE_BUCKETS, summary.relative):
            lines.append("  %-19s%s" % (label, _share(count, total)))
        lines += [
            "",
            "  Average difference: $%s" % _money(summary.average_diff),
            "  Min difference:     $%s" % _money(summary.min_diff),
            "  Max difference:     $%s" % _money(summary.max_diff),
        ]
        if summary.max_percent is not None:
            lines.append(
                "  Average relative:   %.4f%%   Max relative: %.4f%%" % (summary.average_percent, summary.max_percent)
            )
        if summary.max_gap is not None:
            lines.append(
                "  REST time vs state eventTime: average %.1fs apart, at most %.1fs"
                % (summary.average_gap, summary.max_gap)
            )
        if summary.stale:
            lines.append("  More than the stale limit behind REST: %d symbols" % summary.stale)
    lines += ["", WIDE, "FINAL VERDICT", WIDE, *comparison.verdict_lines]
    return "\n".join(lines)


def to_json(comparison: Comparison, summary: Optional[Summary]) -> Dict[str, Any]:
    data: Dict[str, Any] = {
        "generated_at": comparison.generated_at,
        "verdict": comparison.verdict,
        "verdict_lines": comparison.verdict_lines,
        "exit_code": comparison.exit_code,
        "error": comparison.error,
        "rest": {
            "symbols": comparison.rest_count,
            "fetch_ms": comparison.rest_fetch_ms,
            "rejected": comparison.rest_rejected,
            "outside_universe": comparison.outside_universe,
        },
        "contract_type": comparison.contract_type,
        "state": {"symbols": comparison.state_count, "load_ms": comparison.state_load_ms},
        "only_in_rest": comparison.only_in_rest,
        "only_in_state": comparison.only_in_state,
        "summary": None,
        "rows": [dict(row.__dict__, status=row.status) for row in comparison.rows],
    }
    if summary is not None:
        data["summary"] = {
            "compared": summary.compared,
            "funding_identical": summary.identical,
            "funding_moved": summary.moved,
            "funding_different": summary.different,
            "price_absolute_buckets": {
                label.rstrip(":"): count for (label, _), count in zip(ABSOLUTE_BUCKETS, summary.absolute)
            },
            "price_relative_buckets": {
                label.rstrip(":"): count for (label, _), count in zip(RELATIVE_BUCKETS, summary.relative)
            },
            "price_diff_average": summary.average_diff,
            "price_diff_min": summary.min_diff,
            "price_diff_max": summary.max_diff,
            "price_diff_percent_average": summary.average_percent,
            "price_diff_percent_max": summary.max_percent,
            "price_warnings": summary.price_warnings,
            "price_errors": summary.price_errors,
            "stale": summary.stale,
            "time_gap_seconds_average": summary.average_gap,
            "time_gap_seconds_max": summary.max_gap,
        }
    return data


# --------------------------------------------------------------------------- main


def run(config: Mapping[str, Any], contract_type: Optional[str] = None) -> "Tuple[Comparison, Optional[Summary]]":
    started = time.time()
    if config["FUNDING_REST_URL"] is None:
        return Comparison(generated_at=started, error="FUNDING_REST_URL is off: there is no REST to compare with"), None
    with BinanceRest(config["FUNDING_REST_URL"], config["FUNDING_HTTP_TIMEOUT_SECONDS"]) as rest:
        try:
            entries, rejected, elapsed = rest.premium_index_all()
        except RestError as exc:
            failed = Comparison(generated_at=started, error="cannot fetch Binance REST premiumIndex: %s" % exc)
            return failed, None
    load_started = time.monotonic()
    try:
        payload = read_state(config["FUNDING_STATE_FILE"])
    except StateFileError as exc:
        failed = Comparison(generated_at=started, error="cannot read the state file: %s" % exc)
        failed.rest_count, failed.rest_fetch_ms, failed.rest_rejected = len(entries), elapsed * 1000, rejected
        return failed, None
    load_ms = (time.monotonic() - load_started) * 1000
    fetched = len(entries)
    universe = universe_of(payload)
    funding = payload["funding_state"]
    outside = 0
    if contract_type is not None:
        if universe is None:
            failed = Comparison(generated_at=started, error="--contract-type needs the contract universe in the state "
                                "file (the daemon has not fetched exchangeInfo yet)")
            failed.rest_count, failed.rest_fetch_ms, failed.rest_rejected = len(entries), elapsed * 1000, rejected
            return failed, None
        universe = {s: c for s, c in universe.items() if c.get("contractType") == contract_type}
        funding = {s: r for s, r in funding.items() if s in universe}
    if universe is not None:
        kept = [e for e in entries if e.symbol in universe]
        outside = len(entries) - len(kept)
        entries = kept
    comparison = compare(entries, funding, config)
    comparison.outside_universe = outside
    comparison.contract_type = contract_type
    comparison.generated_at = started
    comparison.rest_count, comparison.rest_fetch_ms, comparison.rest_rejected = fetched, elapsed * 1000, rejected
    comparison.state_count, comparison.state_load_ms = len(funding), load_ms
    if not comparison.rows:
        comparison.error = "no symbol with funding is in both REST and the state file"
    summary = summarize(comparison, config["FUNDING_COMPARE_BEHIND_SECONDS"])
    return comparison, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=20, help="symbols shown in the sample table (default 20)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of the report")
    parser.add_argument("--contract-type", metavar="TYPE", type=contract_type_name,
                        help="compare only the perpetuals of this exchangeInfo contractType (PERPETUAL, "
                        "TRADIFI_PERPETUAL, ...), as the state file's contract universe lists them")


CONTRACT_TYPE_PATTERN = re.compile(r"[A-Z_]{1,40}")


def contract_type_name(text: str) -> str:
    name = text.strip().upper()
    if not CONTRACT_TYPE_PATTERN.fullmatch(name) or not name.endswith("PERPETUAL"):
        raise argparse.ArgumentTypeError("must be a perpetual contractType such as PERPETUAL or TRADIFI_PERPETUAL")
    return name


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, config = funding_settings.load(
        PROG, "Compare every symbol of the state file with Binance REST premiumIndex.", SETTINGS, argv, add_arguments
    )
    log = funding_settings.setup_logging(config["FUNDING_LOG_LEVEL"], PROG)
    if args.limit < 0:
        print("%s: --limit must be 0 or more" % PROG, file=sys.stderr)
        return EXIT_CANNOT_COMPARE
    try:
        comparison, summary = run(config, args.contract_type)
    except Exception as exc:  # report, never a traceback
        log.debug("internal error", exc_info=True)
        comparison, summary = Comparison(generated_at=time.time(), error="internal error: %s" % exc), None
    decide(comparison, summary, config)
    if args.json:
        print(funding_json.dumps(to_json(comparison, summary), pretty=True).decode("utf-8"))
    else:
        print(render_text(comparison, summary, args.limit))
    return comparison.exit_code


if __name__ == "__main__":
    sys.exit(main())
