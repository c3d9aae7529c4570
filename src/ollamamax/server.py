"""Running an aiohttp application as a process: uvloop, signals, readiness announcement."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from ollamamax.config import parse_listen
from ollamamax.errors import ConfigError


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        asyncio.run(main)
        return
    uvloop.run(main)


async def start_site(app: web.Application, listen: str, shutdown_timeout: float = 60.0,
                     ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, str]:
    """Serve `app` on `listen` (port 0 picks a free one); return the runner and the URL
    (https with an `ssl_context`: `security.tls`).

    `runner.cleanup()` stops listening, closes idle connections, runs the app's shutdown
    hooks, then gives handlers still running `shutdown_timeout` seconds before cancelling."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True,
                       ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    server = site._server
    assert server is not None and server.sockets  # type: ignore[union-attr]
    actual = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"{'https' if ssl_context else 'http'}://{shown}:{actual}"


def announce(path: str | os.PathLike[str], **info: Any) -> None:
    """Write `info` as JSON to `path` atomically, so a parent never reads half a file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps({**info, "pid": os.getpid()}))
    os.replace(tmp, target)


async def wait_for_stop_signal() -> int:
    """Block until SIGINT or SIGTERM; return the signal number."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[int] = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda s=sig: got.done() or got.set_result(s))
    try:
        return await got
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
