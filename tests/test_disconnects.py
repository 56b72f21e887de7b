"""Disconnect reasons as a few stable kinds (funding_disconnects), counted by the daemon and exposed on /metrics."""

from __future__ import annotations

import funding_disconnects
import pytest
from funding_api_app import ApiConfig, build_app
from funding_api_metrics import RequestCounter
from funding_api_view import StateViews
from funding_state import StateReader
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import call, fresh_symbols, write_state


@pytest.mark.parametrize(("reason", "kind"), [
    ("connect failed: [Errno 111] Connection refused", "connect_failed"),
    ("server closed the connection (code 1001 'going away')", "server_closed"),
    ("connection lost (closed without a close frame)", "connection_lost"),
    ("receive error: timed out", "receive_error"),
    ("send error: broken pipe", "send_error"),
    ("no markPriceUpdate for 30.0 s on wss://fstream.binance.com/market/stream", "no_data"),
    ("rotated to connection #4", "rotated"),
    ("daemon stopping", "stopping"),
    ("internal error: boom", "internal_error"),
    ("something new", "other"),
    ("", "other"),
])
def test_every_close_reason_the_daemon_gives_has_a_kind(reason, kind):
    assert funding_disconnects.kind_of(reason) == kind
    assert kind in funding_disconnects.KINDS


def test_metrics_count_disconnects_by_kind_with_zero_for_kinds_not_seen(tmp_path):
    state = tmp_path / "state.json"
    write_state(state, fresh_symbols(), disconnects_server_closed=3, disconnects_no_data=1)
    app = build_app(StateViews(StateReader(str(state))), ApiConfig(), RequestCounter())
    status, _, body = call(app, "/metrics")
    assert status == 200
    counts = {s.labels["reason"]: s.value for f in text_string_to_metric_families(body.decode("utf-8"))
              if f.name == "funding_daemon_disconnects" for s in f.samples}
    assert counts == {kind: {"server_closed": 3, "no_data": 1}.get(kind, 0) for kind in funding_disconnects.KINDS}
