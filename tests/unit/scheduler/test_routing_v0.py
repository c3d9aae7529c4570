import pytest

from ollamamax.errors import ConfigError, ModelNotFound
from ollamamax.scheduler import ClusterView, RouteRequest, Scheduler


def view_of(*nodes):
    view = ClusterView()
    for node_id, healthy, models, loaded, in_flight in nodes:
        view.add(node_id, f"http://{node_id}")
        view.set_health(node_id, healthy, 0)
        view.set_models(node_id, models, loaded)
        view.nodes[node_id].in_flight = in_flight
    return view


def decide(view, model="m:latest"):
    return Scheduler().decide(RouteRequest(model), view, now=0)


def test_prefers_loaded_over_idle():
    view = view_of(("a", True, ["m:latest"], [], 0), ("b", True, ["m:latest"], ["m:latest"], 3))
    assert decide(view).nodes == ("b", "a")


def test_then_fewest_in_flight():
    view = view_of(("a", True, ["m:latest"], ["m:latest"], 2),
                   ("b", True, ["m:latest"], ["m:latest"], 1))
    assert decide(view).node == "b"


def test_unhealthy_and_modelless_nodes_are_not_candidates():
    view = view_of(("a", False, ["m:latest"], ["m:latest"], 0), ("b", True, ["x:latest"], [], 0),
                   ("c", True, ["m:latest"], [], 5))
    assert decide(view).nodes == ("c",)


def test_ties_spread_by_requests_served():
    view = view_of(("a", True, ["m:latest"], [], 0), ("b", True, ["m:latest"], [], 0))
    first = decide(view).node
    view.started(first)
    view.finished(first, "m:latest", ok=False)
    assert decide(view).node != first


def test_unknown_model_is_not_found():
    with pytest.raises(ModelNotFound):
        decide(view_of(("a", True, ["x:latest"], [], 0)))


def test_all_down_falls_back_to_panic_routing():
    view = view_of(("a", False, ["m:latest"], [], 0), ("b", False, ["m:latest"], [], 0))
    decision = decide(view)
    assert set(decision.nodes) == {"a", "b"}
    assert "panic" in decision.reason


def test_success_marks_model_loaded():
    view = view_of(("a", True, ["m:latest"], [], 0))
    view.started("a")
    view.finished("a", "m:latest", ok=True)
    assert "m:latest" in view.nodes["a"].loaded
    assert view.nodes["a"].in_flight == 0


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ConfigError, match="loaded_least_busy"):
        Scheduler("fastest-ever")
