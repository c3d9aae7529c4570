"""The load generator: request counts, response framing, error counting, percentiles.

A small aiohttp server on 127.0.0.1 port 0 answers the way nodes and the gateway do
(Content-Length for whole answers, chunked transfer encoding for streams). No timings are
asserted, only counts and parsing.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
import pytest
from aiohttp import web

from ollamamax.bench import loadgen
from ollamamax.bench.loadgen import LoadGenerator, LoadResult, Target

DONE = b'{"model":"m","message":{"role":"assistant","content":""},"done":true}\n'
TOKEN = b'{"model":"m","message":{"role":"assistant","content":"word"},"done":false}\n'


class Server:
    """Routes named after what they do; `hits` counts requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.bodies: list[bytes] = []
        self.peers: set[object] = set()  # client addresses seen by /whole
        self.release = asyncio.Event()
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        for path, handler in (("/whole", self.whole), ("/stream", self.stream),
                              ("/status", self.status), ("/implausible", self.implausible),
                              ("/close", self.close), ("/hang", self.hang),
                              ("/sometimes", self.sometimes)):
            app.router.add_post(path, handler)
        return app

    async def _count(self, request: web.Request) -> None:
        self.hits[request.path] += 1
        self.bodies.append(await request.read())

    async def whole(self, request: web.Request) -> web.Response:
        await self._count(request)
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        return web.Response(body=DONE, content_type="application/json")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        await self._count(request)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for _ in range(5):
            await response.write(TOKEN)
        await response.write(DONE)
        await response.write_eof()
        return response

    async def status(self, request: web.Request) -> web.Response:
        await self._count(request)
        return web.Response(status=503, body=b'{"error":"busy"}')

    async def implausible(self, request: web.Request) -> web.Response:
        await self._count(request)
        return web.Response(body=b'{"done":false}')

    async def close(self, request: web.Request) -> web.Response:
        await self._count(request)
        return web.Response(body=DONE, headers={"Connection": "close"})

    async def hang(self, request: web.Request) -> web.Response:
        await self._count(request)
        await self.release.wait()  # set when the test ends
        return web.Response(body=DONE)

    async def sometimes(self, request: web.Request) -> web.Response:
        await self._count(request)
        if self.hits[request.path] % 2:
            return web.Response(body=DONE)
        return web.Response(status=500, body=b'{"error":"no"}')


