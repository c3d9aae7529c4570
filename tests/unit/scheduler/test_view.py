"""ClusterView: membership, health, telemetry, outcomes, counts, labels, growth, listeners."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ollamamax.scheduler import ClusterView, LoadedModel

M, X = "m:7b", "x:1b"


class Recorder:
    """A listener that writes down every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def node_changed(self, view, node):
        self.calls.append(("node", node))

    def cell_changed(self, view, node, model):
        self.calls.append(("cell", node, model))

    def model_added(self, view, model):
        self.calls.append(("model", model))

    def resized(self, view):
        self.calls.append(("resized", view.capacity))

    def take(self) -> list[tuple]:
        calls, self.calls = self.calls, []
        return calls


def healthy_node(view: ClusterView, node_id: str, *models: str, loaded=()) -> int:
    i = view.add(node_id, f"http://{node_id}")
    view.set_health(i, True, 0.0)
    view.update(i, models=[(m, 0) for m in models], loaded=[LoadedModel(m) for m in loaded])
    return i


def counts_agree(view: ClusterView) -> None:
    for m in range(len(view.model_names)):
        has = view.has[m][: view.n]
        assert view.holders[m] == int(has.sum())
        assert view.routable_holders[m] == int((has & view.routable[: view.n]).sum())
    expected = view.present & view.healthy & ~view.draining
    assert np.array_equal(view.routable[: view.n], expected[: view.n])


# -- membership ----------------------------------------------------------------------------


def test_nodes_are_numbered_in_join_order_and_refreshed_in_place():
    view = ClusterView()
    assert [view.add(n, f"http://{n}") for n in ("a", "b", "c")] == [0, 1, 2]
    assert view.add("b", "http://b2", labels=["zone=eu"], mem_total=7, speed=2.0) == 1
    assert (view.n, view.urls[1], view.labels[1], view.mem_total[1], view.speed[1]) == \
           (3, "http://b2", frozenset({"zone=eu"}), 7, 2.0)
    assert view.add("b") == 1 and view.urls[1] == "http://b2"  # an empty url keeps the old one
    assert view.node("c") == 2 and view.present_nodes() == [0, 1, 2]


def test_a_new_node_is_present_but_not_routable_until_healthy():
    view = ClusterView()
    i = view.add("a")
    assert view.present[i] and not view.healthy[i] and not view.routable[i]


def test_remove_keeps_the_number_and_stops_routing():
    view = ClusterView()
    healthy_node(view, "a", M)
    b = healthy_node(view, "b", M)
    view.remove("b")
    assert (view.n, view.node("b")) == (2, b)
    assert not view.present[b] and not view.healthy[b] and not view.routable[b]
    assert view.present_nodes() == [0]
    assert view.routable_holders[0] == 1
    counts_agree(view)
    view.remove("b")  # twice: nothing happens
    view.remove("never-seen")
    counts_agree(view)


def test_a_node_that_comes_back_needs_a_health_check():
    view = ClusterView()
    a = healthy_node(view, "a", M)
    view.remove("a")
    assert view.add("a") == a and view.present[a] and not view.routable[a]
    view.set_health(a, True, 1.0)
    assert view.routable[a] and view.routable_holders[0] == 1


# -- health and draining -------------------------------------------------------------------


def test_health_changes_are_reported_and_counted():
    view = ClusterView()
    a = healthy_node(view, "a", M, X)
    assert view.set_health(a, True, 5.0) is False
    assert view.updated_at[a] == 5.0
    assert view.set_health(a, False, 6.0, "connect refused") is True
    assert (view.last_error[a], view.routable[a]) == ("connect refused", False)
    assert view.routable_holders == [0, 0] and view.holders == [1, 1]
    assert view.set_health(a, True, 7.0) is True
    assert view.routable_holders == [1, 1]


