"""The API's request latency histogram by route (funding_api_latency), as /metrics exposes it."""

from __future__ import annotations

import funding_api_latency as latency
from funding_api_app import ApiConfig, build_app
from funding_api_metrics import RequestCounter
from funding_api_view import StateViews
from funding_state import StateReader
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import call, fresh_symbols, write_state


def test_an_observation_lands_in_the_first_bucket_whose_bound_it_does_not_exceed():
    assert latency.bucket_index(0.0) == 0
    assert latency.bucket_index(0.0005) == 0
    assert latency.bucket_index(0.0006) == 1
    assert latency.bucket_index(2.5) == len(latency.BUCKETS) - 1
    assert latency.bucket_index(60.0) == len(latency.BUCKETS)  # only +Inf


def test_the_exposition_is_a_cumulative_prometheus_histogram_per_route():
    counts = [0] * latency.SLOTS
    counts[0], counts[3], counts[-1] = 2, 1, 1
    observations = {"/funding/{symbol}": (counts, 3_500_000), "/": ([0] * latency.SLOTS, 0)}
    text = "\n".join(latency.exposition_lines(observations))
    family = next(text_string_to_metric_families(text + "\n"))
    assert family.name == latency.NAME and family.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[(latency.NAME + "_bucket", "0.0005")] == 2
    assert samples[(latency.NAME + "_bucket", "0.005")] == 3
    assert samples[(latency.NAME + "_bucket", "2.5")] == 3
    assert samples[(latency.NAME + "_bucket", "+Inf")] == 4
    assert samples[(latency.NAME + "_count", None)] == 4 and samples[(latency.NAME + "_sum", None)] == 3.5
    assert {s.labels["route"] for s in family.samples} == {"/funding/{symbol}"}  # a route never asked is left out


def test_every_answered_request_is_timed_under_its_route_template(tmp_path):
    state = tmp_path / "state.json"
    write_state(state, fresh_symbols())
    app = build_app(StateViews(StateReader(str(state))), ApiConfig(), RequestCounter())
    for target in ("/funding/BTCUSDT", "/funding/ETHUSDT", "/funding/NOPEUSDT", "/no/such/route"):
        call(app, target)
    status, _, body = call(app, "/metrics")
    assert status == 200
    counts = {s.labels["route"]: s.value for f in text_string_to_metric_families(body.decode("utf-8"))
              if f.name == latency.NAME for s in f.samples if s.name == latency.NAME + "_count"}
    assert counts == {"/funding/{symbol}": 3, "other": 1}
