"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML configuration file.",
                                                 envvar="OLLAMAMAX_CONFIG")]
AnnounceFile = Annotated[str | None, typer.Option(
    "--announce-file", help="Write {url, pid} as JSON here once serving.", hidden=True)]
LogLevel = Annotated[str | None, typer.Option("--log-level", help="debug, info, warning, error.")]
LogFormat = Annotated[str | None, typer.Option("--log-format", help="text or json.")]
EtcdEndpoints = Annotated[str | None, typer.Option(
    "--etcd", help="Cluster mode: etcd client URLs, comma-separated (sets cluster.store = etcd).")]


def etcd_overrides(etcd: str | None) -> dict[str, Any]:
    """Config overrides for ``--etcd URLS``: the etcd store at those endpoints."""
    if not etcd:
        return {}
    return {"cluster.store": "etcd",
            "cluster.etcd_endpoints": tuple(u.strip() for u in etcd.split(",") if u.strip())}
