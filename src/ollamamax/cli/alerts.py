"""``ollamamax alerts``: the alert rules as a Prometheus rules file, and a gateway's states."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ollamamax import alerts as alerting
from ollamamax import config as cfg
from ollamamax.cli.options import ApiKey, ConfigFile
from ollamamax.cli.status import DEFAULT_GATEWAY, GatewayUrl, fetch

app = typer.Typer(no_args_is_help=True, help="Alert rules: export them for Prometheus, or see "
                  "a gateway's alert states.")
out = Console()


@app.command()
def export(
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the rules file here (default: standard output).")] = None,
    config: ConfigFile = None,
) -> None:
    """A Prometheus rules file (YAML) equivalent to the gateway's alert rules, with the
    thresholds, `for` durations and window of the configuration."""
    conf = cfg.load(config)
    text = alerting.prometheus_rules(alerting.rules_from(conf.alerts.rules), conf.alerts.window)
    if output is None:
        print(text, end="")
        return
    output.write_text(text)
    typer.echo(f"wrote {sum(r.enabled for r in alerting.rules_from(conf.alerts.rules)) * 2} "
               f"alerting rules to {output}", err=True)


@app.command("list")
def list_(gateway: GatewayUrl = DEFAULT_GATEWAY, api_key: ApiKey = None) -> None:
    """Every alert rule of a running gateway: state, severity, value and thresholds."""
    doc = fetch(gateway, "/admin/alerts", api_key=api_key)
    if not doc["enabled"]:
        out.print("alert rules are off on this gateway (alerts.enabled = false)")
        return
    if not out.is_terminal:
        out.width = max(out.width, 160)
    table = Table("RULE", "STATE", "SEVERITY", "VALUE", "WARNING", "CRITICAL", "FOR", box=None)
    for a in doc["alerts"]:
        style = {"firing": "bold red", "pending": "yellow"}.get(a["state"], "green")
        value = "no data" if a["value"] is None else f"{a['value']:.4g} {a['unit']}"
        table.add_row(a["rule"], Text(a["state"], style=style), a["severity"] or "-", value,
                      f"{a['warning']:g} {a['unit']}", f"{a['critical']:g} {a['unit']}",
                      f"{a['for_s']:g} s")
    out.print(table)