@pytest.fixture
async def server():
    srv = Server()
    runner = web.AppRunner(srv.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    srv.url = f"http://127.0.0.1:{port}"
    yield srv
    srv.release.set()
    await runner.cleanup()


def target(server: Server, path: str) -> Target:
    return Target(server.url, path, b'{"model":"m","stream":false}')


# -- against a real server ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/whole", "/stream"])
@pytest.mark.parametrize("concurrency", [1, 7])
async def test_counts_every_request_and_excludes_the_warmup(server, path, concurrency):
    result = await loadgen.run(target(server, path), concurrency, requests=50, warmup=9)

    assert result.ok and result.ok_count == 50 and result.error_count == 0
    assert server.hits[path] == 59  # the warm-up was sent, not recorded
    assert result.latencies_ns.dtype == np.int64 and (result.latencies_ns > 0).all()
    assert result.rps > 0 and result.elapsed_s > 0 and result.client_cpu_s >= 0
    # Throughput is taken while every worker was busy: up to the last request sent.
    assert 0 < result.steady_s <= result.elapsed_s
    assert 50 - concurrency <= result.steady_completed <= 50
    assert set(server.bodies) == {b'{"model":"m","stream":false}'}


async def test_keeps_one_connection_per_worker(server):
    async with LoadGenerator(target(server, "/whole"), 3) as gen:
        await gen.run(requests=5, record=False)
        result = await gen.run(requests=30)
    assert result.ok_count == 30 and result.reconnects == 0
    assert len(server.peers) == 3  # both phases ran on the same three connections


async def test_runs_for_a_duration(server):
    result = await loadgen.run(target(server, "/whole"), 2, duration=0.2)
    assert result.ok and result.ok_count > 0
    assert server.hits["/whole"] == result.ok_count


async def test_counts_error_statuses_by_kind(server):
    result = await loadgen.run(target(server, "/status"), 2, requests=10)
    assert not result.ok
    assert result.ok_count == 0 and result.errors == Counter({"HTTP 503": 10})
    assert "10 x HTTP 503" in result.describe_errors()


async def test_counts_implausible_bodies(server):
    result = await loadgen.run(target(server, "/implausible"), 1, requests=4)
    assert result.errors == Counter({"implausible body": 4}) and not result.ok


async def test_mixed_answers_count_separately(server):
    result = await loadgen.run(target(server, "/sometimes"), 1, requests=10)
    assert result.ok_count == 5 and result.errors == Counter({"HTTP 500": 5})
    assert result.latencies_ns.size == 5


async def test_reconnects_when_the_server_closes_the_connection(server):
    result = await loadgen.run(target(server, "/close"), 2, requests=12)
    assert result.ok and result.ok_count == 12
    assert server.hits["/close"] == 12
    assert result.reconnects >= 10


async def test_a_hung_answer_is_a_timeout_error(server):
    result = await loadgen.run(target(server, "/hang"), 2, requests=2, answer_timeout=0.2)
    assert result.errors == Counter({"timeout": 2}) and result.ok_count == 0


async def test_refuses_to_start_without_a_server():
    with pytest.raises(ConnectionError):
        await loadgen.run(Target("http://127.0.0.1:1", "/", b""), 1, requests=1)


# -- response parsing, byte by byte ----------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


class Collect:
    """Stands in for a phase: lets one request start and keeps what finished."""

    def __init__(self, requests: int) -> None:
        self.remaining = requests
        self.record = True
        self.samples: list[int] = []
        self.errors: Counter[str] = Counter()
        self.retired = False

    def take(self, now_ns: int) -> bool:
        self.remaining -= 1
        return self.remaining >= 0

    def retire(self) -> None:
        self.retired = True


def parse(response: bytes, step: int = 0, validate=loadgen.ollama_done) -> Collect:
    """Feed `response` to a worker all at once (step 0) or `step` bytes at a time."""
    bodies: list[bytes] = []

    def keep(body: bytes) -> bool:
        bodies.append(body)
        return validate(body)

    worker = loadgen._Worker(b"POST / HTTP/1.1\r\n\r\n", keep, lambda w: None)
    worker.transport = FakeTransport()  # type: ignore[assignment]
    phase = Collect(1)
    worker.start(phase)  # type: ignore[arg-type]
    pieces = [response] if not step else [response[i:i + step]
                                          for i in range(0, len(response), step)]
    for piece in pieces:
        worker.data_received(piece)
    phase.bodies = bodies  # type: ignore[attr-defined]
    return phase


def chunked(*parts: bytes, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n" \
           b"Transfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in parts)
    return head + body + b"0\r\n" + trailer + b"\r\n"


WHOLE = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nContent-Type: application/json\r\n\r\n%s" % (
    len(DONE), DONE)


@pytest.mark.parametrize("step", [0, 1, 2, 7, 64])
def test_parses_content_length_in_any_split(step):
    phase = parse(WHOLE, step)
    assert len(phase.samples) == 1 and not phase.errors
    assert phase.bodies == [DONE]  # type: ignore[attr-defined]


@pytest.mark.parametrize("step", [0, 1, 3, 16, 100])
def test_parses_chunked_in_any_split(step):
    phase = parse(chunked(TOKEN, TOKEN, b"\r\n", DONE), step)
    assert len(phase.samples) == 1 and not phase.errors
    assert phase.bodies == [TOKEN + TOKEN + b"\r\n" + DONE]  # type: ignore[attr-defined]


def test_parses_chunk_extensions_and_trailers():
    phase = parse(chunked(TOKEN, DONE, extension=b";name=value", trailer=b"X-Done: 1\r\n"), 5)
    assert len(phase.samples) == 1 and not phase.errors
    assert phase.bodies == [TOKEN + DONE]  # type: ignore[attr-defined]


