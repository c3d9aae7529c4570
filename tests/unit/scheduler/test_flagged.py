"""The scheduler that feature flags steer per request."""

from __future__ import annotations

from collections import Counter

import pytest

from ollamamax import variants
from ollamamax.flags import Flags
from ollamamax.scheduler import RouteRequest, Scheduler
from ollamamax.scheduler.baselines import RecomputingIntelligent
from ollamamax.scheduler.constraints import nested_label_mask
from ollamamax.scheduler.flagged import FlaggedScheduler
from ollamamax.scheduler.queue import AdmissionQueue
from ollamamax.scheduler.router import Dispatch, Router
from ollamamax.scheduler.strategies.intelligent import Intelligent
from ollamamax.testing.views import NodeSpec, build_view

M = "m:7b"


def cluster(slots: int = 4):
    return build_view([NodeSpec(loaded={M: slots}, labels=("even",) if k % 2 == 0 else ())
                       for k in range(6)])


def flagged(view, **kwargs) -> tuple[Flags, FlaggedScheduler]:
    flags = Flags(variants.definitions())
    return flags, FlaggedScheduler(flags, view, **kwargs)


def strategy_of(scheduler: FlaggedScheduler, request: RouteRequest) -> str:
    """Which strategy decided `request` (read back from the counts)."""
    before = scheduler.served()
    scheduler.decide(request, scheduler.view, 0.0)
    after = scheduler.served()
    (name,) = [v for (f, v), n in after.items()
               if f == variants.STRATEGY and n > before.get((f, v), 0)]
    return name


def test_without_a_split_it_decides_as_the_plain_scheduler():
    view = cluster()
    _, flagged_scheduler = flagged(view)
    plain = Scheduler("intelligent")
    for k in range(20):
        r = RouteRequest(M, prompt_tokens=100 * k, prefix=(k % 3,))
        assert flagged_scheduler.decide(r, view, 0.0).node == plain.decide(r, view, 0.0).node
    assert flagged_scheduler.served()[variants.STRATEGY, "intelligent"] == 20
    assert flagged_scheduler.name == "intelligent"


def test_a_split_sends_a_key_always_to_the_same_strategy_and_the_share_to_the_new_one():
    view = cluster()
    flags, scheduler = flagged(view)
    flags.set(variants.STRATEGY, "round_robin", 30)
    assert scheduler.name == "intelligent (round_robin for 30%)"
    chosen = {f"key-{k}": strategy_of(scheduler, RouteRequest(M, key=f"key-{k}"))
              for k in range(400)}
    assert set(chosen.values()) == {"intelligent", "round_robin"}
    assert sum(v == "round_robin" for v in chosen.values()) / 400 == pytest.approx(0.3, abs=0.06)
    for key, name in list(chosen.items())[:50]:  # sticky per key
        assert strategy_of(scheduler, RouteRequest(M, key=key)) == name
    anonymous = Counter(strategy_of(scheduler, RouteRequest(M)) for _ in range(400))
    assert anonymous["round_robin"] / 400 == pytest.approx(0.3, abs=0.06)


def test_switching_strategy_unbinds_the_old_one_and_counts_survive():
    view = cluster()
    flags, scheduler = flagged(view)
    intelligent_listeners = list(view.listeners)
    assert any(isinstance(x, Intelligent) for x in intelligent_listeners)
    for _ in range(3):
        scheduler.decide(RouteRequest(M), view, 0.0)
    flags.set(variants.STRATEGY, "sglang_cache_aware")
    assert not any(isinstance(x, Intelligent) for x in view.listeners)
    scheduler.decide(RouteRequest(M), view, 0.0)
    flags.rollback(variants.STRATEGY)
    assert sum(isinstance(x, Intelligent) for x in view.listeners) == 1
    assert not any(type(x).__name__ == "SGLangCacheAware" for x in view.listeners)
    scheduler.decide(RouteRequest(M), view, 0.0)
    served = scheduler.served()
    assert served[variants.STRATEGY, "intelligent"] == 4
    assert served[variants.STRATEGY, "sglang_cache_aware"] == 1


def test_weights_and_constraints_flags_choose_the_baselines():
    view = cluster()
    flags, scheduler = flagged(view)
    flags.set(variants.WEIGHTS, "recompute")
    flags.set(variants.CONSTRAINTS, "nested_loop")
    assert isinstance(scheduler.strategy, RecomputingIntelligent)
    d = scheduler.decide(RouteRequest(M, require=frozenset({"even"})), view, 0.0)
    assert d.node % 2 == 0
    assert scheduler._fixed is not None and scheduler._fixed.label_mask is nested_label_mask
    served = scheduler.served()
    assert served[variants.WEIGHTS, "recompute"] == 1
    assert served[variants.CONSTRAINTS, "nested_loop"] == 1


def test_weights_count_only_for_the_strategy_that_has_them():
    view = cluster()
    flags, scheduler = flagged(view)
    flags.set(variants.STRATEGY, "least_busy")
    scheduler.decide(RouteRequest(M), view, 0.0)
    assert (variants.WEIGHTS, "cached") not in scheduler.served()


def test_held_requests_count_when_dispatched_and_component_flags_count_segments():
    view = cluster(slots=1)
    queue = AdmissionQueue()
    flags, scheduler = flagged(view, follows=(variants.QUEUE_ORDER,))
    router = Router(scheduler, view, queue)  # type: ignore[arg-type]
    outs = [router.arrive(RouteRequest(M), 0.0) for _ in range(8)]  # 6 slots: two wait
    dispatched = [o for o in outs if isinstance(o, Dispatch)]
    assert len(dispatched) == 6 and len(queue) == 2
    assert scheduler.served()[variants.STRATEGY, "intelligent"] == 6
    flags.set(variants.QUEUE_ORDER, "sorted_list")
    queue.set_order("sorted_list")  # what the gateway's flag listener does
    later = router.finished(dispatched[0].decision.node, dispatched[0].model, 1.0, ok=True)
    assert len(later) == 1
    served = scheduler.served()
    assert served[variants.STRATEGY, "intelligent"] == 7
    assert served[variants.QUEUE_ORDER, "heap"] == 6
    assert served[variants.QUEUE_ORDER, "sorted_list"] == 1
