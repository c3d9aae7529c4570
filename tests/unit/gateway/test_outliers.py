"""Circuit breakers and ejection, in virtual time: consecutive failures eject for a time that
grows, a probe decides after it, at most a share of the nodes is out, panic lifts ejections."""

from __future__ import annotations

import pytest

from ollamamax.gateway.outliers import OutlierDetector, OutlierSettings
from ollamamax.scheduler import ClusterView, RouteRequest, Scheduler
from ollamamax.scheduler.view import LoadedModel

MODEL = "m:1b"


def cluster(n: int, **settings) -> tuple[ClusterView, OutlierDetector]:
    view = ClusterView()
    for i in range(n):
        node = view.add(f"n{i}", f"http://127.0.0.1:{9000 + i}")
        view.update(node, models=[(MODEL, 1)], loaded=[LoadedModel(MODEL, slots=4)])
        view.set_health(node, True, 0.0)
    return view, OutlierDetector(view, OutlierSettings(**settings))


def fail(d: OutlierDetector, i: int, times: int, now: float = 0.0) -> list[str]:
    return [s for s in (d.failure(i, now, "HTTP 500") for _ in range(times)) if s]


def test_five_consecutive_failures_eject_and_four_do_not():
    view, d = cluster(10)
    assert fail(d, 0, 4) == []
    assert view.routable[0]
    [sentence] = fail(d, 0, 1)
    assert sentence.startswith("ejected n0 for 30 s (ejection 1) after 5 consecutive failures")
    assert view.ejected[0] and not view.routable[0]
    assert d.state_name(0) == "open"


def test_a_success_ends_the_streak():
    view, d = cluster(10)
    fail(d, 0, 4)
    d.success(0, 1.0)
    fail(d, 0, 4)
    assert view.routable[0]


def test_decisions_never_pick_an_ejected_node():
    view, d = cluster(3)
    fail(d, 1, 5)
    scheduler = Scheduler("round_robin")
    picked = {scheduler.decide(RouteRequest(MODEL), view, 0.0).node for _ in range(12)}
    assert picked == {0, 2}


def test_ejection_ends_in_a_probe_that_closes_the_breaker_on_success():
    view, d = cluster(10)
    fail(d, 0, 5, now=0.0)
    assert d.tick(29.0) == []
    assert d.tick(30.0) == ["n0 served its ejection: the next request there is a probe"]
    assert view.routable[0] and d.state_name(0) == "half-open"
    d.sending(0, 30.1)  # the probe: no other request goes there while it runs
    assert not view.routable[0] and d.state_name(0) == "probing"
    assert d.success(0, 30.5) == "n0 is back in routing: its probe succeeded"
    assert view.routable[0] and d.state_name(0) == "closed"


def test_a_failed_probe_ejects_again_for_longer_up_to_the_cap():
    view, d = cluster(10, base_s=30.0, max_s=100.0)
    fail(d, 0, 5, now=0.0)
    durations = []
    now = 0.0
    for _ in range(4):
        now = d.until[0]
        d.tick(now)
        d.sending(0, now)
        sentence = d.failure(0, now, "timeout")
        durations.append(d.until[0] - now)
        assert "its probe failed: timeout" in sentence
    assert durations == [60.0, 90.0, 100.0, 100.0]
    assert not view.routable[0]


def test_a_probe_without_outcome_lets_another_probe_go():
    view, d = cluster(10, probe_timeout_s=20.0)
    fail(d, 0, 5)
    d.tick(30.0)
    d.sending(0, 30.0)
    d.released(0, 31.0)  # its client went away
    assert view.routable[0] and d.state_name(0) == "half-open"
    d.sending(0, 32.0)
    d.tick(51.0)  # the probe never ended
    assert d.state_name(0) == "probing"
    d.tick(52.0)
    assert view.routable[0] and d.state_name(0) == "half-open"


def test_a_success_started_before_the_ejection_does_not_end_it():
    view, d = cluster(10)
    fail(d, 0, 5)
    assert d.success(0, 1.0) == ""
    assert not view.routable[0]


def test_failures_while_ejected_do_not_lengthen_the_ejection():
    _view, d = cluster(10)
    fail(d, 0, 5)
    until = d.until[0]
    assert fail(d, 0, 10, now=5.0) == []
    assert d.until[0] == until


