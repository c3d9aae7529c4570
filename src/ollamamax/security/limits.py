"""Per-key rate limits and token quotas: token buckets, time passed in.

- requests/s: one token per request, burst `burst` (default max(1, rps)); an empty bucket
  refuses with the seconds until a token is back.
- tokens/min and tokens/day: how many tokens an answer used is known only after it, so the
  answer's counts (``prompt_eval_count + eval_count``) are charged afterwards, into debt if
  need be (`TokenBucket.spend`); a key whose bucket is below one token is refused until it
  has refilled that far. One long answer can thus overshoot a minute's budget once; the key
  then waits it out.

The buckets are keyed by the key's name and rebuilt when its limits change (a keys file
reload); they live in memory, so a restarted gateway starts every key with full buckets.
"""

from __future__ import annotations

import math

import msgspec

from ollamamax.errors import RequestError
from ollamamax.ratelimit import TokenBucket
from ollamamax.security.keys import KeyRecord


class RateLimited(RequestError):
    """429 with ``Retry-After`` (whole seconds, rounded up); `reason` names the limit
    (requests_per_s, tokens_per_min, tokens_per_day) for the metrics."""

    status = 429

    def __init__(self, message: str, retry_after: float, reason: str = "requests_per_s") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}


class _Buckets:
    __slots__ = ("day", "minute", "record", "requests")

    def __init__(self, record: KeyRecord, now: float) -> None:
        self.record = record
        self.requests = TokenBucket(record.rps, record.burst or max(1.0, record.rps), now) \
            if record.rps else None
        self.minute = TokenBucket(record.tokens_per_min / 60.0, record.tokens_per_min, now) \
            if record.tokens_per_min else None
        self.day = TokenBucket(record.tokens_per_day / 86400.0, record.tokens_per_day, now) \
            if record.tokens_per_day else None


class Limits:
    """Every key's buckets."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Buckets] = {}

    def _of(self, record: KeyRecord, now: float) -> _Buckets:
        found = self._buckets.get(record.name)
        if found is None or found.record != record:  # new key, or its limits changed
            found = self._buckets[record.name] = _Buckets(record, now)
        return found

    def admit(self, record: KeyRecord, now: float) -> None:
        """Count one request of `record`'s key, or raise `RateLimited`."""
        if not (record.rps or record.tokens_per_min or record.tokens_per_day):
            return
        buckets = self._of(record, now)
        for bucket, what, reason in ((buckets.minute, "tokens per minute", "tokens_per_min"),
                                     (buckets.day, "tokens per day", "tokens_per_day")):
            if bucket is not None and bucket.available(now) < 1:
                wait = (1 - bucket.available(now)) / bucket.rate
                raise RateLimited(f"key {record.name!r} has used its {what} "
                                  f"({bucket.burst:g}); try again in {math.ceil(wait)} s", wait,
                                  reason)
        if buckets.requests is not None:
            wait = buckets.requests.take(1, now)
            if wait:
                raise RateLimited(f"key {record.name!r} is over its rate of {record.rps:g} "
                                  "requests per second", wait)

    def charge(self, record: KeyRecord, tokens: int, now: float) -> None:
        """Spend the tokens an answer used (into debt if need be)."""
        if tokens <= 0 or not (record.tokens_per_min or record.tokens_per_day):
            return
        buckets = self._of(record, now)
        for bucket in (buckets.minute, buckets.day):
            if bucket is not None:
                bucket.spend(tokens, now)

    def forget(self, names: set[str]) -> None:
        """Drop the buckets of keys that no longer exist."""
        for name in set(self._buckets) - names:
            del self._buckets[name]


class _Counts(msgspec.Struct):
    prompt_eval_count: int = 0
    eval_count: int = 0


_counts = msgspec.json.Decoder(_Counts).decode


def tokens_used(answer: bytes) -> int:
    """Prompt plus generated tokens from a node's answer: the last line of a stream (Ollama's
    final chunk) or a whole JSON body (chat, generate, embed); 0 when it says nothing."""
    line = answer.rstrip().rpartition(b"\n")[2]
    if b"eval_count" not in line:
        return 0
    try:
        counts = _counts(line)
    except msgspec.DecodeError:
        return 0
    return max(0, counts.prompt_eval_count) + max(0, counts.eval_count)
