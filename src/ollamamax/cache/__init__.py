"""The response cache: deterministic answers recorded and replayed (docs/cache.md).

Tiers are chosen by name (``[cache] tiers``) and stacked in that order, fastest first; the
registry maps each name to ``"module:Class"`` and imports lazily, so a gateway without the
Redis tier never imports `redis`.
"""

from __future__ import annotations

import importlib
from typing import Any

TIERS: dict[str, str] = {
    "memory": "ollamamax.cache.memory:MemoryTier",
    "disk": "ollamamax.cache.disk:DiskTier",
    "redis": "ollamamax.cache.redis:RedisTier",
}


def tier_class(name: str) -> Any:
    """The class registered as `name`; `ValueError` listing the valid names otherwise."""
    try:
        target = TIERS[name]
    except KeyError:
        raise ValueError(f"unknown cache tier {name!r}; valid tiers: {', '.join(TIERS)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
