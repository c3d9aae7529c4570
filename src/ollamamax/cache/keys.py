"""Which requests may be answered from the cache, and under which key (pure).

Only deterministic requests are cached: embeddings (unless ``[cache] embeddings = false``),
and generations with temperature 0 and a seed when the caller opts in (the request header
``X-OllamaMax-Cache: use``, or ``[cache] generations = true``). ``Cache-Control: no-cache``
skips the lookup and records the fresh answer over the old one.

A key is a BLAKE2b digest of: the API the client spoke (its answer's bytes differ: Ollama or
OpenAI), the endpoint path, whether the answer streams (a stream is replayed as the stream
that was recorded), the model's manifest digest (a new version of the model is a new key and
the old entries are dropped), and the request body as canonical JSON (keys sorted) without
the fields that cannot change the answer's bytes.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

HEADER = "X-OllamaMax-Cache"  # request: "use" opts a generation in; response: what happened
OPT_IN = "use"
# request storage: the response header's value, for the request path to add to a stream
CACHE_STATE: Any = web.RequestKey("ollamamax.cache", str) if hasattr(web, "RequestKey") \
    else "ollamamax.cache"
EMBEDDINGS = frozenset({"embed", "embeddings"})
GENERATIONS = frozenset({"chat", "generate"})
# Fields that change nothing in the answer's bytes. `stream` is in the key separately.
IGNORED = frozenset({"stream", "keep_alive", "user"})

_decoder = msgspec.json.Decoder()


class Mode(enum.Enum):
    SKIP = "skip"  # not cacheable: straight to a node, no header
    LOOKUP = "lookup"  # answer from the cache if it can; record a miss
    REFRESH = "refresh"  # Cache-Control: no-cache: ask a node, record over the old answer


def mode(endpoint: str, options: Any, headers: Mapping[str, str], *, embeddings: bool,
         generations: bool) -> Mode:
    """How the cache treats a request to `endpoint` (already known to be one it may cache)
    with these `options` (the request's `ot.Options` or None) and request headers."""
    if endpoint in EMBEDDINGS:
        if not embeddings:
            return Mode.SKIP
    elif not ((generations or headers.get(HEADER, "").strip().lower() == OPT_IN)
              and deterministic(options)):
        return Mode.SKIP
    control = headers.get("Cache-Control")
    if control and "no-cache" in control.lower():
        return Mode.REFRESH
    return Mode.LOOKUP


def deterministic(options: Any) -> bool:
    """Temperature 0 and a fixed seed: the same request gives the same answer."""
    return (options is not None and options.temperature is not None
            and options.temperature == 0 and options.seed is not None)


def cache_key(api: str, path: str, stream: bool, digest: str, body: bytes) -> bytes:
    """The key of an answer (see the module docstring); `body` is the client's JSON body."""
    doc = _decoder.decode(body)
    if isinstance(doc, dict):
        for name in IGNORED.intersection(doc):
            del doc[name]
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{api}\0{path}\0{int(stream)}\0{digest}\0".encode())
    h.update(msgspec.json.encode(doc, order="sorted"))
    return h.digest()
