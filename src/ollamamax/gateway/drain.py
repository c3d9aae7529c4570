"""A gateway's graceful stop: no new requests, in-flight ones finish, then the rest end.

On SIGTERM the server stops listening and closes idle keep-alive connections (aiohttp's
runner does that before its shutdown hooks run); `drain` is that hook: it waits until no
request is in flight, at most `timeout` seconds, and then ends whatever is left: a stream
gets Ollama's error chunk ("the gateway is shutting down"), a request still waiting for its
first byte an error answer. Nothing is retried after the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ollamamax.gateway.proxy import RequestPath
from ollamamax.gateway.upstream import Upstream

log = logging.getLogger(__name__)

POLL_S = 0.05
WRITE_ERRORS_S = 2.0  # after the deadline: time for handlers to write their error chunks


async def drain(path: RequestPath, upstream: Upstream, timeout: float) -> str:
    """Wait for in-flight requests (at most `timeout` s), then end the rest; one sentence."""
    started = time.monotonic()
    waiting = path.in_flight
    if waiting:
        log.info("draining: %d requests in flight, waiting up to %g s", waiting, timeout)
    if await _idle_within(path, timeout):
        return f"drained: {waiting} requests in flight finished in " \
               f"{time.monotonic() - started:.1f} s"
    left = path.in_flight
    path.stopping = True
    upstream.abandon_all(f"the gateway is shutting down (its drain deadline of {timeout:g} s "
                         "passed)")
    await _idle_within(path, WRITE_ERRORS_S)
    return f"drain deadline of {timeout:g} s passed: {left} requests were still in flight " \
           f"and were ended with an error ({waiting - left} finished)"


async def _idle_within(path: RequestPath, seconds: float) -> bool:
    """Poll until no request is in flight; False if some still are after `seconds`."""
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        if not path.in_flight:
            return True
        await asyncio.sleep(POLL_S)
    return not path.in_flight
