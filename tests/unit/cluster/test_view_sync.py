"""MemberTable: membership records and watch events applied to a ClusterView, without a store."""

from __future__ import annotations

import itertools

from ollamamax.cluster.records import Capacity, DrainOrder, Layout, NodeRecord, encode
from ollamamax.cluster.store import EventType, KeyValue, WatchEvent
from ollamamax.cluster.view_sync import MemberTable
from ollamamax.scheduler.view import ClusterView

LAYOUT = Layout("om/")
MODEL = "m:1b"
_revisions = itertools.count(10)


def record(node_id: str, url: str = "", **fields) -> NodeRecord:
    return NodeRecord(id=node_id, url=url or f"http://10.0.0.1:{len(node_id)}", engine="sim",
                      **fields)


def telemetry(busy: int = 0, queue: int = 0) -> dict:
    return {"engine": "sim", "models": [{"name": MODEL, "size": 1000}],
            "loaded": [{"name": MODEL, "slots": 4, "busy": busy, "size": 1000}],
            "queue_depth": queue, "max_loaded": 2, "num_parallel": 4}


def put(key: str, value: object) -> WatchEvent:
    return WatchEvent(EventType.PUT, key, encode(value), next(_revisions))


def delete(key: str) -> WatchEvent:
    return WatchEvent(EventType.DELETE, key, b"", next(_revisions))


def kv(key: str, value: object) -> KeyValue:
    rev = next(_revisions)
    return KeyValue(key, encode(value), rev, rev, 1, 7)


def table() -> tuple[MemberTable, ClusterView]:
    view = ClusterView()
    return MemberTable(view, LAYOUT), view


def test_a_record_adds_a_healthy_routable_node_with_its_capacity_and_labels():
    t, view = table()
    rec = record("n1", labels=("gpu",), capacity=Capacity(mem_total=8 << 30, max_loaded=2,
                                                           num_parallel=4))
    assert t.apply(put(LAYOUT.node("n1"), rec), now=1.0) == "n1 joined (sim at http://10.0.0.1:2)"
    i = view.node("n1")
    assert view.present[i] and view.healthy[i] and view.routable[i]
    assert view.urls[i] == rec.url and view.labels[i] == {"gpu"}
    assert int(view.mem_total[i]) == 8 << 30
    assert int(view.max_loaded[i]) == 2 and int(view.num_parallel[i]) == 4
    assert t.is_member(i)


def test_telemetry_before_the_record_is_kept_and_shown_with_it():
    t, view = table()
    assert t.apply(put(LAYOUT.telemetry("n1"), telemetry(busy=1)), now=1.0) == ""
    assert "n1" not in view.index  # no record, no node
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=1.0)
    i, m = view.node("n1"), view.model_id(MODEL)
    assert m is not None and view.loaded[m][i] and int(view.slots[m][i]) == 4
    assert int(view.reported_busy[m][i]) == 1
    assert view.info[i]["engine"] == "sim"


def test_telemetry_updates_the_view_and_is_idempotent():
    t, view = table()
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=1.0)
    event = put(LAYOUT.telemetry("n1"), telemetry(busy=3, queue=2))
    for _ in range(2):  # a resumed watch may deliver an event again
        t.apply(event, now=2.0)
    i, m = view.node("n1"), view.model_id(MODEL)
    assert int(view.reported_busy[m][i]) == 3 and int(view.queue_depth[i]) == 2
    assert float(view.updated_at[i]) == 2.0


def test_a_deleted_record_takes_the_node_out_of_routing():
    t, view = table()
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=1.0)
    t.apply(put(LAYOUT.telemetry("n1"), telemetry()), now=1.0)
    assert t.apply(delete(LAYOUT.node("n1")), now=2.0).startswith("n1 left")
    assert t.apply(delete(LAYOUT.telemetry("n1")), now=2.0) == ""
    i = view.node("n1")
    assert not view.present[i] and not view.routable[i]
    assert t.apply(delete(LAYOUT.node("n1")), now=2.0) == ""  # again: nothing
    # it comes back (a new lease): routable again, on the same row
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=3.0)
    assert view.node("n1") == i and view.routable[i]


