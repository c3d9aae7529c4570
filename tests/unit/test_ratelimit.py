import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollamamax.ratelimit import TokenBucket


def test_a_full_bucket_allows_its_burst_then_says_how_long_to_wait():
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, 0.0) == pytest.approx(0.5)
    assert bucket.take(1, 0.5) == 0.0  # refilled one token in 0.5 s


def test_more_than_the_burst_never_fits():
    assert TokenBucket(rate=1.0, burst=2.0, now=0.0).take(3, 100.0) == math.inf


def test_spending_into_debt_paces_the_sender():
    bucket = TokenBucket(rate=100.0, burst=100.0, now=0.0)
    assert bucket.spend(100, 0.0) == 0.0
    assert bucket.spend(50, 0.0) == pytest.approx(0.5)
    assert bucket.available(0.5) == pytest.approx(0.0)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="rate > 0"):
        TokenBucket(rate=0, burst=1, now=0)


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0.01, 5)), max_size=50))
def test_never_more_than_rate_times_time_plus_burst(steps):
    bucket, now, granted = TokenBucket(rate=3.0, burst=5.0, now=0.0), 0.0, 0.0
    for dt, n in steps:
        now += dt
        if bucket.take(n, now) == 0.0:
            granted += n
    assert granted <= 5.0 + 3.0 * now + 1e-9
