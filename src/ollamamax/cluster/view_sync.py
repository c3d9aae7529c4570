"""Membership records and their changes, applied to a gateway's `ClusterView` (pure).

`MemberTable` holds what the store says about each node (record, telemetry, drain order)
and keeps the view in step: a record puts the node in the view, healthy; its deletion (the
node's lease ended) takes it out; telemetry updates models, slots and queue; a drain order
stops new routing to it. `load` takes a whole listing (at start, and after a compaction),
`apply` one watch event. Both are idempotent, so an event delivered twice (a watch resumed
from the revision it was in) changes nothing, and both return sentences saying what changed.

Nodes the table never saw (static backends, discovered servers) are left alone. No I/O, no
clock: `ClusterWatcher` (``membership.py``) feeds it.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ollamamax.cluster.records import (
    DrainOrder,
    Kind,
    Layout,
    NodeRecord,
    decode_drain,
    decode_record,
    decode_telemetry,
)
from ollamamax.cluster.store import EventType, KeyValue, WatchEvent
from ollamamax.models.names import try_key
from ollamamax.scheduler.prefix import BLOCK_CHARS
from ollamamax.scheduler.view import ClusterView, LoadedModel

log = logging.getLogger(__name__)

TOKENS_PER_BLOCK = BLOCK_CHARS // 4  # ~4 characters a token


class MemberTable:
    def __init__(self, view: ClusterView, layout: Layout | None = None) -> None:
        self.view = view
        self.layout = layout or Layout()
        self.records: dict[str, NodeRecord] = {}
        self.telemetry: dict[str, dict[str, Any]] = {}
        self.drains: dict[str, DrainOrder] = {}
        self.revision = 0  # the store revision everything up to which is applied

    def is_member(self, i: int) -> bool:
        """Node `i` of the view came from the store (not from static config or discovery)."""
        return self.view.ids[i] in self.records

    # -- a whole listing -------------------------------------------------------------------

    def load(self, kvs: list[KeyValue], revision: int, now: float) -> list[str]:
        """Replace everything with a listing read at `revision`; nodes gone from it leave."""
        before = set(self.records)
        self.records, self.telemetry, self.drains = {}, {}, {}
        for kv in kvs:
            self._remember(kv.key, kv.value)
        sentences = [self._leave(node_id) for node_id in sorted(before - set(self.records))]
        for node_id in self.records:
            sentences.append(self._show(node_id, now, joined=node_id not in before))
        self.revision = max(self.revision, revision)
        return [s for s in sentences if s]

    # -- one change ------------------------------------------------------------------------

    def apply(self, event: WatchEvent, now: float) -> str:
        """Apply one watch event; returns what changed ("" for nothing worth a line)."""
        self.revision = max(self.revision, event.mod_revision)
        parsed = self.layout.parse(event.key)
        if parsed is None:
            return ""
        kind, node_id = parsed
        if event.type is EventType.PUT:
            known = node_id in self.records
            if not self._remember(event.key, event.value):
                return ""
            if kind is Kind.NODE:
                return self._show(node_id, now, joined=not known)
            return self._refresh(kind, node_id, now)
        return self._forget(kind, node_id, now)

    def _remember(self, key: str, value: bytes) -> bool:
        """Decode and keep one record; False (logged) if it is malformed."""
        parsed = self.layout.parse(key)
        if parsed is None:
            return False
        kind, node_id = parsed
        try:
            if kind is Kind.NODE:
                record = decode_record(value)
                if record.id != node_id or not record.url:
                    raise ValueError(f"record of {record.id!r} without a URL or at another "
                                     "node's key")
                self.records[node_id] = record
            elif kind is Kind.TELEMETRY:
                self.telemetry[node_id] = decode_telemetry(value)
            else:
                self.drains[node_id] = decode_drain(value)
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning("ignored a malformed membership record at %s: %s", key, exc)
            return False
        return True

    def _refresh(self, kind: Kind, node_id: str, now: float) -> str:
        """New telemetry or a drain order for `node_id`, shown if the node is in the view."""
        if node_id not in self.records:
            return ""  # kept until its record arrives
        if kind is Kind.TELEMETRY:
            apply_telemetry(self.view, self.view.node(node_id), self.telemetry[node_id], now)
        return self._drain_state(node_id)

    def _forget(self, kind: Kind, node_id: str, now: float) -> str:
        if kind is Kind.NODE:
            return self._leave(node_id) if self.records.pop(node_id, None) else ""
        table = self.telemetry if kind is Kind.TELEMETRY else self.drains
        if table.pop(node_id, None) is None or node_id not in self.records:
            return ""
        return self._drain_state(node_id)

    def _draining(self, node_id: str) -> bool:
        """Drained by an order in the store, or on its own account (its telemetry says so:
        ``POST /admin/drain`` on the node, or SIGTERM)."""
        return node_id in self.drains or bool(self.telemetry.get(node_id, {}).get("draining"))

    def _drain_state(self, node_id: str) -> str:
        i = self.view.node(node_id)
        draining = self._draining(node_id)
        if bool(self.view.draining[i]) == draining:
            return ""
        self.view.set_draining(i, draining)
        if not draining:
            return f"{node_id} takes requests again (no longer draining)"
        order = self.drains.get(node_id)
        reason = (order.reason or f"order by {order.by or 'someone'}") if order else "its own"
        return f"{node_id} is draining ({reason}): no new requests go there"

    # -- the view --------------------------------------------------------------------------

    def _show(self, node_id: str, now: float, *, joined: bool) -> str:
        """Put a node with a record in the view, as the store describes it."""
        record = self.records[node_id]
        view = self.view
        new_row = node_id not in view.index or not view.present[view.index[node_id]]
        i = view.add(node_id, record.url, labels=record.labels,
                     mem_total=record.capacity.mem_total or None)
        doc = self.telemetry.get(node_id)
        if doc is not None:
            apply_telemetry(view, i, doc, now)
        elif new_row:  # nothing reported yet: at least the node's limits
            view.update(i, max_loaded=record.capacity.max_loaded or None,
                        num_parallel=record.capacity.num_parallel or None, now=now)
        if new_row:
            view.set_health(i, True, now)
        view.set_draining(i, self._draining(node_id))
        if not joined:
            return ""
        return f"{node_id} joined ({record.engine or 'unknown engine'} at {record.url})"

    def _leave(self, node_id: str) -> str:
        if node_id not in self.view.index:
            return ""
        self.view.remove(node_id)
        return f"{node_id} left (its record is gone: lease expired or revoked)"


def apply_telemetry(view: ClusterView, i: int, info: dict[str, Any], now: float) -> None:
    """One telemetry document (a node's ``GET /telemetry``, or one read from etcd) into row `i`
    of the view: what health checks and the cluster watch both apply."""
    models = [(key, _int(m.get("size"))) for m in info.get("models") or ()
              if isinstance(m, dict) and (key := try_key(str(m.get("name", ""))))]
    loaded = [LoadedModel(key, _int(m.get("slots"), 1), _int(m.get("busy")),
                          _int(m.get("queued")), _int(m.get("size")))
              for m in info.get("loaded") or ()
              if isinstance(m, dict) and not m.get("loading")
              and (key := try_key(str(m.get("name", ""))))]
    memory = info.get("memory") or {}
    kv_tokens = _int(info.get("num_ctx")) * _int(info.get("num_parallel")) * max(1, len(loaded))
    view.update(i, models=models, loaded=loaded, queue_depth=_int(info.get("queue_depth")),
                mem_free=memory.get("available_bytes"), mem_total=memory.get("total_bytes"),
                max_loaded=info.get("max_loaded"), num_parallel=info.get("num_parallel"),
                prefix_blocks=kv_tokens // TOKENS_PER_BLOCK if kv_tokens else None, now=now)
    view.info[i] = info


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value or default)
    except (TypeError, ValueError):
        return default

