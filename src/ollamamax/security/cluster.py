"""The cluster token: what a node asks of gateways and of other nodes.

Calls inside the cluster carry ``X-OllamaMax-Cluster-Token: <token>``: a header of its own,
so it never collides with a client's ``Authorization`` (the API key a gateway checks) when a
node is called through a gateway-like proxy. Comparison is constant-time.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ollamamax.errors import Unauthorized

HEADER = "X-OllamaMax-Cluster-Token"


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
