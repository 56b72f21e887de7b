"""Property-based fuzzing of the real server over raw HTTP: no input yields a 5xx; the application's 4xx are JSON.

Requests are written byte by byte (http.client would refuse most of them), so
paths, queries, methods and headers reach Granian's parser and the
application exactly as a hostile client would send them.
"""

from __future__ import annotations

import json
import string
from urllib.parse import quote

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_api_support import (
    api,  # noqa: F401  (module fixture)
    api_workdir,  # noqa: F401  (module fixture)
    fresh_symbols,
    raw_request,
    write_state,
)

FUZZ_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

KNOWN_PREFIXES = ["/", "/funding", "/funding/", "/funding/batch", "/funding/health", "/metrics", "/funding/btcusdt"]
URL_SAFE = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/%?"
TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"

path_text = st.one_of(
    st.builds(lambda p, s: p + s, st.sampled_from(KNOWN_PREFIXES), st.text(URL_SAFE, max_size=60)),
    st.builds(lambda s: "/" + quote(s, safe="/"), st.text(max_size=60)),
    st.builds(lambda p, s: p + quote(s, safe=""), st.sampled_from(["/funding/", "/funding/batch?symbols="]), st.text()),
)
query_text = st.one_of(
    st.just(""),
    st.builds(
        lambda pairs: "?" + "&".join("%s=%s" % (quote(k, safe=""), v) for k, v in pairs),
        st.lists(
            st.tuples(
                st.sampled_from(["symbols", "quote", "sort", "limit", "x", ""]) | st.text(max_size=8),
                st.text(URL_SAFE, max_size=40)
                | st.sampled_from(["fundingRate", "-fundingRate", "symbol", "0", "1", "USDT", "99999999"]),
            ),
            max_size=4,
        ),
    ),
)
method_text = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]) | st.text(
    TOKEN_CHARS, min_size=1, max_size=10
)
FRAMING = {"content-length", "transfer-encoding"}
header_name = (
    st.text(TOKEN_CHARS, min_size=1, max_size=20) | st.sampled_from(["Host", "Expect", "Connection", "Accept"])
).filter(lambda name: name.lower() not in FRAMING)
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
headers = st.lists(st.tuples(header_name, header_value), max_size=4)
# Body framing comes only in complete forms: a request whose body never ends would just wait for it.
framing = st.sampled_from(
    [
        ([], b""),
        ([("Content-Length", "0")], b""),
        ([("Content-Length", "5")], b"hello"),
        ([("Content-Length", "abc")], b""),
        ([("Content-Length", "-1")], b""),
        ([("Content-Length", "99999999999")], b""),
        ([("Content-Length", "5"), ("Content-Length", "6")], b"hello!"),
        ([("Transfer-Encoding", "chunked")], b"5\r\nhello\r\n0\r\n\r\n"),
        ([("Transfer-Encoding", "chunked")], b"zz\r\n"),
        ([("Transfer-Encoding", "gzip")], b""),
        ([("Transfer-Encoding", "chunked"), ("Content-Length", "3")], b"0\r\n\r\n"),
    ]
)


def check(reply):
    event("status %d" % reply.status)  # shown by --hypothesis-show-statistics
    assert reply.status < 500, reply
    if reply.status >= 400:
        if "content-type" not in reply.headers:
            # Granian refused to parse it: a bare 400/414/431 with no body and a closed connection (documented).
            assert reply.status in (400, 414, 431) and reply.body == b"", reply
            assert reply.headers.get("connection") == "close", reply
            return
        assert reply.headers.get("content-type") == "application/json", reply
        if reply.body:  # HEAD answers carry none
            body = json.loads(reply.body)
            assert body["status"] == reply.status
            assert "Traceback" not in reply.body.decode("utf-8", "replace")


@FUZZ_SETTINGS
@given(method=method_text, path=path_text, query=query_text, extra_headers=headers, body_framing=framing)
def test_no_request_line_or_header_makes_the_server_fail(  # noqa: PLR0913
    api,  # noqa: F811
    method,
    path,
    query,
    extra_headers,
    body_framing,
):
    framing_headers, body = body_framing
    lines = ["%s %s%s HTTP/1.1" % (method, path, query), "Host: 127.0.0.1"]
    lines += ["%s: %s" % (name, value) for name, value in extra_headers + framing_headers]
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    check(raw_request(api.port, request + body))


@FUZZ_SETTINGS
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_after_a_valid_start_never_yield_a_5xx(api, raw):  # noqa: F811
    # No CR or LF: the bytes stay in the request line and cannot declare a body that never comes.
    target = raw.replace(b"\r", b"").replace(b"\n", b"")
    request = b"GET /funding/" + target + b" HTTP/1.1\r\nConnection: close\r\n\r\n"
    check(raw_request(api.port, request))


def test_fuzzing_ran_against_a_server_with_data(api):  # noqa: F811
    # The properties above are meaningful only if valid requests succeed on the same server.
    write_state(api.state_file, fresh_symbols())
    reply = raw_request(api.port, b"GET /funding/BTCUSDT HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.status == 200 and json.loads(reply.body)["symbol"] == "BTCUSDT"
