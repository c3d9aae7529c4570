"""``ollamamax bench``: benchmarks whose figures go into docs/benchmarks.md."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="Measure OllamaMax.")