def test_a_chunk_that_ends_in_an_empty_line_is_not_the_end():
    # The body so far ends with CRLF CRLF, like a finished chunked body would.
    response = chunked(b"ab\r\n", DONE)
    cut = response.index(b"ab\r\n\r\n") + 6
    worker_phase = parse(response[:cut])
    assert worker_phase.samples == [] and not worker_phase.errors
    assert len(parse(response).samples) == 1


def test_a_malformed_response_is_an_error():
    phase = parse(b"SMTP ready\r\n\r\n")
    assert phase.errors == Counter({"malformed response": 1})


def test_bytes_after_the_body_are_an_error():
    phase = parse(WHOLE + b"extra")
    assert phase.errors == Counter({"malformed response": 1}) and not phase.samples


def test_status_and_framing_headers_are_case_insensitive():
    response = b"HTTP/1.1 404 Not Found\r\nCONTENT-LENGTH: 2\r\n\r\n{}"
    assert parse(response).errors == Counter({"HTTP 404": 1})


def test_writes_the_request_once_per_answer():
    worker = loadgen._Worker(b"REQ", loadgen.ollama_done, lambda w: None)
    transport = FakeTransport()
    worker.transport = transport  # type: ignore[assignment]
    phase = Collect(3)
    worker.start(phase)  # type: ignore[arg-type]
    for _ in range(3):
        worker.data_received(WHOLE)
    assert transport.written == [b"REQ"] * 3
    assert len(phase.samples) == 3 and phase.retired


def test_request_bytes():
    t = Target("http://127.0.0.1:8080", "/api/chat", b'{"a":1}')
    assert t.request_bytes() == (
        b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Content-Length: 7\r\nAccept: */*\r\n\r\n{\"a\":1}")
    with pytest.raises(ValueError):
        Target("https://example.com", "/", b"").address()


@pytest.mark.parametrize(("body", "plausible"), [
    (DONE, True),
    (b'{"done": true}', True),
    (TOKEN, False),
    (TOKEN + b'{"error":"node failed"}\n', False),
    (b"", False),
])
def test_ollama_done(body, plausible):
    assert loadgen.ollama_done(body) is plausible


# -- percentiles ---------------------------------------------------------------------------


def test_percentiles_are_nearest_rank_samples():
    ns = np.arange(1, 101, dtype=np.int64) * 1_000_000  # 1..100 ms
    assert loadgen.percentile_ms(ns, 50) == 50.0
    assert loadgen.percentile_ms(ns, 99) == 99.0
    assert loadgen.percentile_ms(ns, 100) == 100.0
    shuffled = np.random.default_rng(0).permutation(ns)
    assert loadgen.percentile_ms(shuffled, 99) == 99.0
    odd = np.array([3, 1, 2], dtype=np.int64) * 1_000_000
    assert loadgen.percentile_ms(odd, 50) == 2.0  # a real sample, not an interpolation
    assert np.isnan(loadgen.percentile_ms(np.empty(0, np.int64), 50))


def test_merge_adds_up_rounds():
    a = LoadResult(4, np.array([1, 2], np.int64), Counter({"HTTP 503": 1}), 1.0, 0.5)
    b = LoadResult(4, np.array([3], np.int64), Counter({"HTTP 503": 2, "timeout": 1}), 2.0, 0.5)
    merged = loadgen.merge([a, b])
    assert merged.latencies_ns.tolist() == [1, 2, 3]
    assert merged.rps == 1.0  # no steady part recorded: ok answers over the whole time
    steady = loadgen.merge([LoadResult(4, np.array([1, 2, 3, 4], np.int64), elapsed_s=4.0,
                                       steady_s=1.0, steady_completed=2)])
    assert steady.rps == 2.0
    assert merged.errors == Counter({"HTTP 503": 3, "timeout": 1})
    assert merged.elapsed_s == 3.0 and merged.completed == 7
    assert merged.client_cpu_us == pytest.approx(1e6 / 7)
