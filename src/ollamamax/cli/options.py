"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML configuration file.",
                                                 envvar="OLLAMAMAX_CONFIG")]
AnnounceFile = Annotated[str | None, typer.Option(
    "--announce-file", help="Write {url, pid} as JSON here once serving.", hidden=True)]
LogLevel = Annotated[str | None, typer.Option("--log-level", help="debug, info, warning, error.")]
LogFormat = Annotated[str | None, typer.Option("--log-format", help="text or json.")]
