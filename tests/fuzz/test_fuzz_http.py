"""Property: odd methods, headers, encodings and admin bodies never make the gateway or the
node answer 5xx; refusals keep the API's error shape.

Requests aiohttp's HTTP parser cannot read (a method it does not know, a header line over
8 KiB) never reach the application: the parser answers a plain-text 400 and closes the
connection, as Go's net/http does for Ollama (an unknown ``Expect`` gets aiohttp's 417, and a
body that is not in its ``Content-Encoding`` may be refused by the parser while it arrives).
For those the promise is a 4xx (or a closed connection) without a traceback, and a server
that keeps serving.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

MODEL = "m:1b"
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

GATEWAY_PATHS = ["/", "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat",
                 "/api/generate", "/api/embed", "/api/embeddings", "/api/pull", "/api/delete",
                 "/health", "/metrics", "/admin/nodes", "/admin/flags",
                 "/admin/flags/scheduler.strategy", "/admin/flags/scheduler.strategy/rollback",
                 "/admin/flags/nope", "/admin/status", "/admin/alerts", "/dashboard",
                 "/dashboard/static/app.js", "/dashboard/static/nope", "/v1/models",
                 "/v1/models/m:1b", "/v1/chat/completions", "/v1/completions",
                 "/v1/embeddings", "/nope", "/api/nope", "/v1/nope"]
NODE_PATHS = ["/", "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat",
              "/api/generate", "/api/embed", "/api/embeddings", "/health", "/telemetry",
              "/metrics", "/cluster/blobs/sha256:" + "0" * 64, "/cluster/blobs/nope", "/nope"]
# methods llhttp knows (others never reach the application: see the module docstring);
# POST/PUT/DELETE on the admin paths would change flags or drain the node, so they get bodies
# that cannot be valid
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND",
           "MKCOL", "LOCK", "UNLOCK", "SEARCH", "PURGE", "REPORT"]


def _shaped(rig, r: httpx.Response, path: str, parser_may_answer: bool = False) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code < 400 or r.request.method == "HEAD":
        return
    if parser_may_answer and not r.headers["content-type"].startswith("application/json"):
        assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:300]
        return
    rig.error_sentence(r, openai=path.startswith("/v1/"))


@FUZZ
@given(method=st.sampled_from(METHODS), path=st.sampled_from(GATEWAY_PATHS),
       junk=st.binary(max_size=20))
@example(method="PUT", path="/admin/flags/scheduler.strategy", junk=b"\xff")  # was a 500
def test_any_method_on_any_gateway_path(sim_rig, gateway, method, path, junk):
    _shaped(sim_rig, gateway.request(method, path, content=b"{\x00" + junk), path)


@FUZZ
@given(method=st.sampled_from([m for m in METHODS if m not in ("POST", "DELETE")]),
       path=st.sampled_from([*NODE_PATHS, "/admin/drain"]), junk=st.binary(max_size=20))
def test_any_method_on_any_node_path(sim_rig, node, method, path, junk):
    _shaped(sim_rig, node.request(method, path, content=b"{\x00" + junk), path)


token_chars = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1,
                      max_size=20)
# latin-1 as HTTP allows it; no surrounding spaces (no client can send those)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                               exclude_characters="\x7f"), max_size=300).map(
    lambda v: v.strip(" "))
NAMED = ["Content-Type", "Accept", "Accept-Encoding", "Authorization", "X-Request-Id",
         "Cookie", "Range", "If-None-Match", "Connection", "Cache-Control",
         "X-OllamaMax-Cache", "Origin", "User-Agent", "Transfer-Encoding-Extension"]


@FUZZ
@given(headers=st.dictionaries(st.sampled_from(NAMED) | token_chars.map(lambda t: "x-" + t),
                               header_values, max_size=6),
       path=st.sampled_from(["/api/chat", "/api/generate", "/v1/chat/completions", "/api/tags",
                             "/admin/status", "/v1/embeddings"]), good=st.booleans())
@example(headers={"X-Request-Id": "x" * 300}, path="/api/chat", good=True)
@example(headers={"X-Big": "a" * 8000, "X-Request-Id": "\u00ff" * 100}, path="/api/generate",
         good=True)  # big but within aiohttp's 8 KiB line
def test_any_headers(sim_rig, gateway, headers, path, good):
    bodies = {"/api/chat": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                            "stream": False},
              "/api/generate": {"model": MODEL, "prompt": "hi", "stream": False},
              "/v1/chat/completions": {"model": MODEL,
                                       "messages": [{"role": "user", "content": "hi"}]},
              "/v1/embeddings": {"model": MODEL, "input": "hi"}}
    content = json.dumps(bodies[path]).encode() if good and path in bodies else b"[oops"
    method = "POST" if path in bodies else "GET"
    r = gateway.request(method, path, content=content,
                        headers={k: v.encode("latin-1") for k, v in headers.items()})
    _shaped(sim_rig, r, path)


@FUZZ
@given(encoding=st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "x-nope",
                                 "gzip, deflate"]),
       path=st.sampled_from(["/api/generate", "/v1/completions", "/api/embed"]))
@example(encoding="gzip", path="/api/generate")
def test_a_body_that_is_not_in_its_content_encoding(sim_rig, gateway, encoding, path):
    body = json.dumps({"model": MODEL, "prompt": "hi", "input": "hi", "stream": False}).encode()
    try:
        r = gateway.post(path, content=body, headers={"Content-Encoding": encoding})
    except (httpx.ReadError, httpx.RemoteProtocolError):
        return  # the parser refused the body as it arrived and closed the connection
    _shaped(sim_rig, r, path, parser_may_answer=True)


@FUZZ
@given(value=st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                          | st.floats(allow_nan=True) | st.text(max_size=12),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.sampled_from(["variant", "percent", "x"]) | st.text(
                              max_size=5), inner, max_size=3), max_leaves=6),
       name=st.sampled_from(["scheduler.strategy", "scheduler.queue_order", "nope"])
       | st.text(alphabet="abcxyz.:_-~0123456789", min_size=1, max_size=12).filter(
           lambda n: n not in (".", "..")))
@example(value={"variant": "round_robin", "percent": float("nan")}, name="scheduler.strategy")
@example(value={"variant": "round_robin", "percent": 2**70}, name="scheduler.strategy")
def test_flag_changes_with_bad_bodies_are_refused(sim_rig, gateway, value, name):
    if isinstance(value, dict) and isinstance(value.get("variant"), str) \
            and value["variant"] in ("intelligent", "round_robin", "fifo", "list", "ring"):
        value = {**value, "variant": value["variant"] + "?"}  # never change the rig's routing
    r = gateway.put(f"/admin/flags/{name}", content=json.dumps(value, allow_nan=True).encode())
    sim_rig.refused(r)


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["charts", "key", "x"]) | st.text(max_size=5),
                             st.text(max_size=30), max_size=3),
       path=st.sampled_from(["/admin/status", "/admin/alerts", "/admin/nodes", "/admin/flags",
                             "/dashboard", "/api/tags", "/api/ps", "/v1/models", "/health"]))
def test_any_query_string_on_the_read_endpoints(sim_rig, gateway, query, path):
    r = gateway.get(path, params=query)
    assert r.status_code == 200, (r.status_code, r.text[:300])


def _raw(url: str, request: bytes) -> bytes:
    """Send bytes no HTTP client would, read the answer until the server closes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("request_bytes", [
    b"FOO /api/chat HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    # aiohttp answers an Expect it does not know (417) before any middleware runs
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nExpect: transfers\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}",
], ids=["unknown-method", "header-over-8k", "url-over-8k", "negative-length",
        "length-and-chunked", "tls-hello", "unknown-expect"])
@pytest.mark.parametrize("which", ["gateway", "node"])
def test_requests_the_http_parser_refuses(sim_rig, request_bytes, which):
    answer = _raw(sim_rig.url if which == "gateway" else sim_rig.node_url, request_bytes)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 400
    assert 400 <= status < 500, answer[:300]
    assert b"Traceback" not in answer and b'File "' not in answer


def test_the_service_is_unharmed_afterwards(sim_rig, gateway, node):
    sim_rig.assert_unharmed(gateway)
    sim_rig.assert_unharmed(node)