def test_a_drain_order_stops_routing_and_its_removal_restores_it():
    t, view = table()
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=1.0)
    order = DrainOrder(reason="maintenance", by="cli")
    assert t.apply(put(LAYOUT.drain("n1"), order), now=2.0) == (
        "n1 is draining (maintenance): no new requests go there")
    i = view.node("n1")
    assert view.draining[i] and not view.routable[i] and view.present[i]
    assert t.apply(put(LAYOUT.drain("n1"), order), now=2.0) == ""
    assert t.apply(delete(LAYOUT.drain("n1")), now=3.0) == "n1 takes requests again (no longer draining)"
    assert view.routable[i]


def test_a_drain_order_before_the_record_applies_when_the_node_shows_up():
    t, view = table()
    t.apply(put(LAYOUT.drain("n1"), DrainOrder()), now=1.0)
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=1.0)
    assert view.draining[view.node("n1")]


def test_a_record_again_keeps_a_down_mark_from_traffic():
    """A node the request path found refusing stays down until a health check says
    otherwise; a record re-put (the same node) does not override it."""
    t, view = table()
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=1.0)
    i = view.node("n1")
    view.set_health(i, False, 2.0, "connection refused")
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=3.0)
    assert not view.healthy[i]


def test_load_replaces_everything_and_removes_only_members_that_are_gone():
    t, view = table()
    view.add("static", "http://10.9.9.9:11434")  # a configured backend, not a member
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=1.0)
    t.apply(put(LAYOUT.node("n2"), record("n2")), now=1.0)
    t.apply(put(LAYOUT.drain("n2"), DrainOrder()), now=1.0)
    sentences = t.load([kv(LAYOUT.node("n2"), record("n2")), kv(LAYOUT.node("n3"), record("n3")),
                        kv(LAYOUT.telemetry("n3"), telemetry(busy=2))], revision=99, now=5.0)
    assert sentences[0].startswith("n1 left") and sentences[1].startswith("n3 joined")
    assert len(sentences) == 2
    assert not view.present[view.node("n1")]
    assert view.present[view.node("static")] and not t.is_member(view.node("static"))
    n2, n3 = view.node("n2"), view.node("n3")
    assert view.routable[n2] and not view.draining[n2]  # its drain order is gone
    assert int(view.reported_busy[view.model_id(MODEL)][n3]) == 2
    assert t.revision == 99


def test_malformed_and_foreign_keys_are_ignored(caplog):
    t, view = table()
    bad = WatchEvent(EventType.PUT, LAYOUT.node("n1"), b"{not json", 50)
    assert t.apply(bad, now=1.0) == ""
    assert t.apply(put(LAYOUT.node("n2"), record("someone-else")), now=1.0) == ""
    assert t.apply(put("om/blobs/sha256:x", {"a": 1}), now=1.0) == ""
    assert t.apply(put("other/nodes/n1", record("n1")), now=1.0) == ""
    assert view.n == 0
    assert "malformed membership record" in caplog.text
    assert t.revision >= 50


def test_layout_keys_round_trip():
    assert LAYOUT.parse(LAYOUT.drain("a/b")) == (LAYOUT.parse(LAYOUT.drain("x"))[0], "a/b")
    assert LAYOUT.parse("om/nodes/") is None
    assert LAYOUT.parse("om/unknown/n1") is None


def test_a_node_draining_on_its_own_account_says_so_in_its_telemetry():
    t, view = table()
    t.apply(put(LAYOUT.node("n1"), record("n1")), now=1.0)
    sentence = t.apply(put(LAYOUT.telemetry("n1"), {**telemetry(), "draining": True}), now=2.0)
    assert sentence == "n1 is draining (its own): no new requests go there"
    i = view.node("n1")
    assert view.draining[i]
    t.apply(put(LAYOUT.drain("n1"), DrainOrder(by="cli")), now=3.0)
    t.apply(put(LAYOUT.telemetry("n1"), telemetry()), now=4.0)
    assert view.draining[i]  # the order in the store still holds it
    t.apply(delete(LAYOUT.drain("n1")), now=5.0)
    assert view.routable[i]
