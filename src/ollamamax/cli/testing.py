"""``ollamamax testing``: tools for testing a deployment (fault injection)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ollamamax import logs, server
from ollamamax.cli.options import AnnounceFile, LogFormat, LogLevel

log = logging.getLogger("ollamamax.testing")

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Tools for testing OllamaMax: a fault-injecting proxy, a model registry.")


@app.command()
def faultproxy(
    upstream: Annotated[str, typer.Option(help="HOST:PORT (or URL) the proxy forwards to.")],
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (port 0: any free).")
                      ] = "127.0.0.1:0",
    toxic: Annotated[list[str] | None, typer.Option(
        help="TYPE[@STREAM][:key=value,...], e.g. latency@downstream:latency=200,jitter=50 "
             "or reset_peer@upstream:timeout=0,toxicity=0.5 (repeatable).")] = None,
    api: Annotated[str | None, typer.Option(
        help="HOST:PORT for an HTTP API to change toxics at run time (toxiproxy's JSON: "
             "GET/POST/DELETE /toxics, DELETE /toxics/NAME, POST /proxy {enabled}).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for toxicity and jitter.")] = None,
    announce_file: AnnounceFile = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """A TCP proxy with toxiproxy's toxics: latency ± jitter, bandwidth, slow_close,
    timeout (blackhole), reset_peer, slicer, limit_data; per stream, with a probability.

    Put it between a gateway and a node (give the gateway the proxy's address as the
    node's URL) to see what a slow, resetting or hanging link does.
    """
    from ollamamax.testing.faultproxy import Toxic

    toxics = [Toxic.parse(spec) for spec in toxic or ()]
    logs.setup(log_level or "info", log_format or "text")
    server.run(_serve(upstream, listen, toxics, api, seed, announce_file))


@app.command()
def registry(
    dir: Annotated[str, typer.Option("--dir", help="A models folder in Ollama's layout.")],
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (port 0: any free).")
                      ] = "127.0.0.1:0",
    redirect: Annotated[bool, typer.Option(
        help="Answer blob requests with a 307 to /cdn/..., as the real registry does.")] = False,
    announce_file: AnnounceFile = None,
) -> None:
    """An Ollama registry serving a models folder (manifests and blobs, Range, HEAD), for
    `ollamamax models pull NAME --registry URL` and `ollama pull` tests."""
    from ollamamax.testing.registry import serve

    server.run(serve(dir, listen, redirect, announce_file))


async def _serve(upstream: str, listen: str, toxics: list, api: str | None, seed: int | None,
                 announce_file: str | None) -> None:
    import random

    from ollamamax.testing.faultproxy import FaultProxy, api_app

    proxy = FaultProxy(upstream, listen, toxics=toxics,
                       rng=random.Random(seed) if seed is not None else None)
    url = await proxy.start()
    runner = api_url = None
    if api is not None:
        runner, api_url = await server.start_site(api_app(proxy), api, shutdown_timeout=1.0)
    log.info("fault proxy on %s -> %s:%d with %s; API %s", url, *proxy.upstream,
             ", ".join(t.name for t in toxics) or "no toxics", api_url or "off")
    if announce_file:
        server.announce(announce_file, url=url, api=api_url)
    try:
        await server.wait_for_stop_signal()
    finally:
        await proxy.stop()
        if runner is not None:
            await runner.cleanup()
