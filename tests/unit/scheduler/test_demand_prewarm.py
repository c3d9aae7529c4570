"""Demand forecasts and the prewarmer: load what is about to be wanted, count what paid."""

from __future__ import annotations

import pytest

from ollamamax.scheduler import RouteRequest, Scheduler
from ollamamax.scheduler.demand import DemandForecast
from ollamamax.scheduler.prewarm import Preload, Prewarmer
from ollamamax.scheduler.router import Router
from ollamamax.testing.views import NodeSpec, build_view

GB = 1_000_000_000


def feed(forecast: DemandForecast, model: int, rate_of, start: float, end: float) -> None:
    """Arrivals of `model` at `rate_of(t)` per second, one bucket at a time."""
    t = start
    while t < end:
        for k in range(round(rate_of(t) * forecast.bucket_s)):
            forecast.observe(model, t + k * 1e-3)
        t += forecast.bucket_s


def test_a_steady_rate_is_forecast_as_it_is():
    f = DemandForecast(bucket_s=10)
    feed(f, 0, lambda t: 2.0, 0, 300)
    assert f.rate(0, 300) == pytest.approx(2.0, rel=0.05)
    assert f.rate(0, 300, ahead_s=60) == pytest.approx(2.0, rel=0.1)


def test_rising_demand_is_forecast_above_its_recent_mean_and_falling_below():
    rising, falling = DemandForecast(bucket_s=10), DemandForecast(bucket_s=10)
    feed(rising, 0, lambda t: 0.1 + t / 100, 0, 200)  # 0.1 -> 2.1 requests/s
    feed(falling, 0, lambda t: 2.1 - t / 100, 0, 200)
    assert rising.rate(0, 200, ahead_s=30) > rising.rate(0, 200) > 1.5
    assert falling.rate(0, 200, ahead_s=30) < falling.rate(0, 200) < 0.6


def test_a_model_nobody_asks_for_any_more_fades_to_nothing():
    f = DemandForecast(bucket_s=10)
    feed(f, 0, lambda t: 3.0, 0, 100)
    assert f.rate(0, 5000) == 0.0
    assert f.rate(7, 100) == 0.0  # never seen


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        DemandForecast(bucket_s=0)


def prewarmer(rates: dict[int, float], **kwargs) -> Prewarmer:
    f = DemandForecast(bucket_s=10)
    for m, r in rates.items():
        feed(f, m, lambda t, r=r: r, 0, 100)
    return Prewarmer(f, service_s=4.0, **kwargs)


def test_a_wanted_model_is_loaded_on_a_free_place_before_anyone_waits():
    # model 0 (a:1) is wanted at 2/s: 2 s x 4 s / 1 slot needs copies; node 1 has room
    view = build_view([NodeSpec(loaded={"a:1": 1}), NodeSpec(models=("a:1",)),
                       NodeSpec(models=("b:1",))])
    p = prewarmer({0: 2.0})
    plan = p.plan(view, 100.0)
    assert plan == [Preload(1, 0)]  # node 2 does not have the model on disk
    assert p.loads == 1


def test_nothing_is_loaded_for_a_model_expecting_few_requests():
    view = build_view([NodeSpec(models=("a:1",))])
    assert prewarmer({0: 0.05}).plan(view, 100.0) == []  # 1.5 requests in 30 s


def test_an_idle_unwanted_copy_makes_room_but_a_busy_one_never():
    full = {"a:1": 1, "b:1": 1, "c:1": 1}
    # node 0: b and c busy, a idle and unwanted; node 1: everything busy
    view = build_view([NodeSpec(models=("x:1",), loaded=full, busy={"b:1": 1, "c:1": 1}),
                       NodeSpec(models=("x:1",), loaded=full,
                                busy={"a:1": 1, "b:1": 1, "c:1": 1})])
    x = view.ensure_model("x:1")
    plan = prewarmer({x: 2.0}).plan(view, 100.0)
    assert plan == [Preload(0, x)]


def test_a_model_too_big_for_the_node_is_not_loaded_there():
    view = build_view([NodeSpec(models=("a:1",), mem_total=8 * GB),
                       NodeSpec(models=("a:1",), mem_total=80 * GB)], sizes={"a:1": 20 * GB})
    assert [p.node for p in prewarmer({0: 2.0}).plan(view, 100.0)] == [1]


def test_loads_per_round_are_capped_and_one_per_node():
    view = build_view([NodeSpec(models=("a:1", "b:1")) for _ in range(3)])
    plan = prewarmer({0: 3.0, 1: 3.0}, max_per_tick=2).plan(view, 100.0)
    assert len(plan) == 2 and len({p.node for p in plan}) == 2


def test_router_counts_a_preload_as_under_way_then_resident_and_used_when_sent_to():
    view = build_view([NodeSpec(models=("a:1",)), NodeSpec(models=("a:1",))])
    p = prewarmer({0: 2.0}, max_per_tick=1)
    router = Router(Scheduler("intelligent"), view, None, p)
    [preload] = router.prewarm(100.0)
    m, node = preload.model, preload.node
    assert view.busy[m][node] == 1 and not view.loaded[m][node]
    router.preloaded(preload, 103.0, ok=True)
    assert view.loaded[m][node] and view.busy[m][node] == 0
    d = router.arrive(RouteRequest("a:1", prompt_tokens=10), 104.0)
    assert d.decision.node == node and d.decision.reason == "loaded"
    assert (p.used, p.wasted, p.pending) == (1, 0, {})


def test_a_copy_gone_unused_is_wasted():
    view = build_view([NodeSpec(models=("a:1",))])
    p = prewarmer({0: 2.0})
    router = Router(Scheduler("intelligent"), view, None, p)
    [preload] = router.prewarm(100.0)
    router.preloaded(preload, 101.0, ok=True)
    view.update(0, models=[("a:1", 0)], loaded=[])  # expired before anyone came
    p.settle(view)
    assert (p.used, p.wasted) == (0, 1)
    [again] = router.prewarm(102.0)
    router.preloaded(again, 103.0, ok=False)  # a failed load is wasted too
    p.settle(view)
    assert p.wasted == 2


def test_the_service_time_comes_from_recent_requests_once_known():
    view = build_view([NodeSpec(loaded={"a:1": 4})] + [NodeSpec(models=("a:1",))] * 3)
    view.num_parallel[:] = 4
    p = prewarmer({0: 1.0}, max_per_tick=8)  # 1/s x 4 s / 4 slots x 1.25: 2 copies
    assert len(p.plan(view, 100.0)) == 1
    for k in range(50):
        view.history.append(time=90.0 + k * 0.1, node=0, model=0, duration=12.0)
    p = prewarmer({0: 1.0}, max_per_tick=8)  # 12 s requests: 4 copies
    assert len(p.plan(view, 100.0)) == 3


def test_an_unhealthy_node_is_not_counted_as_a_copy_nor_loaded():
    view = build_view([NodeSpec(loaded={"a:1": 1}, healthy=False), NodeSpec(models=("a:1",))])
    plan = prewarmer({0: 0.5}).plan(view, 100.0)
    assert plan == [Preload(1, 0)]
