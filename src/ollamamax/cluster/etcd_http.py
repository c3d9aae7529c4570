"""HTTP to etcd's v3 JSON gateway: several endpoints, failover, timeouts and TLS.

Failover follows etcd's own Go client. A call moves on to the next endpoint when no
connection could be made (nothing was sent). A call that is safe to repeat (reads, lease
grants and keep-alives) also moves on when the connection broke or timed out after sending,
or when the member answered that it cannot serve now (gRPC code 14, e.g. "no leader"). A
write whose answer was lost is not sent again, since it may have been applied: the caller gets
`StoreUnavailable` and decides. Endpoints are tried in turn until the call's timeout, with a
short pause after each full round, so a call rides out a restart or a leader election that
ends within the timeout; the endpoint that answered is tried first next time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import msgspec

from ollamamax.errors import ConfigError, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

UNAVAILABLE = 14  # gRPC status: the member cannot serve now; another one may
ROUND_PAUSE_S = 0.1  # after every endpoint failed once, before the next round


class EtcdError(StoreError):
    """etcd refused a call; `code` is its gRPC status (5: not found, 11: out of range, ...)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"etcd: {message} (code {code})")
        self.code = code


class _ErrorReply(msgspec.Struct):
    error: str = ""
    message: str = ""
    code: int = 0


class _Retry(Exception):
    """One endpoint failed in a way that another one may not."""


def tls_context(ca_file: str | None, cert_file: str | None,
                key_file: str | None) -> ssl.SSLContext | None:
    """A client context trusting `ca_file` and presenting `cert_file`; None for the defaults."""
    if key_file and not cert_file:
        raise ConfigError("an etcd client key needs its certificate (cert_file)")
    if not (ca_file or cert_file):
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"etcd TLS files: {exc}") from exc
    return context


class EtcdHttp:
    def __init__(self, endpoints: Sequence[str], *, timeout: float, connect_timeout: float,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.endpoints = [_endpoint(e) for e in endpoints]
        if not self.endpoints:
            raise ConfigError("etcd needs at least one endpoint URL")
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._ssl = ssl_context
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        # watches hold their connection for as long as they run: their own pool, without a
        # limit, so a process with many watches never starves its calls (or its watches)
        self._watch_session: aiohttp.ClientSession | None = None
        self._streams: set[aiohttp.ClientResponse] = set()  # open watches, ended by `close`

    @property
    def endpoint(self) -> str:
        """The endpoint tried first: the one that answered last."""
        return self.endpoints[self._current]

    async def call(self, path: str, body: dict[str, Any], *, repeatable: bool) -> bytes:
        """POST `body` as JSON and return the answer's bytes, failing over as described above."""
        data = msgspec.json.encode(body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        last = "no endpoint tried"
        while True:
            for index in self._rotation():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise StoreUnavailable(f"etcd {path}: no endpoint answered within "
                                           f"{self.timeout:g} s; last: {last}")
                try:
                    answer = await self._post(self.endpoints[index], path, data, remaining,
                                              repeatable)
                except _Retry as exc:
                    last = f"{self.endpoints[index]}: {exc}"
                    log.debug("etcd %s failed (%s); trying the next endpoint", path, last)
                    continue
                self._current = index
                return answer
            await asyncio.sleep(min(ROUND_PAUSE_S, max(0.0, deadline - loop.time())))

    async def _post(self, endpoint: str, path: str, data: bytes, remaining: float,
                    repeatable: bool) -> bytes:
        timeout = aiohttp.ClientTimeout(total=remaining,
                                        sock_connect=min(self.connect_timeout, remaining))
        try:
            async with self._client().post(endpoint + path, data=data, timeout=timeout) as resp:
                answer = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise StoreError(f"etcd {endpoint}: TLS certificate refused: {exc}") from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise _Retry(_describe(exc)) from exc  # never connected: nothing was sent
        except (aiohttp.ClientError, TimeoutError) as exc:
            if repeatable:
                raise _Retry(_describe(exc)) from exc
            raise StoreUnavailable(f"etcd {endpoint}{path}: {_describe(exc)}; the write may or "
                                   "may not have been applied") from exc
        if status != 200:
            _raise_error(answer, status, repeatable)
        return answer

    async def stream(self, path: str, body: dict[str, Any],
                     headers: dict[str, str]) -> AsyncIterator[bytes]:
        """POST to the current endpoint and yield the answer line by line, for as long as it
        streams. Any failure moves the current endpoint on before it propagates."""
        endpoint = self.endpoint
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        try:
            async with self._client(watch=True).post(
                    endpoint + path, data=msgspec.json.encode(body), headers=headers,
                    timeout=timeout) as resp:
                if resp.status != 200:
                    _raise_error(await resp.read(), resp.status, repeatable=False)
                self._streams.add(resp)
                try:
                    async for line in _lines(resp.content):
                        yield line
                finally:
                    self._streams.discard(resp)
        except (aiohttp.ClientError, TimeoutError, StoreError):
            self._pass(endpoint)
            raise

    def _pass(self, endpoint: str) -> None:
        """Move on from a failed `endpoint`, unless another call already did."""
        if self.endpoint == endpoint:
            self._current = (self._current + 1) % len(self.endpoints)

    def _rotation(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._current + i) % n for i in range(n)]

    def _client(self, *, watch: bool = False) -> aiohttp.ClientSession:
        if watch:
            if self._watch_session is None:
                self._watch_session = self._new_session(limit=0)
            return self._watch_session
        if self._session is None:  # created on first use, inside the running loop
            self._session = self._new_session(limit=100)
        return self._session

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl else True, limit=limit),
            headers={"Content-Type": "application/json"})

    async def close(self) -> None:
        for resp in list(self._streams):  # closing the session alone leaves them reading
            resp.close()
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Lines of any length (aiohttp's readline stops at 128 KiB; one watch answer can be more)."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _raise_error(answer: bytes, status: int, repeatable: bool) -> None:
    try:
        reply = msgspec.json.decode(answer, type=_ErrorReply)
    except msgspec.DecodeError:
        reply = _ErrorReply(message=f"HTTP {status}: {answer[:200]!r}")
    message = reply.message or reply.error or f"HTTP {status}"
    if reply.code == UNAVAILABLE or status == 503:
        if repeatable:
            raise _Retry(message)
        raise StoreUnavailable(f"etcd: {message}")
    raise EtcdError(reply.code, message)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _endpoint(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"etcd endpoint {url!r} must be an http:// or https:// URL")
    return url
