"""``ollamamax up``: a gateway and N nodes on this machine, with real inference.

Every node is its own OS process with its own model store holding the demo model; the
gateway runs in this process. With ``--cluster``, a local etcd is started first (a child
process, data under the run folder) and nodes and gateway run in cluster mode: the nodes
register there, the gateway builds its view from it. Ctrl-C or SIGTERM stops everything that
was started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ollamamax import config as cfg
from ollamamax import logs, server
from ollamamax.cli.options import AnnounceFile, LogFormat, LogLevel, etcd_overrides
from ollamamax.cluster.local_etcd import LocalEtcd, missing_reason
from ollamamax.gateway.app import Gateway
from ollamamax.models.demo import DEMO_MODEL, ensure_demo_model
from ollamamax.models.store import ModelStore
from ollamamax.supervisor import StartError, Supervisor

log = logging.getLogger("ollamamax.up")
out = Console()
# a long-running member keeps every telemetry write unless told to forget old revisions
COMPACTION = ("--auto-compaction-mode", "periodic", "--auto-compaction-retention", "5m")


def up(
    nodes: Annotated[int, typer.Option(min=1, max=64, help="How many node processes.")] = 3,
    port: Annotated[int, typer.Option(help="Gateway port on 127.0.0.1.")] = 11434,
    engine: Annotated[str, typer.Option(help="llamacpp (real inference) or sim.")] = "llamacpp",
    run_dir: Annotated[Path, typer.Option(help="Stores and logs of the local cluster.")] = Path(
        "~/.ollamamax/up"),
    num_parallel: Annotated[int, typer.Option(help="Requests at once per model per node.")] = 1,
    sim_profile: Annotated[str, typer.Option(help="Timing profile for --engine sim.")] = "cpu-small",
    cluster: Annotated[bool, typer.Option(
        "--cluster", help="Cluster mode: a local etcd, nodes registering in it, a gateway "
        "watching it.")] = False,
    announce_file: AnnounceFile = None,
    log_level: LogLevel = None,
    log_format: LogFormat = None,
) -> None:
    """Start a local cluster: N nodes and a gateway on 127.0.0.1."""
    conf = cfg.load(overrides={"log.level": log_level, "log.format": log_format,
                               "gateway.listen": f"127.0.0.1:{port}"})
    logs.setup(conf.log.level, conf.log.format)
    run_dir = run_dir.expanduser()
    with contextlib.ExitStack() as stack:
        etcd = _start_etcd(run_dir) if cluster else None
        if etcd is not None:
            stack.callback(etcd.stop)
        supervisor = stack.enter_context(Supervisor(run_dir / "logs"))  # stops before etcd
        joined = ["--etcd", etcd.url] if etcd else []
        backends = _start_nodes(supervisor, run_dir, nodes, engine, num_parallel, sim_profile,
                                joined)
        conf = cfg.load(overrides={"log.level": log_level, "log.format": log_format,
                                   "gateway.listen": f"127.0.0.1:{port}",
                                   **(etcd_overrides(etcd.url) if etcd else
                                      {"gateway.backends": tuple(backends)})})
        server.run(_serve(conf, supervisor, announce_file, etcd))


def _start_etcd(run_dir: Path) -> LocalEtcd:
    """A fresh one-member etcd on 127.0.0.1 (free ports), compacting its history itself."""
    reason = missing_reason()
    if reason:
        raise StartError(f"ollamamax up --cluster needs etcd: {reason}")
    shutil.rmtree(run_dir / "etcd", ignore_errors=True)  # a new cluster: no stale members
    etcd = LocalEtcd(run_dir / "etcd", extra_args=COMPACTION)
    with out.status("starting etcd"):
        return etcd.start()


def _start_nodes(supervisor: Supervisor, run_dir: Path, count: int, engine: str,
                 num_parallel: int, sim_profile: str, extra: list[str]) -> list[str]:
    children = []
    for i in range(1, count + 1):
        store_dir = run_dir / f"node-{i}" / "models"
        ensure_demo_model(ModelStore(store_dir))
        args = ["node", "--listen", "127.0.0.1:0", "--id", f"node-{i}", "--engine", engine,
                "--models-dir", str(store_dir), "--num-parallel", str(num_parallel),
                "--threads", "1", "--sim-profile", sim_profile, *extra]
        children.append(supervisor.start(f"node-{i}", args))
    with out.status(f"starting {count} {engine} nodes"):
        return [f"{c.name}={supervisor.wait_ready(c, timeout=60)}" for c in children]


async def _serve(conf: cfg.Config, supervisor: Supervisor, announce_file: str | None,
                 etcd: LocalEtcd | None) -> None:
    from ollamamax.security import tls

    gw = Gateway(conf)  # [security] from OLLAMAMAX_SECURITY_* (nodes inherit them too)
    runner, url = await server.start_site(gw.app(), conf.gateway.listen,
                                          ssl_context=tls.server_context(conf.security))
    _print_banner(url, supervisor, etcd)
    if announce_file:
        server.announce(announce_file, url=url)
    try:
        await server.wait_for_stop_signal()
        out.print("stopping...")
    finally:
        await runner.cleanup()


def _print_banner(url: str, supervisor: Supervisor, etcd: LocalEtcd | None) -> None:
    table = Table("", "URL", "PID", "LOG", box=None, show_header=False)
    table.add_row("[bold]gateway[/]", url, str(os.getpid()), "")
    if etcd is not None:
        child = etcd.supervisor.children[etcd.members[0].name]
        table.add_row("etcd", etcd.url, str(child.pid), str(child.log))
    for child in supervisor.children.values():
        table.add_row(child.name, child.url, str(child.pid), str(child.log))
    out.print(table)
    out.print(f"\nOllamaMax is up with {DEMO_MODEL}. Try:\n"
              f"  curl {url}/api/chat -d '{{\"model\": \"{DEMO_MODEL}\", \"messages\": "
              f"[{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'\n"
              f"  OLLAMA_HOST={url} ollama run {DEMO_MODEL}\n"
              f"  OpenAI clients: base_url={url}/v1\n"
              f"  watch it: {url}/dashboard  (or: ollamamax top --gateway {url})\n"
              + (f"  a second gateway: ollamamax gateway --listen 127.0.0.1:0 --etcd {etcd.url}\n"
                 f"  drain a node: ollamamax node drain node-1 --etcd {etcd.url}\n"
                 if etcd is not None else "")
              + "Ctrl-C stops everything.", highlight=False)
