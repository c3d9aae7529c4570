"""``ollamamax models``: a node's model store (Ollama's layout)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ollamamax import config as cfg
from ollamamax.cli.options import ConfigFile, EtcdEndpoints, etcd_overrides
from ollamamax.config import NodeConfig
from ollamamax.models.importer import import_gguf
from ollamamax.models.store import ModelStore

DEFAULT_MODELS_DIR = NodeConfig().models_dir

app = typer.Typer(no_args_is_help=True, help="Manage a node's model store.")
out = Console()

ModelsDir = Annotated[str, typer.Option(help="The model store (Ollama layout).",
                                        envvar="OLLAMAMAX_NODE_MODELS_DIR")]


def _store(models_dir: str) -> ModelStore:
    return ModelStore(os.path.expanduser(models_dir))


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A GGUF file.", exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option(help="NAME:TAG to give it.")],
    models_dir: ModelsDir = DEFAULT_MODELS_DIR,
) -> None:
    """Put a GGUF file into a model store."""
    model = import_gguf(_store(models_dir), file, name)
    out.print(f"imported [bold]{model.name.short}[/] ({model.size / 1e6:.1f} MB, "
              f"digest {model.digest[:12]}) into {models_dir}", highlight=False)


@app.command("list")
def list_(
    pattern: Annotated[str | None, typer.Argument(
        help="Only names matching this: a glob ('llama3*', '*:8b') or else a prefix.")] = None,
    models_dir: ModelsDir = DEFAULT_MODELS_DIR,
) -> None:
    """List the models in a store."""
    from ollamamax.models.name_index import NameTrie, is_pattern

    models = {m.name.key: m for m in _store(models_dir).list()}
    if pattern:
        index, query = NameTrie(models), pattern.lower()
        keys = index.match(query) if is_pattern(query) else index.with_prefix(query)
        models = {key: models[key] for key in keys}
    table = Table("NAME", "ID", "SIZE", "MODIFIED", box=None)
    for m in models.values():
        table.add_row(m.name.short, m.digest[:12], f"{m.size / 1e6:.0f} MB",
                      m.modified_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@app.command("rm")
def rm(
    names: Annotated[list[str], typer.Argument(help="Models to remove (NAME[:TAG]).")],
    models_dir: ModelsDir = DEFAULT_MODELS_DIR,
) -> None:
    """Remove models; a blob goes only when no other model uses it."""
    store = _store(models_dir)
    for name in names:
        freed = store.remove(name)
        out.print(f"deleted '{name}' ({len(freed)} blobs freed)", highlight=False)


@app.command("verify")
def verify(
    name: Annotated[str | None, typer.Argument(help="Only this model (default: every blob).")] = None,
    models_dir: ModelsDir = DEFAULT_MODELS_DIR,
) -> None:
    """Re-hash blobs and report missing or corrupt ones (exit code 1 if any)."""
    problems = _store(models_dir).verify(name)
    if not problems:
        out.print(f"{name or 'every blob'}: ok, every blob matches its digest", highlight=False)
        return
    table = Table("BLOB", "PROBLEM", "DETAIL", box=None)
    for p in problems:
        table.add_row(p.digest, p.problem, p.detail)
    out.print(table)
    raise typer.Exit(1)


@app.command("pull")
def pull(
    name: Annotated[str, typer.Argument(help="NAME[:TAG], e.g. llama3.2:1b.")],
    registry: Annotated[str | None, typer.Option(
        help="Registry URL (default: sync.registry for Ollama's names).")] = None,
    insecure: Annotated[bool, typer.Option(help="http for a registry named in NAME.")] = False,
    models_dir: ModelsDir = DEFAULT_MODELS_DIR,
    config: ConfigFile = None,
) -> None:
    """Pull a model from an Ollama registry; run it again to resume an interrupted pull."""
    import asyncio

    from ollamamax.cli.pull_view import PullView
    from ollamamax.models.registry import Puller

    puller = Puller(_store(models_dir), cfg.load(config).sync, registry=registry)
    try:
        with PullView(out) as view:
            asyncio.run(puller.pull(name, view.show, insecure=insecure))
    except KeyboardInterrupt:
        out.print("interrupted: run the same command again to resume", highlight=False)
        raise typer.Exit(130) from None


# -- placement in a cluster (docs/sync.md): desired state in etcd ----------------------------

def _cluster(config: Path | None, etcd: str | None) -> cfg.Config:
    conf = cfg.load(config, overrides=etcd_overrides(etcd))
    if conf.cluster.store != "etcd":
        raise typer.BadParameter("placement lives in the cluster store: give --etcd URLS "
                                 "(or set cluster.store = \"etcd\")")
    return conf


def _desired_update(conf: cfg.Config, name: str, **changes: object) -> str:
    import asyncio

    from ollamamax.cluster import wiring
    from ollamamax.sync.desired import SyncKeys, update

    async def run() -> str:
        async with wiring.store(conf.cluster) as kv:
            model, desired = await update(kv, SyncKeys(conf.cluster.prefix), name, **changes)
        where = (f" on {', '.join(desired.nodes)}" if desired.nodes else "") + (
            f" with labels {', '.join(desired.labels)}" if desired.labels else "")
        pinned = f" pinned to {desired.digest[:19]}" if desired.digest else ""
        return (f"{model}: {desired.wanted(conf.sync.replicas)} replica(s){where}, policy "
                f"{desired.policy}{pinned}")

    return asyncio.run(run())


@app.command("replicate")
def replicate(
    name: Annotated[str, typer.Argument(help="NAME[:TAG].")],
    replicas: Annotated[int, typer.Option("--replicas", min=0, help=(
        "Nodes that should hold it (0: as many as pinned nodes, else sync.replicas)."))],
    etcd: EtcdEndpoints = None,
    config: ConfigFile = None,
) -> None:
    """Keep N copies of a model in the cluster; the sync planner places them."""
    conf = _cluster(config, etcd)
    out.print(_desired_update(conf, name, replicas=replicas), highlight=False)


@app.command("pin")
def pin(
    name: Annotated[str, typer.Argument(help="NAME[:TAG].")],
    nodes: Annotated[str | None, typer.Option(help="Node ids that must hold it, a,b,c.")] = None,
    labels: Annotated[list[str] | None, typer.Option(
        "--labels", help="Only nodes with this label k=v (repeatable).")] = None,
    digest: Annotated[str | None, typer.Option(
        help="The version that wins everywhere (sha256:...); sets policy pinned.")] = None,
    policy: Annotated[str | None, typer.Option(help="newest, pinned or majority.")] = None,
    etcd: EtcdEndpoints = None,
    config: ConfigFile = None,
) -> None:
    """Pin a model to nodes or labels, and/or choose the version that wins a conflict."""
    changes: dict[str, object] = {}
    if nodes is not None:
        changes["nodes"] = tuple(n.strip() for n in nodes.split(",") if n.strip())
    if labels is not None:
        changes["labels"] = tuple(x.strip() for label in labels for x in label.split(",")
                                  if x.strip())
    if digest is not None:
        changes["digest"], changes["policy"] = digest, "pinned"
    if policy is not None:
        changes["policy"] = policy
    if not changes:
        raise typer.BadParameter("give --nodes, --labels, --digest or --policy")
    conf = _cluster(config, etcd)
    out.print(_desired_update(conf, name, **changes), highlight=False)


@app.command("status")
def status(
    etcd: EtcdEndpoints = None,
    config: ConfigFile = None,
) -> None:
    """Every model in the cluster: where it is, its winning version, conflicts, transfers."""
    import asyncio

    from ollamamax.cluster import wiring
    from ollamamax.sync import status as sync_status
    from ollamamax.sync.desired import SyncKeys

    conf = _cluster(config, etcd)

    async def run() -> list[sync_status.StatusRow]:
        async with wiring.store(conf.cluster) as kv:
            return await sync_status.read(kv, SyncKeys(conf.cluster.prefix), conf.sync.replicas)

    table = Table("MODEL", "WANTED", "POLICY", "VERSION", "ON", "CONFLICTS", "MOVING", box=None)
    for row in asyncio.run(run()):
        table.add_row(row.model, row.wanted, row.policy, row.digest[7:19] or "-",
                      ", ".join(row.holders) or "-", "; ".join(row.conflicts) or "-",
                      ", ".join(row.moving) or "-")
    out.print(table)