def test_draining_stops_routing_but_keeps_the_node():
    view = ClusterView()
    a = healthy_node(view, "a", M)
    view.set_draining(a, True)
    assert view.draining[a] and not view.routable[a] and view.routable_holders == [0]
    view.set_draining(a, True)
    assert view.routable_holders == [0]
    view.set_draining(a, False)
    assert view.routable[a] and view.routable_holders == [1]


# -- telemetry -----------------------------------------------------------------------------


def test_update_records_models_loaded_slots_and_node_figures():
    view = ClusterView()
    a = view.add("a")
    view.update(a, models=[(M, 4000)], loaded=[LoadedModel(X, slots=3, busy=2, queued=1, size=9)],
                queue_depth=5, mem_free=100, mem_total=200, now=3.0)
    m, x = view.model_id(M), view.model_id(X)
    assert view.model_names == [M, X] and view.model_size == [4000, 9]
    assert view.has[m][a] and view.has[x][a] and not view.loaded[m][a] and view.loaded[x][a]
    assert (view.slots[x][a], view.reported_busy[x][a], view.queued[x][a]) == (3, 2, 1)
    assert (view.queue_depth[a], view.mem_free[a], view.mem_total[a], view.updated_at[a]) == \
           (5, 100, 200, 3.0)
    assert view.holders == [1, 1]


def test_a_model_no_longer_reported_is_gone_from_the_node():
    view = ClusterView()
    a = healthy_node(view, "a", M, loaded=[X])
    view.update(a, models=[(M, 0)])
    x = view.model_id(X)
    assert not view.has[x][a] and not view.loaded[x][a] and view.slots[x][a] == 0
    assert view.holders[x] == 0 and view.routable_holders[x] == 0


def test_update_without_memory_keeps_the_last_figures():
    view = ClusterView()
    a = view.add("a", mem_total=64)
    view.update(a, mem_free=10)
    view.update(a)
    assert (view.mem_free[a], view.mem_total[a]) == (10, 64)


def test_ensure_model_fills_a_missing_size_once():
    view = ClusterView()
    m = view.ensure_model(M)
    assert view.ensure_model(M, 123) == m and view.model_size[m] == 123
    view.ensure_model(M, 456)
    assert view.model_size[m] == 123 and view.model_id("nope") is None


# -- outcomes ------------------------------------------------------------------------------


def test_started_and_finished_count_in_flight_served_and_busy():
    view = ClusterView()
    a = healthy_node(view, "a", loaded=[M])
    m = view.model_id(M)
    view.started(a, m)
    view.started(a, m)
    assert (view.in_flight[a], view.served[a], view.busy[m][a]) == (2, 2, 2)
    view.finished(a, m, ok=True)
    view.finished(a, m, ok=False)
    view.finished(a, m, ok=False)  # one too many: clamped at zero
    assert (view.in_flight[a], view.served[a], view.busy[m][a]) == (0, 2, 0)


def test_a_success_means_the_model_is_loaded_there():
    view = ClusterView()
    a = healthy_node(view, "a")
    m = view.ensure_model(M)
    view.started(a, m)
    view.finished(a, m, ok=True)
    assert view.has[m][a] and view.loaded[m][a] and view.slots[m][a] == 1
    assert view.holders[m] == 1 and view.routable_holders[m] == 1


def test_a_model_being_loaded_for_our_requests_takes_a_place_already():
    """The node reports a model only once loaded; our requests waiting for it mean it takes
    one of the node's places from the moment they are sent."""
    view = ClusterView()
    a = healthy_node(view, "a", M, X, loaded=[M])
    m, x = view.model_id(M), view.model_id(X)
    assert (view.resident[a], view.idle_models[a]) == (1, 1)
    view.started(a, x)  # a cold load of X begins
    assert (view.resident[a], view.idle_models[a]) == (2, 1)
    view.update(a, models=[(M, 0), (X, 0)], loaded=[LoadedModel(M)])  # X still loading
    assert view.resident[a] == 2
    view.finished(a, x, ok=False)  # it failed: the place is free again
    assert (view.resident[a], view.idle_models[a]) == (1, 1)
    view.started(a, m)
    assert (view.resident[a], view.idle_models[a]) == (1, 0)


