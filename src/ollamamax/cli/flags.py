"""``ollamamax flags``: see and change a running gateway's feature flags (its admin API)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ollamamax import config as cfg
from ollamamax.cli.options import ApiKey, ConfigFile, auth_headers, error_text, refusal

app = typer.Typer(no_args_is_help=True, help="See, set and roll back a gateway's feature flags.")
out = Console()
err = Console(stderr=True)

Gateway = Annotated[str | None, typer.Option(
    "--gateway", envvar="OLLAMAMAX_GATEWAY",
    help="The gateway's URL (default: its listen address from config).")]


def gateway_url(gateway: str | None, config: Any = None) -> str:
    if gateway:
        return gateway.rstrip("/")
    host, port = cfg.parse_listen(cfg.load(config).gateway.listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def call(method: str, url: str, body: dict[str, Any] | None = None,
         api_key: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **auth_headers(api_key)})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        message = error_text(exc)
        if exc.code in (401, 403):
            gateway = url.partition("/admin/")[0]
            message = refusal(exc.code, gateway, bool(api_key), message)
        err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        raise typer.Exit(1) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        err.print(f"[bold red]error:[/] cannot reach the gateway at {url}: {reason}",
                  highlight=False)
        raise typer.Exit(2) from None


def _setting(flag: dict[str, Any]) -> str:
    if flag["percent"] >= 100 or flag["variant"] == flag["base"]:
        return flag["variant"]
    return f"{flag['variant']} {flag['percent']:g}%, else {flag['base']}"


def _show(flag: dict[str, Any]) -> None:
    out.print(f"{flag['name']}: {_setting(flag)}", highlight=False)


@app.command("list")
def list_(gateway: Gateway = None, config: ConfigFile = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
          api_key: ApiKey = None) -> None:
    """Every flag: its setting, default, variants and the requests each variant served."""
    flags = call("GET", gateway_url(gateway, config) + "/admin/flags", api_key=api_key)["flags"]
    if as_json:
        out.print_json(data=flags)
        return
    if not out.is_terminal:  # piped: no width of its own; rich would cut names at 80 columns
        out.width = max(out.width, 200)
    table = Table("FLAG", "SETTING", "DEFAULT", "VARIANTS", "SERVED", "ROLLBACKS", box=None)
    for f in flags:
        served = ", ".join(f"{v} {n}" for v, n in f["served"].items())
        table.add_row(f["name"], _setting(f), f["default"], ", ".join(f["variants"]), served,
                      str(len(f["history"])))
    out.print(table)


@app.command("set")
def set_(name: Annotated[str, typer.Argument(help="The flag, e.g. scheduler.strategy.")],
         variant: Annotated[str, typer.Argument(help="The variant to roll out.")],
         percent: Annotated[float, typer.Option(
             min=0, max=100, help="Share of requests that get it (the rest keep theirs).")
         ] = 100.0,
         gateway: Gateway = None, config: ConfigFile = None, api_key: ApiKey = None) -> None:
    """Give VARIANT to PERCENT of requests (all by default)."""
    _show(call("PUT", f"{gateway_url(gateway, config)}/admin/flags/{name}",
               {"variant": variant, "percent": percent}, api_key))


@app.command()
def rollback(name: Annotated[str, typer.Argument(help="The flag.")],
             gateway: Gateway = None, config: ConfigFile = None, api_key: ApiKey = None,
             ) -> None:
    """Return NAME to its setting before the last change."""
    _show(call("POST", f"{gateway_url(gateway, config)}/admin/flags/{name}/rollback",
               api_key=api_key))
