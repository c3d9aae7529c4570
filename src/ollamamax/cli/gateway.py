"""``ollamamax gateway``: one Ollama endpoint in front of many nodes."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ollamamax import config as cfg
from ollamamax import logs, server
from ollamamax.cli.options import (
    AnnounceFile,
    ConfigFile,
    EtcdEndpoints,
    LogFormat,
    LogLevel,
    etcd_overrides,
)
from ollamamax.gateway.app import Gateway

log = logging.getLogger("ollamamax.gateway")


def gateway(
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to serve on.")] = None,
    backend: Annotated[list[str] | None, typer.Option(
        help="A node or stock Ollama: URL or ID=URL (repeatable).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Routing strategy.")] = None,
    etcd: EtcdEndpoints = None,
    config: ConfigFile = None,
    announce_file: AnnounceFile = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """Serve the Ollama and OpenAI APIs over every backend."""
    conf = cfg.load(config, overrides={
        "gateway.listen": listen, "gateway.backends": tuple(backend) if backend else None,
        "scheduler.strategy": strategy, "log.level": log_level, "log.format": log_format,
        **etcd_overrides(etcd),
    })
    logs.setup(conf.log.level, conf.log.format)
    if not (conf.gateway.backends or conf.cluster.store == "etcd" or conf.cluster.discovery):
        raise typer.BadParameter("give at least one --backend URL (or gateway.backends in "
                                 "config), or --etcd URLS for cluster mode")
    server.run(run_gateway(conf, announce_file))


async def run_gateway(conf: cfg.Config, announce_file: str | None = None) -> None:
    from ollamamax.security import middleware, tls

    gw = Gateway(conf)
    # the drain itself is the app's shutdown hook (gateway.drain); what the server's own
    # shutdown then waits for is only the error answers of what the deadline cut
    runner, url = await server.start_site(gw.app(), conf.gateway.listen, shutdown_timeout=5.0,
                                          ssl_context=tls.server_context(conf.security))
    log.info("gateway on %s over %d backends", url, len(gw.view.present_nodes()))
    warning = middleware.open_warning(conf.gateway.listen, gw.guard)
    if warning:
        log.warning("%s", warning)
    if announce_file:
        server.announce(announce_file, url=url)
    try:
        sig = await server.wait_for_stop_signal()
        log.info("stopping on signal %d: no new connections; requests in flight may run for "
                 "up to %g s", sig, conf.gateway.drain_timeout)
    finally:
        await runner.cleanup()
