"""The scheduler's frame (candidates, panic, unknown models) and routing v0's order."""

import pytest

from ollamamax.errors import ConfigError, ModelNotFound
from ollamamax.scheduler import ClusterView, LoadedModel, RouteRequest, Scheduler

M = "m:latest"


def view_of(*nodes):
    """nodes: (id, healthy, has models, loaded models, in flight)."""
    view = ClusterView()
    for node_id, healthy, models, loaded, in_flight in nodes:
        i = view.add(node_id, f"http://{node_id}")
        view.set_health(i, healthy, 0)
        view.update(i, models=[(m, 1) for m in models], loaded=[LoadedModel(m) for m in loaded])
        view.in_flight[i] = in_flight
    return view


def decide(view, model=M, strategy="loaded_least_busy"):
    d = Scheduler(strategy).decide(RouteRequest(model), view, now=0)
    return tuple(view.ids[i] for i in d.ordered()), d


def test_prefers_loaded_over_idle():
    view = view_of(("a", True, [M], [], 0), ("b", True, [M], [M], 3))
    assert decide(view)[0] == ("b", "a")


def test_then_fewest_in_flight():
    view = view_of(("a", True, [M], [M], 2), ("b", True, [M], [M], 1))
    assert decide(view)[0][0] == "b"


def test_unhealthy_and_modelless_nodes_are_not_candidates():
    view = view_of(("a", False, [M], [M], 0), ("b", True, ["x:latest"], [], 0),
                   ("c", True, [M], [], 5))
    assert decide(view)[0] == ("c",)


def test_ties_spread_by_requests_served():
    view = view_of(("a", True, [M], [], 0), ("b", True, [M], [], 0))
    first = decide(view)[0][0]
    i, m = view.node(first), view.model_id(M)
    view.started(i, m)
    view.finished(i, m, ok=False)
    assert decide(view)[0][0] != first


def test_unknown_model_is_not_found():
    with pytest.raises(ModelNotFound):
        decide(view_of(("a", True, ["x:latest"], [], 0)))


@pytest.mark.parametrize("strategy", ["loaded_least_busy", "intelligent"])
def test_all_down_falls_back_to_panic_routing(strategy):
    view = view_of(("a", False, [M], [], 0), ("b", False, [M], [], 0))
    nodes, decision = decide(view, strategy=strategy)
    assert set(nodes) == {"a", "b"}
    assert "panic" in decision.reason


def test_success_marks_model_loaded():
    view = view_of(("a", True, [M], [], 0))
    i, m = view.node("a"), view.model_id(M)
    view.started(i, m)
    view.finished(i, m, ok=True)
    assert view.loaded[m][i] and view.in_flight[i] == 0


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ConfigError, match="intelligent"):
        Scheduler("fastest-ever")
