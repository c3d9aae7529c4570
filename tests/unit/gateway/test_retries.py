"""The retry budget (at most a share of recent requests, with a floor) and hedge timing."""

from __future__ import annotations

import pytest

from ollamamax.errors import (
    UpstreamConnectError,
    UpstreamRefused,
    UpstreamStatus,
    UpstreamTimeout,
)
from ollamamax.gateway.resilience import classify
from ollamamax.gateway.retries import AnswerTimes, RetryBudget


def test_a_lone_request_may_retry_within_the_minimum():
    budget = RetryBudget(ratio=0.2, minimum=3, window=10.0)
    budget.request(0.0)
    assert [budget.spend(0.1) for _ in range(4)] == [True, True, True, False]
    assert budget.exceeded == 1


def test_retries_are_at_most_the_share_of_recent_requests():
    budget = RetryBudget(ratio=0.2, minimum=0, window=10.0)
    for t in range(100):
        budget.request(t * 0.04)  # 100 requests in 4 s
    allowed = sum(budget.spend(4.0) for _ in range(50))
    assert allowed == 20
    assert budget.exceeded == 30


def test_the_window_moves_on():
    budget = RetryBudget(ratio=0.0, minimum=2, window=10.0)
    budget.request(0.0)
    assert budget.spend(0.0) and budget.spend(1.0) and not budget.spend(2.0)
    assert not budget.spend(9.0)  # the first half-window is still counted
    assert budget.spend(10.5)  # both halves of the old window have passed
    budget.request(100.0)  # long idle: everything old is forgotten
    assert budget.spend(100.0) and budget.spend(100.0) and not budget.spend(100.0)


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError):
        RetryBudget(ratio=-1)
    with pytest.raises(ValueError):
        RetryBudget(window=0)


def test_answer_times_p95_per_node_then_per_model():
    times = AnswerTimes(keep=64, min_samples=8)
    assert times.p95(0, 0) is None
    for i in range(20):
        times.record(0, 0, 0.1 + i * 0.01)  # 0.10 .. 0.29
    assert times.p95(0, 0) == pytest.approx(0.28)
    assert times.p95(1, 0) == pytest.approx(0.28)  # node 1 has no samples: the model's
    for _ in range(8):
        times.record(1, 0, 2.0)
    assert times.p95(1, 0) == 2.0
    assert times.p95(0, 1) is None


@pytest.mark.parametrize(("exc", "reason"), [
    (UpstreamRefused("n", "cannot connect"), "connect"),
    (UpstreamConnectError("n", "reset"), "connect"),
    (UpstreamTimeout("n", "no answer"), "timeout"),
    (UpstreamStatus("n", 500, b'{"error":"boom"}'), "status"),
    (UpstreamStatus("n", 503, b'{"error":"server busy, please try again"}'), "overloaded"),
    (UpstreamStatus("n", 503, b'{"error":"node n is draining: it takes no new requests"}'),
     "draining"),
])
def test_failures_are_classified(exc, reason):
    assert classify(exc) == reason
