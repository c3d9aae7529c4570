"""The gateway pulls a model into one node: the healthy one with the most free disk."""

from ollamamax.gateway.pull import choose_node
from ollamamax.scheduler import ClusterView


def _view(*nodes):
    """(id, healthy, free bytes or None) per node."""
    view = ClusterView()
    for node_id, healthy, free in nodes:
        i = view.add(node_id, f"http://{node_id}")
        view.set_health(i, healthy, now=1.0)
        view.info[i] = {} if free is None else {"disk": {"free_bytes": free, "total_bytes": 1 << 40}}
    return view


def test_the_most_free_disk_wins_among_healthy_nodes():
    view = _view(("a", True, 10), ("b", True, 30), ("c", False, 99), ("d", True, None))
    assert view.ids[choose_node(view)] == "b"


def test_without_disk_figures_any_healthy_node_and_the_least_busy_first():
    view = _view(("a", True, None), ("b", True, None))
    view.in_flight[0] = 3
    assert view.ids[choose_node(view)] == "b"


def test_draining_nodes_and_empty_clusters_get_nothing():
    view = _view(("a", True, 50), ("b", True, 10))
    view.set_draining(0, True)
    assert view.ids[choose_node(view)] == "b"
    assert choose_node(_view(("x", False, 50))) is None
    assert choose_node(ClusterView()) is None
