"""The ``ollamamax`` command line: one module per command group."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from ollamamax import __version__
from ollamamax.errors import OllamaMaxError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="OllamaMax: a fleet of inference machines served as one Ollama.")
err = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the OllamaMax version."""
    print(__version__)


def _register() -> None:
    from ollamamax.cli import bench, flags, gateway, models, node, sim, testing, up

    app.add_typer(node.app, name="node")
    app.command(name="gateway")(gateway.gateway)
    app.command(name="up")(up.up)
    app.add_typer(models.app, name="models")
    app.add_typer(bench.app, name="bench")
    app.add_typer(flags.app, name="flags")
    app.command(name="sim")(sim.sim)
    app.add_typer(testing.app, name="testing")
    from ollamamax.cli import alerts, status

    app.command(name="status")(status.status)
    app.command(name="top")(status.top)
    app.add_typer(alerts.app, name="alerts")
    from ollamamax.cli import keys

    app.add_typer(keys.app, name="keys")


def main() -> None:
    _register()
    try:
        app()
    except OllamaMaxError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(2)
