"""A lean keep-alive HTTP/1.1 client for the request path: POST to a node, stream the answer.

aiohttp's client costs about 190 us of CPU per request on a 2-core VM (request object,
headers multidict, cookie jar, connector bookkeeping, a StreamReader per response): measured,
it kept the gateway under 2,000 requests/s (docs/benchmarks.md). Here one `asyncio.Protocol`
per connection feeds bytes to llhttp (the `httptools` binding, the parser Node.js and uvicorn
use) and hands body pieces to the one reader. Health checks and fan-out GETs stay on aiohttp;
only the hot POST path uses this.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

import httptools

from ollamamax.logs import request_id


class Closed(ConnectionError):
    """The node closed the connection (before or during the answer)."""


class ConnectFailed(ConnectionError):
    """No connection could be opened (refused, unreachable, timed out): nothing was sent."""


class Abandoned(ConnectionError):
    """The gateway gave up on the answer (the node was declared down, or it shuts down)."""


class _Conn(asyncio.Protocol):
    """One connection, one request at a time; llhttp (httptools) parses the answers."""

    def __init__(self, pool: _HostPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._pieces: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._head_done = False
        self._done = False
        self._framed = False  # Content-Length or chunked: the end is known without a close
        self._exc: BaseException | None = None
        self.status = 0
        self.content_type = ""
        self.keep_alive = True

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.keep_alive = False
        self.pool.forget(self)
        if self._head_done and not self._framed:
            self._done = True  # a body delimited by the end of the connection
        elif not self._done and self._exc is None:
            self._exc = exc or Closed("server disconnected")
        self._wake()

    def data_received(self, data: bytes) -> None:
        if self._done:  # bytes after a complete answer: the connection cannot be trusted
            self.keep_alive = False
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._exc = Closed(f"malformed answer: {exc}")
            self.keep_alive = False
            self.abort()
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self.content_type = value.decode("latin-1")
        elif lower in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive() and self._framed
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)

    def on_message_complete(self) -> None:
        self._done = True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def request(self, data: bytes) -> None:
        assert self.transport is not None
        self._head_done = self._done = self._framed = False
        self.content_type = ""
        self._pieces.clear()
        self.transport.write(data)

    async def head(self, timeout: float | None) -> int:
        while not self._head_done:
            if self._exc is not None:
                raise self._exc
            await self._wait(timeout)
        return self.status

    async def piece(self, timeout: float | None) -> bytes:
        """The next body bytes; b"" at the end; `TimeoutError` after `timeout` s of silence."""
        while not self._pieces:
            if self._done:
                return b""
            if self._exc is not None:
                raise self._exc
            await self._wait(timeout)
        if len(self._pieces) == 1:
            return self._pieces.popleft()
        data = b"".join(self._pieces)
        self._pieces.clear()
        return data

    @property
    def done(self) -> bool:
        return self._done

    @property
    def awaiting_head(self) -> bool:
        """A request was sent and nothing of its answer has arrived yet."""
        return self._waiter is not None and not self._head_done

    def fail(self, exc: BaseException) -> None:
        """End the exchange with `exc` (raised to the reader) and drop the connection."""
        if self._exc is None and not self._done:
            self._exc = exc
        self.keep_alive = False
        self.abort()
        self._wake()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _HostPool:
    """Idle keep-alive connections to one host, most recently used first."""

    def __init__(self, host: str, port: int, keepalive: float,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.tls = tls  # https: the context that verifies the node (`security.tls`)
        self.idle: list[_Conn] = []
        self.open: set[_Conn] = set()  # every live connection, idle or busy
        self.host_header = f"{host}:{port}".encode("latin-1")

    async def acquire(self, connect_timeout: float) -> tuple[_Conn, bool]:
        """A connection and whether it was reused (a reused one may have been closed)."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and now - conn.idle_since < self.keepalive:
                return conn, True
            conn.abort()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self), self.host, self.port, ssl=self.tls,
                    server_hostname=self.host if self.tls is not None else None)
        except TimeoutError:
            raise ConnectFailed(f"connect timed out after {connect_timeout:g} s") from None
        except OSError as exc:  # ssl.SSLError too: a node whose certificate is not trusted
            raise ConnectFailed(exc.strerror or str(exc) or type(exc).__name__) from None
        self.open.add(conn)
        return conn, False

    def release(self, conn: _Conn) -> None:
        if conn.done and conn.keep_alive and conn.transport is not None:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            conn.abort()

    def forget(self, conn: _Conn) -> None:
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def abandon(self, reason: str, waiting_only: bool) -> int:
        """Fail the exchanges on this host's connections (only those still waiting for an
        answer's first byte, if `waiting_only`); how many were failed."""
        failed = 0
        for conn in list(self.open):
            if conn.awaiting_head or (not waiting_only and not conn.done):
                conn.fail(Abandoned(reason))
                failed += 1
            elif not waiting_only:
                conn.abort()
        return failed

    def close(self) -> None:
        for conn in list(self.open):
            conn.abort()
        self.idle.clear()


