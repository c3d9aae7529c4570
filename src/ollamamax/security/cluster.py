"""The cluster token: what a node asks of gateways and of other nodes.

Calls inside the cluster carry ``X-OllamaMax-Cluster-Token: <token>``: a header of its own,
so it never collides with a client's ``Authorization`` (the API key a gateway checks) when a
node is called through a gateway-like proxy. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from ollamamax.config import SecurityConfig
from ollamamax.errors import Unauthorized

HEADER = "X-OllamaMax-Cluster-Token"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def cluster_headers(token: str) -> dict[str, str]:
    """Headers to send with a call to a node ({} when no token is configured)."""
    return {HEADER: token} if token else {}


def token_ok(request: web.Request, token: str) -> bool:
    """True when no token is configured or the request carries the right one."""
    if not token:
        return True
    given = request.headers.get(HEADER, "")
    return hmac.compare_digest(given.encode(), token.encode())


def require_cluster_token(request: web.Request, token: str) -> None:
    """Raise a 401 (Ollama's error shape) unless the request carries the cluster token."""
    if not token_ok(request, token):
        raise Unauthorized("this endpoint serves cluster members only: a valid cluster token "
                           f"({HEADER}) is required")


def headers_for(config: SecurityConfig) -> dict[str, str]:
    """`cluster_headers` of this process's configured token (what a gateway or a node sends
    when it calls a node)."""
    return cluster_headers(config.token())


def node_middleware(token: str) -> Middleware:
    """A node's check: every path but ``/health`` needs the cluster token (401 otherwise), so
    a load balancer or an orchestrator can still probe liveness."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/health":
            require_cluster_token(request, token)
        return await handler(request)

    return check


def open_warning(listen: str, token: str) -> str:
    """A warning when a node without a cluster token listens beyond this machine."""
    from ollamamax.config import parse_listen

    host, _ = parse_listen(listen)
    if token or host in ("127.0.0.1", "::1", "localhost"):
        return ""
    return (f"the node listens on {listen} with no cluster token: anyone who can reach it may "
            "use its engine (set security.cluster_token on nodes and gateways)")
