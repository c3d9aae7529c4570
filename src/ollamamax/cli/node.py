"""``ollamamax node``: serve one machine's engine."""

from __future__ import annotations

import logging
import socket
from typing import Annotated

import typer

from ollamamax import config as cfg
from ollamamax import logs, server
from ollamamax.cli.options import AnnounceFile, ConfigFile, LogFormat, LogLevel
from ollamamax.node import engines
from ollamamax.node.agent import NodeAgent

log = logging.getLogger("ollamamax.node")


def node(
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to serve on (port 0: any free).")] = None,
    node_id: Annotated[str | None, typer.Option("--id", help="Node id (default HOSTNAME-PORT).")] = None,
    engine: Annotated[str | None, typer.Option(help="llamacpp, ollama or sim.")] = None,
    engine_url: Annotated[str | None, typer.Option(help="Stock Ollama URL for --engine ollama.")] = None,
    models_dir: Annotated[str | None, typer.Option(help="Model store (Ollama layout).")] = None,
    num_parallel: Annotated[int | None, typer.Option(help="Requests at once per model.")] = None,
    max_loaded: Annotated[int | None, typer.Option(help="Models resident at once.")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Waiting requests before 503.")] = None,
    keep_alive: Annotated[float | None, typer.Option(help="Seconds a model stays loaded.")] = None,
    threads: Annotated[int | None, typer.Option(help="llama.cpp threads per model.")] = None,
    num_ctx: Annotated[int | None, typer.Option(help="Context tokens per request slot.")] = None,
    sim_profile: Annotated[str | None, typer.Option(help="Timing profile of --engine sim.")] = None,
    sim_speed: Annotated[float | None, typer.Option(help="Time compression of --engine sim.")] = None,
    sim_model: Annotated[list[str] | None, typer.Option(
        help="Extra simulated model NAME:TAG=BYTES (repeatable).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for simulated output.")] = None,
    config: ConfigFile = None,
    announce_file: AnnounceFile = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """Serve the Ollama API of this machine's engine, with /health and /telemetry."""
    conf = cfg.load(config, overrides={
        "node.listen": listen, "node.id": node_id, "node.engine": engine,
        "node.engine_url": engine_url, "node.models_dir": models_dir,
        "node.num_parallel": num_parallel, "node.max_loaded": max_loaded,
        "node.max_queue": max_queue, "node.keep_alive": keep_alive, "node.threads": threads,
        "node.num_ctx": num_ctx, "node.sim_profile": sim_profile, "node.sim_speed": sim_speed,
        "node.sim_models": tuple(sim_model) if sim_model else None, "node.seed": seed,
        "log.level": log_level, "log.format": log_format,
    })
    logs.setup(conf.log.level, conf.log.format)
    server.run(run_node(conf, announce_file))


async def run_node(conf: cfg.Config, announce_file: str | None = None) -> None:
    engine = engines.create(conf.node)
    agent = NodeAgent(conf.node, engine)
    runner, url = await server.start_site(agent.app(), conf.node.listen)
    agent.url = conf.node.advertise_url or url
    if not conf.node.id:
        agent.node_id = f"{socket.gethostname()}-{url.rpartition(':')[2]}"
    log.info("node %s serving %s engine on %s", agent.node_id, engine.name, url)
    if announce_file:
        server.announce(announce_file, url=url, node_id=agent.node_id)
    try:
        sig = await server.wait_for_stop_signal()
        log.info("stopping on signal %d", sig)
    finally:
        await runner.cleanup()
