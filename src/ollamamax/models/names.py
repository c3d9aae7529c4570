"""Ollama model names: ``[host/][namespace/]model[:tag]`` with Ollama's defaults.

``smollm2`` is ``registry.ollama.ai/library/smollm2:latest``; the short form shown to users
drops the default host and namespace, as Ollama does (``smollm2:latest``). Names compare
case-insensitively, so the canonical key is lower-case.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ollamamax.errors import BadRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,253}(:[0-9]{1,5})?$")


class ModelName(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def short(self) -> str:
        """What Ollama shows: ``model:tag``, with host and namespace only when not default."""
        prefix = ""
        if self.host != DEFAULT_HOST:
            prefix = f"{self.host}/{self.namespace}/"
        elif self.namespace != DEFAULT_NAMESPACE:
            prefix = f"{self.namespace}/"
        return f"{prefix}{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """The canonical, case-insensitive identity of the model."""
        return self.short.lower()

    @property
    def manifest_parts(self) -> tuple[str, str, str, str]:
        """Path parts of the manifest under ``manifests/``."""
        return (self.host, self.namespace, self.model, self.tag)


def parse(name: str) -> ModelName:
    """Parse a user-given model name; raise `BadRequest` when it is not a valid name."""
    if not isinstance(name, str) or not name or len(name) > 350:
        shown = repr(name[:80]) + "..." if isinstance(name, str) and len(name) > 80 else repr(name)
        raise BadRequest(f"invalid model name {shown}")  # never echo a megabyte back
    rest, tag = name, DEFAULT_TAG
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    parts = rest.split("/")
    if len(parts) == 1:
        host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, (namespace, model) = DEFAULT_HOST, parts
    elif len(parts) == 3:
        host, namespace, model = parts
    else:
        raise BadRequest(f"invalid model name {name!r}")
    if not (_HOST.match(host) and _PART.match(namespace) and _PART.match(model) and _PART.match(tag)):
        raise BadRequest(f"invalid model name {name!r}")
    return ModelName(host, namespace, model, tag)


def model_key(name: str) -> str:
    """The canonical key of `name` (``Smollm2`` -> ``smollm2:latest``)."""
    return parse(name).key


def try_key(name: str) -> str:
    """The canonical key of `name`, or "" when it is not a valid name (skip such entries)."""
    try:
        return parse(name).key
    except BadRequest:
        return ""
