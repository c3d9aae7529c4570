"""``ollamamax models``: a node's model store (Ollama's layout)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ollamamax.config import NodeConfig
from ollamamax.models.importer import import_gguf
from ollamamax.models.store import ModelStore

DEFAULT_MODELS_DIR = NodeConfig().models_dir

app = typer.Typer(no_args_is_help=True, help="Manage a node's model store.")
out = Console()

ModelsDir = Annotated[str, typer.Option(help="The model store (Ollama layout).",
                                        envvar="OLLAMAMAX_NODE_MODELS_DIR")]


def _store(models_dir: str) -> ModelStore:
    return ModelStore(os.path.expanduser(models_dir))


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A GGUF file.", exists=True, dir_okay=False)],
    name: Annotated[str, typer.Option(help="NAME:TAG to give it.")],
    models_dir: ModelsDir = DEFAULT_MODELS_DIR,
) -> None:
    """Put a GGUF file into a model store."""
    model = import_gguf(_store(models_dir), file, name)
    out.print(f"imported [bold]{model.name.short}[/] ({model.size / 1e6:.1f} MB, "
              f"digest {model.digest[:12]}) into {models_dir}", highlight=False)


@app.command("list")
def list_(models_dir: ModelsDir = DEFAULT_MODELS_DIR) -> None:
    """List the models in a store."""
    table = Table("NAME", "ID", "SIZE", "MODIFIED", box=None)
    for m in _store(models_dir).list():
        table.add_row(m.name.short, m.digest[:12], f"{m.size / 1e6:.0f} MB",
                      m.modified_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)
