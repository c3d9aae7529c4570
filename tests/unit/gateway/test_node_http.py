"""The gateway's lean HTTP/1.1 client against servers that answer byte for byte as scripted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from ollamamax.gateway import node_http

Script = Callable[[bytes], list[bytes] | None]


class Scripted(asyncio.Protocol):
    """Answers each request with the byte pieces `script(request)` gives (None: close)."""

    connections = 0
    transports: list[asyncio.Transport] = []

    def __init__(self, script: Script, pause: float) -> None:
        self.script = script
        self.pause = pause
        self.buffer = b""
        Scripted.connections += 1

    def connection_made(self, transport):
        self.transport = transport
        Scripted.transports.append(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        if len(rest) < length:
            return
        self.buffer = rest[length:]
        asyncio.get_running_loop().create_task(self.answer(head + sep + rest[:length]))

    async def answer(self, request: bytes) -> None:
        pieces = self.script(request)
        for piece in pieces if pieces is not None else [None]:
            if piece is None:  # the script says: hang up now
                self.transport.close()
                return
            self.transport.write(piece)
            await asyncio.sleep(self.pause)


@pytest.fixture
async def serve():
    servers = []

    async def start(script: Script, pause: float = 0.0) -> str:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Scripted(script, pause), "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/api/chat"

    yield start
    for transport in Scripted.transports:
        transport.close()
    Scripted.transports.clear()
    for server in servers:
        server.close()
        await server.wait_closed()


def fixed(body: bytes, status: bytes = b"200 OK") -> Script:
    return lambda _req: [b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body]


def chunked(*chunks: bytes) -> Script:
    def script(_req: bytes) -> list[bytes]:
        out = [b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"]
        out += [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks]
        return [*out, b"0\r\n\r\n"]
    return script


async def test_content_length_answer_and_connection_reuse(serve):
    url = await serve(fixed(b'{"ok": true}'))
    client = node_http.NodeClient()
    before = Scripted.connections
    for _ in range(3):
        response = await client.post(url, b"{}", 1.0, 1.0)
        assert response.status == 200 and response.content_type == "application/json"
        assert await response.read(1.0) == b'{"ok": true}'
        response.release()
    assert Scripted.connections - before == 1  # one keep-alive connection served all three
    client.close()


async def test_chunked_stream_arrives_piece_by_piece(serve):
    url = await serve(chunked(b'{"a":1}\n', b'{"b":2}\n', b'{"done":true}\n'), pause=0.01)
    client = node_http.NodeClient()
    response = await client.post(url, b"{}", 1.0, 1.0)
    pieces = []
    while piece := await response.piece(1.0):
        pieces.append(piece)
    assert b"".join(pieces) == b'{"a":1}\n{"b":2}\n{"done":true}\n'
    assert len(pieces) >= 2  # not buffered to the end
    assert response.done
    client.close()


async def test_request_bytes_are_well_formed(serve):
    seen = []
    url = await serve(lambda req: seen.append(req) or fixed(b"{}")(req))
    client = node_http.NodeClient()
    response = await client.post(url, b'{"model": "m"}', 1.0, 1.0)
    await response.read(1.0)
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/chat HTTP/1.1\r\n")
    assert b"Content-Length: 14" in head and body == b'{"model": "m"}'
    client.close()


async def test_error_status_is_reported_with_its_body(serve):
    url = await serve(fixed(b'{"error": "busy"}', b"503 Service Unavailable"))
    client = node_http.NodeClient()
    response = await client.post(url, b"{}", 1.0, 1.0)
    assert response.status == 503 and await response.read(1.0) == b'{"error": "busy"}'
    client.close()


async def test_connection_closed_before_any_answer_raises_closed(serve):
    url = await serve(lambda _req: None)
    client = node_http.NodeClient()
    with pytest.raises(node_http.Closed):
        await client.post(url, b"{}", 1.0, 1.0)
    client.close()


async def test_connection_closed_mid_body_raises_on_read(serve):
    url = await serve(lambda _req: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
                                    None], pause=0.01)
    client = node_http.NodeClient()
    response = await client.post(url, b"{}", 1.0, 1.0)
    assert await response.piece(1.0) == b"partial"
    with pytest.raises(node_http.Closed):
        await response.piece(1.0)
    assert not response.done
    client.close()


async def test_stale_pooled_connection_is_replaced_once(serve):
    answers = iter([fixed(b"first"), lambda _req: None, fixed(b"second")])

    def one_after_another(request: bytes) -> list[bytes] | None:
        return next(answers)(request)

    url = await serve(one_after_another)
    client = node_http.NodeClient()
    response = await client.post(url, b"{}", 1.0, 1.0)
    assert await response.read(1.0) == b"first"
    response.release()
    # The node drops the pooled connection on the next request: a fresh one answers.
    response = await client.post(url, b"{}", 1.0, 1.0)
    assert await response.read(1.0) == b"second"
    client.close()


async def test_silence_times_out(serve):
    url = await serve(lambda _req: [])
    client = node_http.NodeClient()
    with pytest.raises(TimeoutError):
        await client.post(url, b"{}", 1.0, 0.05)
    client.close()


async def test_malformed_answer_is_closed_not_trusted(serve):
    url = await serve(lambda _req: [b"NOT HTTP AT ALL\r\n\r\n"])
    client = node_http.NodeClient()
    with pytest.raises(node_http.Closed, match="malformed"):
        await client.post(url, b"{}", 1.0, 1.0)
    client.close()


async def test_refused_connection_raises_connection_error():
    client = node_http.NodeClient()
    with pytest.raises(ConnectionError):
        await client.post("http://127.0.0.1:1/api/chat", b"{}", 1.0, 1.0)


def test_only_http_and_https_are_spoken():
    with pytest.raises(ValueError, match="http://"):
        node_http.NodeClient()._target("ftp://example.com/api/chat")
    pool, _ = node_http.NodeClient()._target("https://example.com/api/chat")
    assert pool.port == 443 and pool.tls is not None  # security.tls: nodes over https
