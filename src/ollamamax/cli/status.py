"""``ollamamax status`` (the cluster once: nodes, models, alerts) and ``ollamamax top`` (the
same, live, refreshed every second), both from a gateway's ``GET /admin/status``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ollamamax.cli.options import ApiKey, auth_headers, error_text, refusal
from ollamamax.config import is_loopback_url

DEFAULT_GATEWAY = "http://127.0.0.1:11434"
SPARK = "▁▂▃▄▅▆▇█"

out = Console()
err = Console(stderr=True)

GatewayUrl = Annotated[str, typer.Option(
    "--gateway", envvar="OLLAMAMAX_GATEWAY",
    help="The gateway's URL (else $OLLAMAMAX_GATEWAY, else http://127.0.0.1:11434).")]


def fetch(gateway: str, path: str, timeout: float = 5.0, api_key: str | None = None) -> Any:
    """GET `path` from the gateway as JSON (with `api_key` as a bearer token); a clear error
    and exit 2 when it cannot answer or refuses the key. A gateway on this machine is reached
    directly, never through an HTTP proxy."""
    url = gateway.rstrip("/") + path
    opener = urllib.request.build_opener(
        *([urllib.request.ProxyHandler({})] if is_loopback_url(url) else []))
    try:
        with opener.open(urllib.request.Request(url, headers=auth_headers(api_key)),
                         timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            sentence = refusal(exc.code, gateway, bool(api_key), error_text(exc))
            err.print(f"[bold red]error:[/] {escape(sentence)}", highlight=False)
        else:
            err.print(f"[bold red]error:[/] {url} answered HTTP {exc.code}", highlight=False)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        err.print(f"[bold red]error:[/] cannot reach the gateway at {gateway}: {reason}",
                  highlight=False)
    raise typer.Exit(2)


def status(
    gateway: GatewayUrl = DEFAULT_GATEWAY,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's JSON.")] = False,
    api_key: ApiKey = None,
) -> None:
    """The cluster once: nodes with health, engine, loaded models, slots and queue; models
    and where they live; alerts."""
    doc = fetch(gateway, "/admin/status?charts=0", api_key=api_key)
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    if not out.is_terminal:  # piped: no width of its own; rich would wrap at 80 columns
        out.width = max(out.width, 160)
    out.print(render(doc, gateway))


def top(
    gateway: GatewayUrl = DEFAULT_GATEWAY,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between refreshes.")] = 1.0,
    iterations: Annotated[int, typer.Option(
        help="Stop after this many refreshes (0: until Ctrl-C).")] = 0,
    once: Annotated[bool, typer.Option("--once", help="One refresh, then exit.")] = False,
    api_key: ApiKey = None,
) -> None:
    """The cluster live, refreshed every second, like htop: Ctrl-C to leave."""
    from rich.live import Live

    count = 1 if once else iterations
    screen = out.is_terminal and not count
    with Live(render(fetch(gateway, "/admin/status", api_key=api_key), gateway, charts=True),
              console=out, screen=screen, auto_refresh=False) as live:
        done = 1
        try:
            while not count or done < count:
                time.sleep(interval)
                live.update(render(fetch(gateway, "/admin/status", api_key=api_key), gateway,
                                   charts=True), refresh=True)
                done += 1
        except KeyboardInterrupt:
            pass


# -- rendering ---------------------------------------------------------------------------


def render(doc: dict[str, Any], gateway: str, charts: bool = False) -> RenderableType:
    parts: list[RenderableType] = [_header(doc, gateway)]
    if charts and doc.get("charts"):
        parts.append(_sparklines(doc["charts"]))
    parts.append(_nodes(doc["nodes"]))
    parts.append(_models(doc["models"]))
    active = [a for a in doc.get("alerts", []) if a["state"] != "ok"]
    parts.append(_alerts(active) if active else Text("alerts: none firing", style="green"))
    if doc.get("transfers"):
        parts.append(_transfers(doc["transfers"]))
    return Group(*parts)


def _num(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def _header(doc: dict[str, Any], gateway: str) -> Text:
    g = doc["gateway"]
    firing = sum(1 for a in doc.get("alerts", []) if a["state"] == "firing")
    text = Text()
    text.append("OllamaMax ", style="bold")
    text.append(f"{gateway}  ")
    text.append(f"strategy {g['strategy']}  nodes {g['nodes_healthy']}/{g['nodes']} up  "
                f"{_num(g['requests_per_s'])} req/s  TTFT p95 {_num(g['ttft_p95_ms'], 0, ' ms')}  "
                f"in flight {g['in_flight']}  queued {g['queued']}  "
                f"gateway {_num(g['memory_mb'], 0, ' MB')} {_num(g['cpu_percent'], 0, ' % CPU')}")
    if g.get("draining"):
        text.append("  DRAINING", style="bold yellow")
    if firing:
        text.append(f"  {firing} alert{'s' if firing > 1 else ''} firing", style="bold red")
    return text


def _health(node: dict[str, Any]) -> Text:
    if not node["healthy"]:
        return Text("down", style="bold red")
    if node["draining"]:
        return Text("draining", style="yellow")
    if node["ejected"]:
        return Text("ejected", style="yellow")
    return Text("healthy", style="green")


def _nodes(nodes: list[dict[str, Any]]) -> Table:
    table = Table("NODE", "HEALTH", "ENGINE", "LOADED", "SLOTS", "QUEUE", "IN FLIGHT", "SERVED",
                  "MEMORY", "CPU", title=f"nodes ({len(nodes)})", title_justify="left", box=None)
    for n in nodes:
        loaded = ", ".join(f"{m['name']} {m['busy']}/{m['slots']}" for m in n["loaded"]) or "-"
        table.add_row(n["id"], _health(n), n["engine"] or "-", loaded,
                      f"{n['slots_busy']}/{n['slots']}", str(n["queue_depth"]), str(n["in_flight"]),
                      str(n["served"]), _num(n["memory_mb"], 0, " MB"),
                      _num(n.get("cpu_percent"), 0, " %"))
    return table


def _models(models: list[dict[str, Any]]) -> Table:
    table = Table("MODEL", "SIZE", "NODES", "LOADED ON", title=f"models ({len(models)})",
                  title_justify="left", box=None)
    for m in models:
        table.add_row(m["name"], _size(m["size"]), ", ".join(m["nodes"]) or "-",
                      ", ".join(m["loaded_on"]) or "-")
    return table


def _alerts(alerts: list[dict[str, Any]]) -> Table:
    table = Table("ALERT", "STATE", "SEVERITY", "VALUE", "WARNING / CRITICAL", title="alerts",
                  title_justify="left", box=None)
    for a in alerts:
        style = "bold red" if a["state"] == "firing" else "yellow"
        table.add_row(a["rule"], Text(a["state"], style=style), a["severity"] or "-",
                      _num(a["value"], 2, f" {a['unit']}"),
                      f"{a['warning']:g} / {a['critical']:g} {a['unit']}")
    return table


def _transfers(transfers: list[dict[str, Any]]) -> Table:
    table = Table("MODEL", "FROM", "TO", "PROGRESS", title="model sync", title_justify="left",
                  box=None)
    for t in transfers:
        table.add_row(t["model"], t["source"], t["target"], f"{100 * t['progress']:.0f} %")
    return table


def _sparklines(charts: dict[str, Any], points: int = 60) -> Text:
    text = Text()
    for name, label in (("requests_per_s", "req/s"), ("ttft_p95_ms", "TTFT p95 ms"),
                        ("errors_per_s", "errors/s")):
        values = charts.get(name, [])[-points:]
        known = [v for v in values if v is not None]
        top_value = max(known, default=0) or 1
        line = "".join(" " if v is None else SPARK[min(7, int(7 * v / top_value))]
                       for v in values)
        text.append(f"{label:>12} ", style="dim")
        text.append(line, style="cyan")
        text.append(f" {_num(known[-1] if known else None)} (max {_num(max(known, default=None))})\n")
    return text


def _size(n: int) -> str:
    if not n:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
