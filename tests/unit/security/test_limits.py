import pytest

from ollamamax.security.keys import KeyRecord
from ollamamax.security.limits import Limits, RateLimited, tokens_used


def record(**limits) -> KeyRecord:
    return KeyRecord(name="alice", sha256="x", **limits)


def test_requests_per_second_refuse_with_retry_after_rounded_up():
    limits, key = Limits(), record(rps=2, burst=2)
    limits.admit(key, 0.0)
    limits.admit(key, 0.0)
    with pytest.raises(RateLimited) as caught:
        limits.admit(key, 0.1)
    assert caught.value.status == 429
    assert caught.value.headers == {"Retry-After": "1"}  # 0.4 s, rounded up
    assert "alice" in caught.value.message
    limits.admit(key, 0.6)  # a token refilled


def test_tokens_are_charged_after_the_answer_and_a_key_in_debt_waits():
    limits, key = Limits(), record(tokens_per_min=600)  # 10 tokens/s
    limits.admit(key, 0.0)
    limits.charge(key, 900, 0.0)  # one long answer: 300 tokens into debt
    with pytest.raises(RateLimited) as caught:
        limits.admit(key, 1.0)  # 290 in debt: (290 + 1) / 10 s to wait
    assert caught.value.headers["Retry-After"] == "30"
    assert "tokens per minute" in caught.value.message
    limits.admit(key, 31.0)


def test_a_daily_quota_is_a_slow_bucket():
    limits, key = Limits(), record(tokens_per_day=1000)
    limits.charge(key, 1000, 0.0)
    with pytest.raises(RateLimited, match="tokens per day"):
        limits.admit(key, 60.0)
    limits.admit(key, 87.0)  # 1000 per 86,400 s: one token back after 86.4 s


def test_unlimited_keys_are_never_refused_and_changed_limits_apply():
    limits = Limits()
    for t in range(1000):
        limits.admit(record(), t / 1e6)
        limits.charge(record(), 10**6, t / 1e6)
    limits.admit(record(rps=1), 0.0)
    with pytest.raises(RateLimited):
        limits.admit(record(rps=1), 0.0)
    limits.admit(record(rps=100, burst=100), 0.0)  # new limits: a new, full bucket


@pytest.mark.parametrize(("answer", "tokens"), [
    (b'{"message":{"content":"hi"},"done":true,"prompt_eval_count":12,"eval_count":30}', 42),
    (b'{"done":false}\n{"done":true,"prompt_eval_count":5,"eval_count":7}\n', 12),
    (b'{"embeddings":[[0.1]],"prompt_eval_count":9}', 9),
    (b'{"done":false}\n', 0),
    (b'not json "eval_count"', 0),
    (b'{"prompt_eval_count":-5,"eval_count":3}', 3),
    (b"", 0),
])
def test_tokens_used_reads_ollamas_counts(answer, tokens):
    assert tokens_used(answer) == tokens
