"""The gateway's client to nodes: pooled keep-alive connections and separate timeouts.

`send` returns once the node has answered with a status and the first bytes of its body, so
everything that can go wrong *before the first byte* is raised here as an `UpstreamError`
(retryable on another node); what goes wrong later surfaces from `Reply.chunks`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp

from ollamamax.config import GatewayConfig
from ollamamax.errors import (
    StreamBroken,
    UpstreamConnectError,
    UpstreamStatus,
    UpstreamTimeout,
)

_JSON_HEADERS = {"Content-Type": "application/json"}


class Reply:
    """A node's answer whose status and first bytes have arrived."""

    __slots__ = ("_idle", "_node", "_response", "first", "status")

    def __init__(self, node: str, response: aiohttp.ClientResponse, first: bytes, idle: float):
        self._node = node
        self._response = response
        self._idle = idle
        self.status = response.status
        self.first = first

    @property
    def content_type(self) -> str:
        return self._response.headers.get("Content-Type", "application/json")

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body as it arrives; `StreamBroken` when the node fails or stalls."""
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    data = await content.readany()
            except TimeoutError:
                raise StreamBroken(f"node {self._node} sent nothing for {self._idle:g} s") from None
            except (aiohttp.ClientError, ConnectionError) as exc:
                raise StreamBroken(f"node {self._node} failed mid-answer: {_describe(exc)}") from None
            if not data:
                if not content.is_eof():
                    raise StreamBroken(f"node {self._node} closed the connection mid-answer")
                return
            yield data

    async def read_rest(self) -> bytes:
        parts = [self.first]
        async for data in self.chunks():
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Drop the connection (the node sees the client leave and stops generating)."""
        self._response.close()

    def release(self) -> None:
        """Return a fully read connection to the pool."""
        self._response.release()


class Upstream:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                             ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, node: str, url: str, body: bytes, *, read_all: bool = False) -> Reply:
        """POST `body` to `url`; return when status and first bytes (or all, if asked) are in."""
        response = None
        try:
            async with asyncio.timeout(self.config.ttft_timeout):
                response = await self.session.post(url, data=body, headers=_JSON_HEADERS)
                first = await response.content.readany()
                if response.status >= 500:
                    raise UpstreamStatus(node, response.status, first + await response.read())
                reply = Reply(node, response, first, self.config.idle_timeout)
                if read_all:
                    reply.first = await reply.read_rest()
                return reply
        except TimeoutError:
            _close(response)
            raise UpstreamTimeout(node, f"no answer within {self.config.ttft_timeout:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(node, f"cannot connect: {_describe(exc)}") from None
        except StreamBroken as exc:
            _close(response)
            raise UpstreamConnectError(node, exc.message) from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            _close(response)
            raise UpstreamConnectError(node, _describe(exc)) from None
        except BaseException:
            _close(response)
            raise

    async def get_json(self, url: str, timeout: float) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout), self.session.get(url) as response:
            return response.status, await response.read()


def _close(response: aiohttp.ClientResponse | None) -> None:
    if response is not None:
        response.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error) if exc.os_error else str(exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    return str(exc) or type(exc).__name__
