"""Options shared by several commands."""

from __future__ import annotations

import json
import urllib.error
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
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar="OLLAMAMAX_API_KEY", show_default=False,
    help="The API key for a gateway with keys (else $OLLAMAMAX_API_KEY); admin endpoints "
         "need an admin key.")]


def etcd_overrides(etcd: str | None) -> dict[str, Any]:
    """Config overrides for ``--etcd URLS``: the etcd store at those endpoints."""
    if not etcd:
        return {}
    return {"cluster.store": "etcd",
            "cluster.etcd_endpoints": tuple(u.strip() for u in etcd.split(",") if u.strip())}


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header a gateway with API keys expects (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def refusal(status: int, gateway: str, has_key: bool, message: str = "") -> str:
    """A sentence for a gateway's 401 or 403 that says what to do; `message` is the
    gateway's own error text (which never holds the key). The key itself is never shown."""
    said = f" ({message})" if message else ""
    if status == 403:
        return (f"the gateway at {gateway} needs an admin key for this{said}; pass one with "
                "--api-key or OLLAMAMAX_API_KEY")
    if not has_key:
        return (f"the gateway at {gateway} requires an API key: pass one with --api-key or "
                "set OLLAMAMAX_API_KEY")
    return (f"the gateway at {gateway} refused the API key given: it is unknown or revoked; "
            "check --api-key or OLLAMAMAX_API_KEY")


def error_text(exc: urllib.error.HTTPError) -> str:
    """The `error` of an Ollama-shaped (or OpenAI-shaped) error body, else the reason."""
    try:
        error = json.loads(exc.read()).get("error", exc.reason)
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)
    return str(error.get("message", exc.reason) if isinstance(error, dict) else error)
