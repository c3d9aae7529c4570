"""The gateway's ``POST /api/pull``: the model is pulled once, into one node.

The node is the healthy one with the most free disk (``disk.free_bytes`` of its telemetry),
any healthy one when no node reports it. From there the sync planner (docs/sync.md) copies it
to the other nodes over the LAN, so the registry is asked once per cluster. The answer is the
node's own (Ollama's NDJSON progress, or one object with ``"stream": false``), with the chosen
node named in an ``X-OllamaMax-Node`` header and, when streamed, in a first line
``{"status": "pulling into node <id>"}``.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from ollamamax.api.http import JSON, NDJSON, dumps
from ollamamax.errors import Unavailable, UpstreamConnectError
from ollamamax.gateway.upstream import Upstream
from ollamamax.node import pull as node_pull
from ollamamax.scheduler import ClusterView

log = logging.getLogger(__name__)

NODE_HEADER = "X-OllamaMax-Node"


def choose_node(view: ClusterView) -> int | None:
    """The routable node with the most free disk; unknown disk counts as none free, so a
    node that reports space wins over one that does not; ties go to the fewest requests in
    flight, then the lowest index (deterministic)."""
    candidates = [i for i in view.present_nodes() if view.routable[i]]
    if not candidates:
        return None

    def free(i: int) -> int:
        disk = view.info[i].get("disk") if i < len(view.info) else None
        value = disk.get("free_bytes") if isinstance(disk, dict) else None
        return value if isinstance(value, int) else -1

    return min(candidates, key=lambda i: (-free(i), int(view.in_flight[i]), i))


async def forward(request: web.Request, view: ClusterView, upstream: Upstream,
                  body: bytes, connect_timeout: float) -> web.StreamResponse:
    req = node_pull.decode(body)  # a bad name is refused here, not by a node
    i = choose_node(view)
    if i is None:
        raise Unavailable("no healthy node to pull the model into")
    node_id, url = view.ids[i], view.urls[i]
    log.info("pulling %s into node %s", req.model_name, node_id)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
    try:
        reply = await upstream.session.post(url + "/api/pull", data=body, timeout=timeout,
                                            headers={"Content-Type": JSON})
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamConnectError(node_id, f"pull: {exc or type(exc).__name__}") from None
    async with reply:
        headers = {NODE_HEADER: node_id, "Content-Type": reply.headers.get("Content-Type", JSON)}
        if reply.status != 200 or req.stream is False:
            return web.Response(status=reply.status, body=await reply.read(), headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Type": NDJSON})
        await response.prepare(request)
        await response.write(dumps({"status": f"pulling into node {node_id}"}) + b"\n")
        try:
            async for data in reply.content.iter_any():
                await response.write(data)
        except (aiohttp.ClientError, OSError) as exc:
            await response.write(b"\n" + dumps(
                {"error": f"node {node_id} failed mid-pull: {exc or type(exc).__name__}"}) + b"\n")
        await response.write_eof()
        return response