class NodeClient:
    """POST JSON to nodes over pooled keep-alive connections.

    `headers` go with every request (the cluster token: `security.cluster`); `tls` verifies
    https nodes (None: the system's CAs)."""

    def __init__(self, keepalive: float = 30.0, headers: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.keepalive = keepalive
        self._extra = b"".join(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1"))
                               for k, v in (headers or {}).items())
        self._tls = tls
        self._pools: dict[tuple[str, int], _HostPool] = {}
        self._targets: dict[str, tuple[_HostPool, bytes]] = {}

    def _target(self, url: str) -> tuple[_HostPool, bytes]:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"the fast client speaks http:// and https:// only, not {url!r}")
            key = (parts.hostname, _port(parts.scheme, parts.port))
            pool = self._pools.get(key)
            if pool is None:
                tls = (self._tls or ssl.create_default_context()) if parts.scheme == "https" \
                    else None
                pool = self._pools[key] = _HostPool(key[0], key[1], self.keepalive, tls)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found = self._targets[url] = (pool, path.encode("latin-1"))
        return found

    async def post(self, url: str, body: bytes, connect_timeout: float,
                   ttfb_timeout: float) -> Response:
        """Send; return once the head has arrived. A reused connection the node had closed is
        replaced once, as no byte of the request can have been processed."""
        pool, path = self._target(url)
        rid = request_id.get()  # the client's request id goes to the node (X-Request-Id)
        data = (b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"%s%sContent-Length: %d\r\n\r\n" % (
                    path, pool.host_header, b"X-Request-Id: %s\r\n" % rid.encode() if rid else b"",
                    self._extra, len(body))) + body
        for _ in range(2):
            conn, reused = await pool.acquire(connect_timeout)
            conn.request(data)
            try:
                await conn.head(ttfb_timeout)
            except Closed:
                if reused:
                    continue
                raise
            except BaseException:
                conn.abort()
                raise
            return Response(pool, conn)
        raise Closed("server disconnected")

    def abandon(self, url: str, reason: str) -> int:
        """Fail the requests to `url`'s host still waiting for a first byte (the node was
        declared down: they may go to another node, as nothing reached their clients)."""
        parts = urlsplit(url)
        pool = self._pools.get((parts.hostname or "", _port(parts.scheme, parts.port)))
        return pool.abandon(reason, waiting_only=True) if pool is not None else 0

    def abandon_all(self, reason: str) -> int:
        """Fail every exchange in progress with `reason` and drop every connection."""
        return sum(pool.abandon(reason, waiting_only=False) for pool in self._pools.values())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


def _port(scheme: str, port: int | None) -> int:
    return port or (443 if scheme == "https" else 80)


class Response:
    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: _HostPool, conn: _Conn) -> None:
        self._pool = pool
        self._conn = conn

    @property
    def status(self) -> int:
        return self._conn.status

    @property
    def content_type(self) -> str:
        return self._conn.content_type or "application/json"

    async def piece(self, timeout: float | None) -> bytes:
        return await self._conn.piece(timeout)

    async def read(self, timeout: float | None) -> bytes:
        """The rest of the body, all of it within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        parts = []
        while data := await self._conn.piece(
                None if deadline is None else max(0.0, deadline - loop.time())):
            parts.append(data)
        return b"".join(parts)

    @property
    def done(self) -> bool:
        return self._conn.done

    def release(self) -> None:
        """Back to the pool if the answer was read to its end, else closed."""
        self._pool.release(self._conn)

    def close(self) -> None:
        self._conn.abort()
