"""``ollamamax node``: serve one machine's engine; ``ollamamax node drain URL``: drain one."""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
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
from ollamamax.node import engines
from ollamamax.node.agent import NodeAgent

log = logging.getLogger("ollamamax.node")

app = typer.Typer(invoke_without_command=True, add_completion=False)


@app.callback()
def node(
    ctx: typer.Context,
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
    advertise_url: Annotated[str | None, typer.Option(
        help="The URL gateways should call (default: the URL served on).")] = None,
    label: Annotated[list[str] | None, typer.Option(
        help="A label in the node's cluster record (repeatable).")] = None,
    etcd: EtcdEndpoints = None,
    config: ConfigFile = None,
    announce_file: AnnounceFile = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """Serve the Ollama API of this machine's engine, with /health and /telemetry."""
    if ctx.invoked_subcommand is not None:
        return
    conf = cfg.load(config, overrides={
        "node.listen": listen, "node.id": node_id, "node.engine": engine,
        "node.engine_url": engine_url, "node.models_dir": models_dir,
        "node.num_parallel": num_parallel, "node.max_loaded": max_loaded,
        "node.max_queue": max_queue, "node.keep_alive": keep_alive, "node.threads": threads,
        "node.num_ctx": num_ctx, "node.sim_profile": sim_profile, "node.sim_speed": sim_speed,
        "node.sim_models": tuple(sim_model) if sim_model else None, "node.seed": seed,
        "node.advertise_url": advertise_url, "node.labels": tuple(label) if label else None,
        **etcd_overrides(etcd), "log.level": log_level, "log.format": log_format,
    })
    logs.setup(conf.log.level, conf.log.format)
    server.run(run_node(conf, announce_file))


@app.command()
def drain(
    url: Annotated[str, typer.Argument(
        help="The node's URL, e.g. http://10.0.0.5:11435; with --etcd, its id.")],
    undo: Annotated[bool, typer.Option("--undo", help="Take requests again.")] = False,
    etcd: EtcdEndpoints = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the drain order; with --etcd).")] = "",
    config: ConfigFile = None,
) -> None:
    """Drain a node: it refuses new requests (503) so gateways move them elsewhere, and
    finishes those it runs. --undo ends the drain. With --etcd (or cluster.store = "etcd")
    the order goes through the cluster store, and every gateway stops routing to the node
    as soon as it sees it."""
    conf = cfg.load(config, overrides=etcd_overrides(etcd))
    if conf.cluster.store == "etcd":
        import asyncio

        from ollamamax.cluster import wiring

        try:
            print(asyncio.run(wiring.give_drain_order(conf.cluster, url, undo=undo,
                                                      reason=reason)))
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from None
        return
    from ollamamax.security import cluster, tls

    request = urllib.request.Request(url.rstrip("/") + "/admin/drain",
                                     method="DELETE" if undo else "POST",
                                     headers=cluster.headers_for(conf.security))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=tls.client_context(conf.security)))
    with opener.open(request, timeout=10) as reply:
        state = json.loads(reply.read())
    print(f"{url}: {'draining' if state['draining'] else 'taking requests'}, "
          f"{state['in_flight']} in flight")


async def run_node(conf: cfg.Config, announce_file: str | None = None) -> None:
    from ollamamax.cluster import wiring  # cluster mode only: not on every CLI start
    from ollamamax.cluster.records import DrainOrder
    from ollamamax.security import cluster, tls

    engine = engines.create(conf.node)
    agent = NodeAgent(conf.node, engine, conf.security, sync=conf.sync)
    runner, url = await server.start_site(agent.app(), conf.node.listen, shutdown_timeout=2.0,
                                          ssl_context=tls.server_context(conf.security,
                                                                         mutual=True))
    agent.url = conf.node.advertise_url or url
    if not conf.node.id:
        agent.node_id = f"{socket.gethostname()}-{url.rpartition(':')[2]}"
    log.info("node %s serving %s engine on %s", agent.node_id, engine.name, url)
    if warning := cluster.open_warning(conf.node.listen, agent.cluster_token):
        log.warning("%s", warning)
    presence = None
    try:
        presence = await wiring.join(conf, agent)  # cluster mode (etcd) or LAN discovery
        if announce_file:
            server.announce(announce_file, url=url, node_id=agent.node_id)
        sig = await server.wait_for_stop_signal()
        if presence is not None:  # every gateway stops routing here now, not at the next poll
            await presence.drain(DrainOrder(reason=f"stopping on signal {sig}", by="signal"))
        # still listening: gateways read "draining" in telemetry and new requests get 503
        log.info("stopping on signal %d: draining %d requests in flight (at most %g s)", sig,
                 agent.in_flight, conf.node.drain_timeout)
        if not await agent.drained(conf.node.drain_timeout):
            log.warning("drain deadline passed with %d requests still running: they are cut",
                        agent.in_flight)
    finally:
        await wiring.leave(presence)
        await runner.cleanup()
