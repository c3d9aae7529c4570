"""Pluggable parts chosen by name: ``{name: "module:Class"}`` maps, imported lazily.

Engines, scheduler strategies and (later) stores and cache tiers each have a registry. An
unknown name is a `ConfigError` that lists the valid names.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ollamamax.errors import ConfigError


def load(kind: str, registry: Mapping[str, str], name: str) -> Any:
    """Import and return the object registered under `name`."""
    target = registry.get(name)
    if target is None:
        valid = ", ".join(sorted(registry))
        raise ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {valid}")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
