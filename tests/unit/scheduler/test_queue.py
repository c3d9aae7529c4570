"""Admission control: priority classes, aging, deadlines, fair share per key, limits."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollamamax.scheduler import RouteRequest
from ollamamax.scheduler.queue import CLASS_OFFSET, AdmissionQueue, QueueFull


def req(key="", priority=1, deadline=None):
    return RouteRequest("m:1", key=key, priority=priority, deadline=deadline)


def drain(queue, model=0, now=100.0):
    out = []
    while (item := queue.pop(model, now)) is not None:
        out.append(item.request)
    return out


def test_interactive_before_default_before_batch():
    q = AdmissionQueue()
    batch, default, interactive = req(priority=2), req(priority=1), req(priority=0)
    for r in (batch, default, interactive):
        q.push(r, 0, now=0.0)
    assert drain(q) == [interactive, default, batch]


def test_aging_lets_an_old_batch_request_go_before_a_new_interactive_one():
    q = AdmissionQueue()
    old_batch = req(key="a", priority=2)
    q.push(old_batch, 0, now=0.0)
    new_interactive = req(key="b", priority=0)
    q.push(new_interactive, 0, now=CLASS_OFFSET[2] + 1)
    assert drain(q) == [old_batch, new_interactive]


def test_a_deadline_moves_a_request_forward():
    q = AdmissionQueue()
    first = req(key="a")
    q.push(first, 0, now=0.0)
    urgent = req(key="b", priority=2, deadline=0.5)
    q.push(urgent, 0, now=0.1)
    assert drain(q)[0] is urgent


def test_a_flooding_key_is_served_in_turn_with_the_others():
    q = AdmissionQueue(quantum=1.0)
    flood = [req(key="flood") for _ in range(10)]
    for r in flood:
        q.push(r, 0, now=0.0)
    polite = req(key="polite")
    q.push(polite, 0, now=0.5)
    order = drain(q)
    assert order.index(polite) <= 2  # not behind all ten


def test_global_limit_is_503_and_per_key_limit_is_429_with_retry_after():
    q = AdmissionQueue(max_waiting=3, max_per_key=2)
    q.push(req(key="a"), 0, 0.0)
    q.push(req(key="a"), 0, 0.0)
    with pytest.raises(QueueFull) as per_key:
        q.push(req(key="a"), 0, 0.0)
    assert per_key.value.status == 429 and int(per_key.value.headers["Retry-After"]) >= 1
    q.push(req(key="b"), 0, 0.0)
    with pytest.raises(QueueFull) as full:
        q.push(req(key="c"), 0, 0.0)
    assert full.value.status == 503 and "Retry-After" in full.value.headers


def test_cancelled_requests_are_skipped_and_uncounted():
    q = AdmissionQueue()
    a, b = req(key="a"), req(key="b")
    item = q.push(a, 0, 0.0)
    q.push(b, 0, 0.0)
    q.cancel(item)
    q.cancel(item)  # twice is harmless
    assert len(q) == 1 and drain(q) == [b] and len(q) == 0


def test_models_wait_apart():
    q = AdmissionQueue()
    q.push(req(), 1, 0.0)
    q.push(req(), 2, 0.0)
    assert sorted(q.models()) == [1, 2]
    assert q.pop(3, 0.0) is None
    assert q.pop(2, 0.0) is not None and q.models() == [1]


def test_retry_after_follows_the_dispatch_rate():
    q = AdmissionQueue()
    for t in range(20):
        q.push(req(key=str(t)), 0, float(t))
    for t in range(10):
        q.pop(0, 10.0 + t * 0.5)  # two a second
    assert q.retry_after() == pytest.approx(5, abs=1)


@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from("abc")), max_size=40))
def test_everything_pushed_comes_out_exactly_once(items):
    q = AdmissionQueue(max_waiting=1000, max_per_key=1000)
    pushed = [req(key=k, priority=p) for p, k in items]
    for t, r in enumerate(pushed):
        q.push(r, 0, float(t))
    out = drain(q)
    assert sorted(map(id, out)) == sorted(map(id, pushed)) and len(q) == 0


def test_requests_without_a_key_share_only_the_global_limit():
    q = AdmissionQueue(max_waiting=10, max_per_key=2)
    for _ in range(10):
        q.push(req(), 0, 0.0)  # anonymous: no per-key limit of 2
    with pytest.raises(QueueFull) as full:
        q.push(req(), 0, 0.0)
    assert full.value.status == 503


def test_targets_count_held_requests_per_node():
    q = AdmissionQueue()
    a = q.push(req(), 0, 0.0, target=3)
    q.push(req(), 0, 0.0, target=3)
    q.push(req(), 0, 0.0, target=5)
    assert q.targets(0) == {3: 2, 5: 1} and q.targets(1) == {}
    q.cancel(a)
    assert q.targets(0) == {3: 1, 5: 1}


def test_head_shows_the_first_requests_in_order_and_take_dispatches_any_of_them():
    q = AdmissionQueue()
    items = [q.push(req(priority=p), 0, float(k)) for k, p in enumerate((2, 1, 0, 1))]
    first = q.head(0, 3)
    assert first == [items[2], items[1], items[3]]
    assert q.head(0, 3) == first  # looking changes nothing
    q.take(items[1], 5.0)
    assert len(q) == 3 and q.waiting_for(0) == 3
    assert q.head(0, 8) == [items[2], items[3], items[0]]
    assert [q.pop(0, 6.0) for _ in range(3)] == [items[2], items[3], items[0]]
    assert q.pop(0, 7.0) is None
