"""The gateway's client to nodes: pooled keep-alive connections and separate timeouts.

`send` returns once the node has answered with a status and the first bytes of its body, so
everything that can go wrong *before the first byte* is raised here as an `UpstreamError`
(retryable on another node); what goes wrong later surfaces from `Reply.chunks`.

Inference POSTs go through `node_http` (a lean HTTP/1.1 client: the hot path); health checks
and fan-out GETs through aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp

from ollamamax.config import GatewayConfig, SecurityConfig
from ollamamax.errors import (
    StreamBroken,
    StreamStopped,
    UpstreamConnectError,
    UpstreamRefused,
    UpstreamStatus,
    UpstreamTimeout,
)
from ollamamax.gateway import node_http


class Reply:
    """A node's answer whose status and first bytes have arrived."""

    __slots__ = ("_deadline", "_idle", "_node", "_response", "first", "status")

    def __init__(self, node: str, response: node_http.Response, first: bytes, idle: float,
                 deadline: float = 0.0):
        self._node = node
        self._response = response
        self._idle = idle
        self._deadline = deadline  # time.perf_counter() by which the answer must end (0: none)
        self.status = response.status
        self.first = first

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body as it arrives; `StreamBroken` when the node fails or stalls,
        or the request's total time runs out."""
        while True:
            idle = self._idle
            if self._deadline:
                idle = max(0.0, min(idle, self._deadline - time.perf_counter()))
            try:
                data = await self._response.piece(idle)
            except TimeoutError:
                if idle < self._idle:
                    raise StreamStopped("the request's total timeout ran out") from None
                raise StreamBroken(f"node {self._node} sent nothing for {self._idle:g} s") from None
            except node_http.Abandoned as exc:
                raise StreamStopped(str(exc)) from None
            except ConnectionError as exc:
                raise StreamBroken(f"node {self._node} failed mid-answer: {_describe(exc)}") from None
            if not data:
                return
            yield data

    def close(self) -> None:
        """Drop the connection (the node sees the client leave and stops generating)."""
        self._response.close()

    def release(self) -> None:
        """Return a fully read connection to the pool."""
        self._response.release()


class Upstream:
    """Every call to nodes: the cluster token on each, https verified as `[security]` says."""

    def __init__(self, config: GatewayConfig, security: SecurityConfig | None = None) -> None:
        from ollamamax.security import cluster, tls

        self.config = config
        security = security or SecurityConfig()
        self._headers = cluster.headers_for(security)
        self._tls = tls.client_context(security) if tls.wants_client_context(security) else None
        self._session: aiohttp.ClientSession | None = None
        self._nodes = node_http.NodeClient(keepalive=30.0, headers=self._headers, tls=self._tls)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                             ttl_dns_cache=300, ssl=self._tls or True)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout),
            )
        return self._session

    async def close(self) -> None:
        self._nodes.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, node: str, url: str, body: bytes, *, read_all: bool = False,
                   deadline: float = 0.0) -> Reply:
        """POST `body` to `url`; return when status and first bytes (or all, if asked) are in.

        `deadline`: the `time.perf_counter()` by which the whole request must end (0: none);
        the first byte must come within the TTFT timeout and before it."""
        response = None
        loop = asyncio.get_running_loop()
        ttft = self.config.ttft_timeout
        if deadline:
            ttft = max(0.0, min(ttft, deadline - time.perf_counter()))
        first_by = loop.time() + ttft
        try:
            response = await self._nodes.post(url, body, self.config.connect_timeout, ttft)
            left = max(0.0, first_by - loop.time())
            first = await response.read(left) if read_all else await response.piece(left)
            if response.status >= 500:
                rest = b"" if read_all else await response.read(max(0.0, first_by - loop.time()))
                status = response.status
                response.release()
                response = None  # back in the pool: nothing left to close
                raise UpstreamStatus(node, status, first + rest)
            return Reply(node, response, first, self.config.idle_timeout, deadline)
        except TimeoutError:
            _close(response)
            why = "" if ttft == self.config.ttft_timeout else " (the request's total timeout)"
            raise UpstreamTimeout(node, f"no answer within {ttft:g} s{why}") from None
        except node_http.ConnectFailed as exc:
            raise UpstreamRefused(node, f"cannot connect: {exc}") from None
        except node_http.Abandoned as exc:
            _close(response)
            raise UpstreamConnectError(node, str(exc)) from None
        except (ConnectionError, OSError) as exc:
            _close(response)
            raise UpstreamConnectError(node, _describe(exc)) from None
        except BaseException:
            _close(response)
            raise

    def abandon(self, url: str, reason: str) -> int:
        """Fail the requests to `url` still waiting for their first byte (see node_http)."""
        return self._nodes.abandon(url, reason)

    def abandon_all(self, reason: str) -> int:
        """End every exchange with nodes now (the gateway's drain deadline has passed)."""
        return self._nodes.abandon_all(reason)

    async def get_json(self, url: str, timeout: float) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout), self.session.get(url) as response:
            return response.status, await response.read()


def _close(response: node_http.Response | None) -> None:
    if response is not None:
        response.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, node_http.Closed):
        return str(exc) or "server disconnected"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
