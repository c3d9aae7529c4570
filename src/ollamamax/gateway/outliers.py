"""Passive outlier detection from real traffic: one circuit breaker per node (pure).

Active health checks (`gateway.health`) ask each node whether it is up; this module watches
what real requests see. Each node has a breaker:

    closed ── `consecutive` failures in a row ──▶ open: ejected from routing for
      ▲                                          base x times ejected (at most max_s)
      │ the probe succeeds                        │ the time is served (`tick`)
      │                                           ▼
      └──────────────────────────────────── half-open: routable; the next request
                                              sent there is the probe (no other goes while
                                              it runs); if it fails, open again, longer

A failure is what the node did wrong: a refused or dropped connection, no first byte within
the TTFT timeout, a 5xx other than 503, a stream that broke after its first byte. A 503 is
the node saying it is full or draining (overload, not a fault): the request goes elsewhere
and the node is not blamed; the gateway's own 429/503 from admission control never reaches
this module at all. A success is an answer read to its end.

Two guards from Envoy keep outlier detection from emptying the cluster (NOTES.md): at most
`max_share` of the nodes may be out at once (always at least one may be), and when fewer than
`panic_threshold` of the present, non-draining nodes would be left routable, ejections are
lifted (panic: an erring node is still better than none, and its failures are retried
before the first byte anyway). A node the active checks found down stays down in panic.

The number of times a node was ejected decays by one for every `max_s` it spends closed, so
a node that erred once long ago starts again from the base time.

No clock, no I/O: the caller passes `now` and logs the sentences each method returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ollamamax.scheduler.view import ClusterView

CLOSED, OPEN, HALF_OPEN, PROBING = range(4)
STATE_NAMES = ("closed", "open", "half-open", "probing")


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    consecutive: int = 5  # failures in a row that open a node's breaker (Envoy: 5)
    base_s: float = 30.0  # first ejection; the n-th lasts n times as long (Envoy: 30 s)
    max_s: float = 300.0  # longest ejection (Envoy: 300 s)
    max_share: float = 0.1  # of present nodes ejected at once; one may always be (Envoy: 10%)
    panic_threshold: float = 0.5  # below this share routable, ejections are lifted (Envoy: 50%)
    probe_timeout_s: float = 60.0  # a probe with no outcome by then frees the half-open slot

    def __post_init__(self) -> None:
        if self.consecutive < 1:
            raise ValueError("consecutive failures must be >= 1")
        if not 0 < self.base_s <= self.max_s:
            raise ValueError("need 0 < base ejection <= max ejection")
        if not 0 <= self.max_share <= 1 or not 0 <= self.panic_threshold <= 1:
            raise ValueError("max_share and panic_threshold are shares between 0 and 1")


class OutlierDetector:
    """Breakers for the nodes of `view`; effective ejections are written to `view.ejected`."""

    def __init__(self, view: ClusterView, settings: OutlierSettings | None = None) -> None:
        self.view = view
        self.settings = settings or OutlierSettings()
        self.state: list[int] = []
        self.failures: list[int] = []  # consecutive, while closed
        self.times: list[int] = []  # ejections so far (decaying)
        self.until: list[float] = []  # end of the current ejection
        self.since: list[float] = []  # when the state began
        self.suspects: set[int] = set()  # nodes whose breaker is not closed
        self.panic = False
        self.ejections = 0  # breakers opened, ever

    # -- outcomes (the request path) -------------------------------------------------------

    def sending(self, i: int, now: float) -> None:
        """A request is about to go to node `i`: in half-open it is the probe."""
        if i < len(self.state) and self.state[i] == HALF_OPEN:
            self._enter(i, PROBING, now)
            self._apply()

    def success(self, i: int, now: float) -> str:
        """An answer from `i` was read to its end."""
        state = self.state
        if i >= len(state):
            return ""
        if state[i] == CLOSED:
            if self.failures[i]:
                self.failures[i] = 0
            return ""
        if state[i] == OPEN:  # sent before the ejection: the node still serves its time
            return ""
        self._enter(i, CLOSED, now)
        return self._apply(f"{self._id(i)} is back in routing: its probe succeeded")

    def failure(self, i: int, now: float, reason: str) -> str:
        """A request to `i` failed through the node's fault (never for overload)."""
        self._ensure(i)
        state = self.state[i]
        if state == OPEN:
            return ""
        if state != CLOSED:
            return self._open(i, now, f"its probe failed: {reason}")
        self.failures[i] += 1
        count = self.failures[i]
        if count < self.settings.consecutive:
            return ""
        if self.out_count() >= self.cap():
            # said once per streak: the log would otherwise repeat it on every failure
            return "" if count > self.settings.consecutive else (
                f"{self._id(i)} failed {count} times in a row but stays in routing: "
                f"{self.out_count()} of {self._present()} nodes are out already "
                f"(at most {self.settings.max_share:.0%}, at least one)")
        return self._open(i, now, f"{count} consecutive failures, the last: {reason}")

    def released(self, i: int, now: float) -> None:
        """A request to `i` ended without an outcome (its client left): a probe may go again."""
        if i < len(self.state) and self.state[i] == PROBING:
            self._enter(i, HALF_OPEN, now)
            self._apply()

    # -- time and health (the health loop) ------------------------------------------------

    def tick(self, now: float) -> list[str]:
        """Ejections whose time is served become half-open; stuck probes are freed."""
        sentences = []
        changed = False
        for i in sorted(self.suspects):
            state = self.state[i]
            if state == OPEN and now >= self.until[i]:
                self._enter(i, HALF_OPEN, now)
                sentences.append(f"{self._id(i)} served its ejection: the next request there "
                                 "is a probe")
                changed = True
            elif state == PROBING and now - self.since[i] >= self.settings.probe_timeout_s:
                self._enter(i, HALF_OPEN, now)
                changed = True
        sentence = self._apply() if changed else ""
        return [*sentences, sentence] if sentence else sentences

    def rebalance(self) -> str:
        """Health or membership changed: re-check panic. A sentence if panic began or ended."""
        return self._apply()

    # -- queries ---------------------------------------------------------------------------

    def state_name(self, i: int) -> str:
        return STATE_NAMES[self.state[i]] if i < len(self.state) else "closed"

    def out_count(self) -> int:
        """Nodes whose breaker is not closed (half-open ones are still under suspicion)."""
        return sum(1 for i in self.suspects if self.view.present[i])

    def cap(self) -> int:
        """How many nodes may be out at once."""
        return max(1, math.floor(self.settings.max_share * self._present() + 1e-9))

    # -- internals -------------------------------------------------------------------------

    def _open(self, i: int, now: float, why: str) -> str:
        s = self.settings
        closed_for = now - self.since[i] if self.state[i] == CLOSED else 0.0
        times = max(0, self.times[i] - int(closed_for // s.max_s)) + 1
        duration = min(s.base_s * times, s.max_s)
        self.times[i] = times
        self.until[i] = now + duration
        self._enter(i, OPEN, now)
        self.ejections += 1
        return self._apply(f"ejected {self._id(i)} for {duration:g} s (ejection {times}) "
                           f"after {why}")

    def _enter(self, i: int, state: int, now: float) -> None:
        if self.state[i] == CLOSED and state != CLOSED:
            self.failures[i] = 0
        self.state[i] = state
        self.since[i] = now
        if state == CLOSED:
            self.suspects.discard(i)
        else:
            self.suspects.add(i)

    def _apply(self, sentence: str = "") -> str:
        """Write effective ejections to the view: open and probing nodes, unless in panic."""
        view = self.view
        self._ensure(view.n - 1)
        out = [s in (OPEN, PROBING) for s in self.state]
        usable = [bool(view.present[i] and not view.draining[i]) for i in range(view.n)]
        healthy = sum(1 for i in range(view.n)
                      if usable[i] and view.healthy[i] and not out[i])
        total = sum(usable)
        panic = total > 0 and any(out) and healthy < self.settings.panic_threshold * total
        for i in range(view.n):
            view.set_ejected(i, out[i] and not panic)
        if panic != self.panic:
            self.panic = panic
            change = (f"panic: only {healthy} of {total} nodes would be routable (below "
                      f"{self.settings.panic_threshold:.0%}); ejections lifted" if panic
                      else "panic over: ejections apply again")
            sentence = f"{sentence}; {change}" if sentence else change
        return sentence

    def _ensure(self, i: int) -> None:
        while len(self.state) <= i:
            self.state.append(CLOSED)
            self.failures.append(0)
            self.times.append(0)
            self.until.append(0.0)
            self.since.append(0.0)

    def _present(self) -> int:
        view = self.view
        return sum(1 for i in range(view.n) if view.present[i])

    def _id(self, i: int) -> str:
        return self.view.ids[i]
