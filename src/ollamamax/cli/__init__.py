"""The ``ollamamax`` command line."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="OllamaMax: a fleet of inference machines served as one Ollama.")


def main() -> None:
    app()