def test_free_slots_count_ours_plus_other_gateways_never_ours_twice():
    view = ClusterView()
    a = view.add("a")
    view.update(a, loaded=[LoadedModel(M, slots=4, busy=1)], models=[(X, 0)])
    m, x = view.model_id(M), view.model_id(X)
    assert view.free_slots(a, m) == 3 and view.free_slots(a, x) == 0  # x is not loaded
    view.started(a, m)
    view.started(a, m)
    assert (view.used_slots(a, m), view.free_slots(a, m)) == (3, 1)
    # the next report sees our two running plus the other gateway's one: still 3 used
    view.update(a, loaded=[LoadedModel(M, slots=4, busy=3)], models=[(X, 0)])
    assert (view.reported_busy[m][a], view.free_slots(a, m)) == (1, 1)
    for _ in range(4):
        view.started(a, m)
    # six of ours on four slots: two wait; a report of 4 running and 2 queued is all ours
    view.update(a, loaded=[LoadedModel(M, slots=4, busy=4, queued=2)], models=[(X, 0)])
    assert (view.reported_busy[m][a], view.queued[m][a], view.free_slots(a, m)) == (0, 0, 0)


# -- routable holders, under any sequence of operations ------------------------------------

operations = st.lists(st.tuples(
    st.sampled_from(["add", "remove", "health", "drain", "update", "start", "finish",
                     "finish_ok"]),
    st.integers(0, 5), st.booleans(), st.sets(st.sampled_from([M, X]))), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_holder_counts_match_the_arrays_after_any_operations(ops):
    view = ClusterView(capacity=2)
    for op, k, flag, models in ops:
        node_id = f"n{k}"
        if op == "add":
            view.add(node_id)
            continue
        if node_id not in view.index:
            continue
        i = view.node(node_id)
        if op == "remove":
            view.remove(node_id)
        elif op == "health":
            view.set_health(i, flag, 0.0)
        elif op == "drain":
            view.set_draining(i, flag)
        elif op == "update":
            loaded = [LoadedModel(m) for m in sorted(models)] if flag else []
            view.update(i, models=[(m, 0) for m in sorted(models)], loaded=loaded)
        else:
            m = view.ensure_model(sorted(models)[0] if models else M)
            if op != "finish":
                view.started(i, m)
            if op != "start":
                view.finished(i, m, ok=op == "finish_ok" or flag)
        counts_agree(view)
        resident_counts_agree(view)


def resident_counts_agree(view: ClusterView) -> None:
    """`resident` and `idle_models` are kept incrementally; recount them from the cells."""
    n = view.n
    placed = sum(view.loaded[m][:n] | (view.busy[m][:n] > 0)
                 for m in range(len(view.model_names)))
    idle = sum(view.loaded[m][:n] & (view.busy[m][:n] + view.cells["reported_busy"][m][:n] == 0)
               for m in range(len(view.model_names)))
    if len(view.model_names):
        assert np.array_equal(view.resident[:n], placed)
        assert np.array_equal(view.idle_models[:n], idle)


# -- labels --------------------------------------------------------------------------------


def test_label_masks_require_every_label_and_exclude_any():
    view = ClusterView()
    for node_id, labels in (("a", ["gpu=a100", "zone=eu"]), ("b", ["gpu=t4", "zone=eu"]),
                            ("c", ["gpu=a100"])):
        view.add(node_id, labels=labels)
    n = view.n

    def mask(require=(), exclude=()):
        out = view.label_mask(frozenset(require), frozenset(exclude))
        return None if out is None else out[:n].tolist()

    assert mask() is None
    assert mask(["gpu=a100"]) == [True, False, True]
    assert mask(["gpu=a100", "zone=eu"]) == [True, False, False]
    assert mask(exclude=["zone=eu"]) == [False, False, True]
    assert mask(["zone=eu"], ["gpu=t4"]) == [True, False, False]
    assert mask(["gpu=h100"]) == [False, False, False]
    assert mask(exclude=["never=seen"]) == [True, True, True]


def test_changing_labels_updates_the_index():
    view = ClusterView()
    view.add("a", labels=["zone=eu"])
    view.add("a", labels=["zone=us"])
    assert not view.label_index["zone=eu"][0] and view.label_index["zone=us"][0]


# -- growth --------------------------------------------------------------------------------


def test_growing_capacity_keeps_every_array_and_tells_listeners():
    view = ClusterView(capacity=2)
    rec = Recorder()
    view.subscribe(rec)
    a = healthy_node(view, "a", M, loaded=[X])
    b = view.add("b", labels=["zone=eu"], speed=3.0, mem_total=50)
    view.update(b, loaded=[LoadedModel(M, slots=2, busy=1)], queue_depth=4)
    view.started(a, view.model_id(X))
    rec.take()
    c = view.add("c")
    assert view.capacity == 4 and ("resized", 4) in rec.take()
    m, x = view.model_id(M), view.model_id(X)
    assert view.routable[a] and view.in_flight[a] == 1 and view.busy[x][a] == 1
    assert (view.speed[b], view.mem_total[b], view.queue_depth[b]) == (3.0, 50, 4)
    assert view.loaded[m][b] and view.slots[m][b] == 2 and view.reported_busy[m][b] == 1
    assert view.label_index["zone=eu"][b] and len(view.label_index["zone=eu"]) == 4
    assert all(len(a_) == 4 for per in view.cells.values() for a_ in per)
    assert view.speed[c] == 1.0 and view.speed[3] == 1.0  # new rows default to speed 1
    for k in range(3, 9):  # nine nodes
        view.add(f"n{k}")
    assert view.capacity == 16 and view.label_index["zone=eu"][b]


# -- listeners -----------------------------------------------------------------------------


def test_listeners_hear_what_changed_and_only_that():
    view = ClusterView()
    rec = Recorder()
    view.subscribe(rec)
    a = view.add("a")
    assert rec.take() == [("node", a)]
    view.set_health(a, True, 0.0)
    assert rec.take() == [("node", a)]
    view.set_health(a, True, 1.0)
    assert rec.take() == []
    view.update(a, models=[(M, 0)])
    assert rec.take() == [("model", 0), ("cell", a, 0)]
    view.update(a, models=[(M, 0)])
    assert rec.take() == []  # same report: nothing changed
    view.update(a, models=[(M, 0)], queue_depth=2)
    assert rec.take() == [("node", a)]
    view.update(a, models=[(M, 0)], loaded=[LoadedModel(M, slots=2)], queue_depth=2)
    assert rec.take() == [("cell", a, 0)]
    view.started(a, 0)
    view.finished(a, 0, ok=True)
    assert rec.take() == [("cell", a, 0), ("cell", a, 0)]
    view.set_draining(a, True)
    view.remove("a")
    assert rec.take() == [("node", a), ("node", a)]


@pytest.mark.parametrize("capacity", [1, 16])
def test_capacity_is_at_least_one(capacity):
    view = ClusterView(capacity=capacity - 1)
    assert view.capacity == max(1, capacity - 1)
    view.add("a")
    view.add("b")
    assert view.n == 2


def test_refreshing_a_node_without_details_keeps_what_is_known():
    view = ClusterView()
    i = view.add("a", "http://a", labels=["zone=eu"], mem_total=64, speed=2.0)
    view.update(i, mem_total=80)
    view.add("a")  # a membership event that only knows the id
    assert (view.urls[i], view.labels[i], view.mem_total[i], view.speed[i]) == \
           ("http://a", frozenset({"zone=eu"}), 80, 2.0)