def test_the_ejection_count_is_forgiven_after_good_behaviour():
    _view, d = cluster(10, base_s=30.0, max_s=300.0)
    fail(d, 0, 5, now=0.0)
    d.tick(30.0)
    d.sending(0, 30.0)
    d.success(0, 31.0)
    fail(d, 0, 5, now=100.0)  # soon after: the second ejection is twice as long
    assert d.until[0] - 100.0 == 60.0
    d.tick(d.until[0])
    d.sending(0, 160.0)
    d.success(0, 160.0)
    fail(d, 0, 5, now=160.0 + 2 * 300.0)  # 600 s in routing: two ejections forgiven
    assert d.until[0] - 760.0 == 30.0


def test_at_most_the_configured_share_is_out_and_always_one_may_be():
    view, d = cluster(20, max_share=0.1)  # 2 of 20
    fail(d, 0, 5)
    fail(d, 1, 5)
    [refused] = fail(d, 2, 7)  # said once for the streak, not on every failure
    assert "n2 failed 5 times in a row but stays in routing: 2 of 20 nodes are out" in refused
    assert view.routable[2] and d.out_count() == 2
    _, small = cluster(3, max_share=0.1)  # 10% of 3 is 0.3: still one may be ejected
    assert small.cap() == 1


def test_the_node_over_the_cap_is_ejected_once_a_place_frees():
    view, d = cluster(10, max_share=0.1)
    fail(d, 0, 5)
    fail(d, 1, 6)
    assert view.routable[1]
    d.tick(30.0)
    d.sending(0, 30.0)
    d.success(0, 30.0)
    assert fail(d, 1, 1, now=31.0)[0].startswith("ejected n1")


def test_panic_lifts_ejections_when_too_few_nodes_are_left():
    view, d = cluster(4, max_share=0.5)
    fail(d, 0, 5)
    assert not view.routable[0] and not d.panic
    view.set_health(1, False, 1.0)  # found down by the health checks
    assert d.rebalance() == ""  # 2 of 4 routable: not below 50%
    view.set_health(2, False, 2.0)
    sentence = d.rebalance()  # 1 of 4 would be routable: panic
    assert sentence.startswith("panic: only 1 of 4 nodes would be routable")
    assert d.panic and view.routable[0]  # the ejected node routes again
    assert not view.routable[1] and not view.routable[2]  # found down: stays out
    view.set_health(2, True, 3.0)
    assert d.rebalance() == "panic over: ejections apply again"
    assert not view.routable[0]


def test_draining_nodes_do_not_count_towards_panic():
    view, d = cluster(4, max_share=0.5)
    fail(d, 0, 5)
    view.set_draining(1, True)
    view.set_draining(2, True)
    assert d.rebalance() == ""  # of the 2 that take work, 1 is routable: 50%, no panic
    assert not view.routable[0]


def test_nodes_that_join_later_get_a_breaker():
    view, d = cluster(1)
    i = view.add("late", "http://127.0.0.1:9999")
    view.update(i, models=[(MODEL, 1)])
    view.set_health(i, True, 0.0)
    assert d.success(i, 0.0) == ""
    assert d.state_name(i) == "closed"
    fail(d, i, 5)
    assert view.ejected[i]


@pytest.mark.parametrize("settings", [dict(consecutive=0), dict(base_s=400.0),
                                      dict(max_share=1.5), dict(panic_threshold=-0.1)])
def test_settings_are_checked(settings):
    with pytest.raises(ValueError):
        OutlierSettings(**settings)


@pytest.mark.parametrize(("env", "words"), [
    ({"OLLAMAMAX_RESILIENCE_BASE_EJECTION": "400"}, "base_ejection must not exceed"),
    ({"OLLAMAMAX_RESILIENCE_MAX_EJECTED_SHARE": "2"}, "max_ejected_share is a share"),
    ({"OLLAMAMAX_RESILIENCE_CONSECUTIVE_FAILURES": "0"}, "consecutive_failures must be > 0"),
    ({"OLLAMAMAX_GATEWAY_TOTAL_TIMEOUT": "-1"}, "total_timeout"),
])
def test_resilience_settings_are_checked_at_load(env, words):
    from ollamamax import config
    from ollamamax.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        config.load(env=env)


def test_hedging_can_be_switched_on_from_the_environment():
    from ollamamax import config

    assert config.load(env={"OLLAMAMAX_RESILIENCE_HEDGE": "true"}).resilience.hedge
    assert not config.load(env={}).resilience.hedge
