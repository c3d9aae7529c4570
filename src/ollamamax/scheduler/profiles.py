"""What each node has shown it can do with each model: recency-weighted speeds and errors.

One profile per (node, model), kept in an LRU of bounded size (O(1) get and update). Times
are exponentially weighted moving averages (recent requests count most); the last few
latencies are kept too, for strategies that average a window (LiteLLM's latency routing).

The node's fixed overhead (what its TTFT holds beyond the wait before it was sent, its load
and its prefill: the network, a slow link, a proxy) is a floor instead: it drops at once to
a lower observation and rises by `RISE` of the gap only when two observations in a row are
above it, so one queueing or retry outlier moves nothing while a node that stays slow is
priced at its real overhead within ten or so requests (docs/resilience.md).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

ALPHA = 0.2  # weight of the newest observation in the moving averages
WINDOW = 10  # latencies kept per profile (LiteLLM averages its last 10)
MIN_PREFILL_TOKENS = 32  # fewer evaluated tokens measure the fixed overhead, not the speed
RISE = 0.25  # share of the gap the overhead floor rises by per request: 150 ms in ~10 requests


@dataclass(slots=True)
class Profile:
    requests: int = 0
    errors: int = 0
    ttft: float = 0.0  # seconds, EWMA over successful requests
    prefill_tps: float = 0.0  # prompt tokens per second of prefill, EWMA
    decode_tps: float = 0.0  # output tokens per second of decoding, EWMA
    error_rate: float = 0.0  # EWMA of failures (1) and successes (0)
    duration: float = 0.0  # seconds a request holds a slot, EWMA over successful requests
    overhead: float = 0.0  # seconds of the node's fixed overhead: a floor (`overhead_floor`)
    last_overhead: float = 0.0  # the latest overhead observed
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))

    def mean_latency(self) -> float | None:
        return sum(self.latencies) / len(self.latencies) if self.latencies else None


def _ewma(old: float, new: float, first: bool) -> float:
    return new if first else old + ALPHA * (new - old)


def overhead_floor(floor: float, previous: float, new: float) -> float:
    """The overhead floor after observing `new` (`previous`: the observation before it): down
    to `new` at once; up by `RISE` of the gap to the lower of the two, so a single outlier
    (the previous observation at the floor) moves nothing."""
    if new <= floor:
        return new
    return floor + RISE * max(0.0, min(new, previous) - floor)


class PerformanceProfiles:
    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._profiles: OrderedDict[tuple[int, int], Profile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._profiles)

    def get(self, node: int, model: int) -> Profile | None:
        """The profile, if any; a read does not change recency (decisions must not mutate)."""
        return self._profiles.get((node, model))

    def record(self, node: int, model: int, *, ok: bool, ttft: float = 0.0,
               prompt_tokens: int = 0, prefill_s: float = 0.0, output_tokens: int = 0,
               decode_s: float = 0.0, latency: float | None = None,
               duration: float = 0.0, overhead: float | None = None) -> Profile:
        """Fold one finished request into the (node, model) profile. `overhead`: the seconds
        of its TTFT the node's reported load and prefill do not explain, when it reported them."""
        key = (node, model)
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = Profile()
            if len(self._profiles) > self.capacity:
                self._profiles.popitem(last=False)
        else:
            self._profiles.move_to_end(key)
        first_ok = profile.requests - profile.errors == 0
        profile.requests += 1
        profile.error_rate = _ewma(profile.error_rate, 0.0 if ok else 1.0, profile.requests == 1)
        if not ok:
            profile.errors += 1
            return profile
        profile.ttft = _ewma(profile.ttft, ttft, first_ok)
        if duration > 0:
            profile.duration = _ewma(profile.duration, duration, profile.duration == 0)
        if prompt_tokens >= MIN_PREFILL_TOKENS and prefill_s > 0:
            profile.prefill_tps = _ewma(profile.prefill_tps, prompt_tokens / prefill_s,
                                        profile.prefill_tps == 0)
        if output_tokens > 1 and decode_s > 0:
            profile.decode_tps = _ewma(profile.decode_tps, (output_tokens - 1) / decode_s,
                                       profile.decode_tps == 0)
        if latency is not None:
            profile.latencies.append(latency)
        if overhead is not None:
            overhead = max(overhead, 0.0)
            profile.overhead = overhead_floor(profile.overhead, profile.last_overhead, overhead)
            profile.last_overhead = overhead
        return profile
