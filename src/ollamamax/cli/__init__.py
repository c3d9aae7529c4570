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
    from ollamamax.cli import bench, gateway, models, node, sim, up

    app.command(name="node")(node.node)
    app.command(name="gateway")(gateway.gateway)
    app.command(name="up")(up.up)
    app.add_typer(models.app, name="models")
    app.add_typer(bench.app, name="bench")
    app.command(name="sim")(sim.sim)


def main() -> None:
    _register()
    try:
        app()
    except OllamaMaxError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(2)
