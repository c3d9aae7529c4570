"""``ollamamax gateway``: one Ollama endpoint in front of many nodes."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ollamamax import config as cfg
from ollamamax import logs, server
from ollamamax.cli.options import AnnounceFile, ConfigFile, LogFormat, LogLevel
from ollamamax.gateway.app import Gateway

log = logging.getLogger("ollamamax.gateway")


def gateway(
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to serve on.")] = None,
    backend: Annotated[list[str] | None, typer.Option(
        help="A node or stock Ollama: URL or ID=URL (repeatable).")] = None,
    strategy: Annotated[str | None, typer.Option(help="Routing strategy.")] = None,
    config: ConfigFile = None,
    announce_file: AnnounceFile = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """Serve the Ollama and OpenAI APIs over every backend."""
    conf = cfg.load(config, overrides={
        "gateway.listen": listen, "gateway.backends": tuple(backend) if backend else None,
        "scheduler.strategy": strategy, "log.level": log_level, "log.format": log_format,
    })
    logs.setup(conf.log.level, conf.log.format)
    if not conf.gateway.backends:
        raise typer.BadParameter("give at least one --backend URL (or gateway.backends in config)")
    server.run(run_gateway(conf, announce_file))


async def run_gateway(conf: cfg.Config, announce_file: str | None = None) -> None:
    gw = Gateway(conf)
    runner, url = await server.start_site(gw.app(), conf.gateway.listen)
    log.info("gateway on %s over %d backends", url, len(gw.view.present_nodes()))
    if announce_file:
        server.announce(announce_file, url=url)
    try:
        await server.wait_for_stop_signal()
    finally:
        await runner.cleanup()
