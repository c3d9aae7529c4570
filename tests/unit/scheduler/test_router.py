"""The request lifecycle shared by gateway and simulator."""

from ollamamax.scheduler import ClusterView, LoadedModel, RouteRequest, Scheduler
from ollamamax.scheduler.queue import AdmissionQueue, Waiting
from ollamamax.scheduler.router import Dispatch, Router

M = "m:1"


def setup(nodes=2, slots=1, queue=True):
    view = ClusterView()
    for k in range(nodes):
        i = view.add(f"n{k}")
        view.set_health(i, True, 0)
        view.update(i, models=[(M, 1)], loaded=[LoadedModel(M, slots=slots)])
    return Router(Scheduler("intelligent"), view, AdmissionQueue() if queue else None), view


def test_dispatch_counts_the_slot_at_once():
    router, view = setup(nodes=2)
    a = router.arrive(RouteRequest(M), 0.0)
    b = router.arrive(RouteRequest(M), 0.0)
    assert isinstance(a, Dispatch) and isinstance(b, Dispatch)
    assert {a.decision.node, b.decision.node} == {0, 1}
    assert list(view.in_flight[:2]) == [1, 1]


def test_full_cluster_holds_requests_and_a_finish_releases_the_best():
    router, view = setup(nodes=1)
    first = router.arrive(RouteRequest(M), 0.0)
    held = [router.arrive(RouteRequest(M, priority=p), 0.1, ticket=p) for p in (2, 0)]
    assert all(isinstance(h, Waiting) for h in held)
    released = router.finished(first.decision.node, first.model, 1.0, ok=True, ttft=0.1)
    assert [d.ticket for d in released] == [0]  # the interactive one, and only one slot
    assert released[0].queued_at == 0.1
    assert len(router.queue) == 1 and view.in_flight[0] == 1


def test_without_a_queue_requests_go_straight_to_nodes():
    router, view = setup(nodes=1, queue=False)
    outcomes = [router.arrive(RouteRequest(M), 0.0) for _ in range(3)]
    assert all(isinstance(o, Dispatch) for o in outcomes)
    assert view.in_flight[0] == 3


def test_failover_moves_the_count_and_records_the_failure():
    router, view = setup(nodes=2)
    d = router.arrive(RouteRequest(M), 0.0)
    other = 1 - d.decision.node
    router.failed_over(d, d.decision.node, other, 0.1)
    assert view.in_flight[d.decision.node] == 0 and view.in_flight[other] == 1
    assert view.profiles.get(d.decision.node, d.model).errors == 1


def test_finish_feeds_profiles_history_and_prefixes():
    router, view = setup(nodes=1)
    d = router.arrive(RouteRequest(M, prefix=(7, 8, 9), prompt_tokens=48), 0.0)
    router.finished(d.decision.node, d.model, 2.0, ok=True, ttft=0.2, duration=1.0,
                    prompt_tokens=48, output_tokens=11, prefill_s=0.1, decode_s=0.5)
    profile = view.profiles.get(0, d.model)
    assert profile.ttft == 0.2 and profile.prefill_tps == 480 and profile.decode_tps == 20
    assert len(view.history) == 1 and view.history.select("ttft")[0] == 0.2
    assert view.prefixes.matches((7, 8, 9)) == {0: 3}


def test_cancelled_waiting_request_is_never_dispatched():
    router, _ = setup(nodes=1)
    first = router.arrive(RouteRequest(M), 0.0)
    held = router.arrive(RouteRequest(M), 0.0, ticket="gone")
    router.cancel(held)
    assert router.finished(first.decision.node, first.model, 1.0, ok=True) == []


def test_a_request_holding_out_for_its_own_node_does_not_block_the_next():
    """A freed slot goes to a waiting request that can use it, past one that waits for the
    slot of the node holding its long prompt."""
    router, view = setup(nodes=2)
    prefix = tuple(range(1, 65))
    view.prefixes.record(0, prefix)
    running = [router.arrive(RouteRequest(M), 0.0) for _ in range(2)]
    loyal = router.arrive(RouteRequest(M, prompt_tokens=20_000, prefix=prefix), 0.1, ticket="a")
    plain = router.arrive(RouteRequest(M, prompt_tokens=10), 0.2, ticket="b")
    assert isinstance(loyal, Waiting) and isinstance(plain, Waiting)
    on_1 = next(d for d in running if d.decision.node == 1)
    released = router.finished(1, on_1.model, 1.0, ok=True, ttft=0.1)
    assert [d.ticket for d in released] == ["b"]
    assert [w.ticket for w in router.queue.head(on_1.model, 8)] == ["a"]
    on_0 = next(d for d in running if d.decision.node == 0)
    released = router.finished(0, on_0.model, 2.0, ok=True, ttft=0.1)
    assert [(d.ticket, d.decision.node) for d in released] == [("a", 0)]
