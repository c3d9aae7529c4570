"""What cluster membership keeps in the store: the key layout and the records, as JSON.

Under a prefix (``ollamamax/`` by default), every key of a node lives under that node's lease,
so a node that dies takes them all with it when the lease expires:

    <prefix>nodes/<id>       the node's record (`NodeRecord`): URL, engine, labels, capacity
    <prefix>telemetry/<id>   its telemetry: the document its ``GET /telemetry`` serves
    <prefix>drain/<id>       a drain order (`DrainOrder`): take no new work, finish the rest

Gateways watch the whole prefix; a node watches its own drain key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import msgspec

DEFAULT_PREFIX = "ollamamax/"


class Kind(enum.StrEnum):
    NODE = "nodes"
    TELEMETRY = "telemetry"
    DRAIN = "drain"


class Capacity(msgspec.Struct, frozen=True, kw_only=True):
    mem_total: int = 0  # bytes; 0: unknown
    max_loaded: int = 0  # models resident at once; 0: unknown (Ollama's default applies)
    num_parallel: int = 0  # requests at once per model


class NodeRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    url: str
    engine: str = ""
    labels: tuple[str, ...] = ()
    capacity: Capacity = Capacity()
    version: str = ""


class DrainOrder(msgspec.Struct, frozen=True, kw_only=True):
    reason: str = ""
    by: str = ""  # who gave it: "cli", "admin", "signal"
    at: float = 0.0  # Unix time it was given


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each record lives under `prefix`."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.endswith("/"):
            raise ValueError(f"a membership prefix ends with '/': {self.prefix!r}")

    def key(self, kind: Kind, node_id: str) -> str:
        if not node_id:
            raise ValueError("a node id must not be empty")
        return f"{self.prefix}{kind.value}/{node_id}"

    def node(self, node_id: str) -> str:
        return self.key(Kind.NODE, node_id)

    def telemetry(self, node_id: str) -> str:
        return self.key(Kind.TELEMETRY, node_id)

    def drain(self, node_id: str) -> str:
        return self.key(Kind.DRAIN, node_id)

    def parse(self, key: str) -> tuple[Kind, str] | None:
        """``(kind, node id)`` of a membership key; None for anything else under the prefix."""
        if not key.startswith(self.prefix):
            return None
        kind, _, node_id = key[len(self.prefix):].partition("/")
        if not node_id or kind not in _KINDS:
            return None
        return Kind(kind), node_id


_KINDS = frozenset(k.value for k in Kind)
_record_decoder = msgspec.json.Decoder(NodeRecord)
_drain_decoder = msgspec.json.Decoder(DrainOrder)
_doc_decoder = msgspec.json.Decoder(dict[str, Any])
encode = msgspec.json.encode


def decode_record(value: bytes) -> NodeRecord:
    return _record_decoder.decode(value)


def decode_drain(value: bytes) -> DrainOrder:
    return _drain_decoder.decode(value) if value else DrainOrder()


def decode_telemetry(value: bytes) -> dict[str, Any]:
    return _doc_decoder.decode(value)
