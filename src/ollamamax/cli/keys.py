"""``ollamamax keys``: add, list and revoke the gateway's API keys (SECURITY.md).

The keys file is `security.keys_file` (or ``--keys-file``); a running gateway reads it again
within `security.keys_reload_interval` seconds, so a key added or revoked here applies
without a restart. A new key is printed once, on stdout, and stored only as its SHA-256.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ollamamax import config as cfg
from ollamamax.cli.options import ConfigFile
from ollamamax.security import keys

app = typer.Typer(no_args_is_help=True, help="Manage the gateway's API keys.")
out = Console()
err = Console(stderr=True)

KeysFile = Annotated[str | None, typer.Option(
    "--keys-file", help="The keys file (default: security.keys_file from config).")]


def _path(keys_file: str | None, config: object) -> str:
    path = keys_file or cfg.load(config).security.keys_file  # type: ignore[arg-type]
    if not path:
        raise typer.BadParameter("no keys file: give --keys-file or set security.keys_file "
                                 "(OLLAMAMAX_SECURITY_KEYS_FILE)")
    return path


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Who the key is for (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option(help="user (the APIs) or admin (also /admin, dashboard, "
                                           "/metrics).")] = "user",
    rps: Annotated[float, typer.Option("--rps", min=0, help="Requests per second (0: no "
                                       "limit).")] = 0.0,
    burst: Annotated[float, typer.Option(min=0, help="Requests at once above --rps (default: "
                                         "max(1, rps)).")] = 0.0,
    tokens_per_min: Annotated[float, typer.Option(min=0, help="Prompt + generated tokens per "
                                                  "minute (0: no limit).")] = 0.0,
    quota: Annotated[float, typer.Option("--quota", min=0, help="Tokens per day, a rolling "
                                         "quota (0: none).")] = 0.0,
    keys_file: KeysFile = None,
    config: ConfigFile = None,
) -> None:
    """Make a key; print it once (only its hash is kept)."""
    key = keys.add(_path(keys_file, config), name, role, rps=rps, burst=burst,
                   tokens_per_min=tokens_per_min, tokens_per_day=quota)
    err.print(f"key {name!r} ({role}) added; it is shown only now:", highlight=False)
    print(key)


@app.command(name="list")
def list_keys(keys_file: KeysFile = None, config: ConfigFile = None) -> None:
    """The keys by name, role and limits (never the keys themselves)."""
    records = keys.read(_path(keys_file, config))
    if not records:
        out.print("no keys: the gateway is open to anyone who can reach it")
        return
    table = Table("NAME", "ROLE", "LIMITS", "CREATED", box=None)
    for record in records:
        table.add_row(record.name, record.role, record.limits(), record.created)
    out.print(table)


@app.command()
def revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    keys_file: KeysFile = None,
    config: ConfigFile = None,
) -> None:
    """Remove a key: gateways refuse it within security.keys_reload_interval seconds."""
    keys.revoke(_path(keys_file, config), name)
    out.print(f"key {name!r} revoked", highlight=False)
