"""A scheduler whose strategy (and weights, and constraint filter) feature flags choose per request.

`FlaggedScheduler` answers `decide(request, view, now)` like `Scheduler`, so the `Router` and
the gateway use it unchanged. For each request it picks an *arm*: one value of each
per-request flag (``scheduler.strategy``, ``scheduler.weights``, ``scheduler.constraints``),
by the stable hash of the request's key (its API key's id; an anonymous request gets a
sequence number, so anonymous traffic splits by share, request by request). With no flag
split, which is the usual case, there is a single arm, precomputed: a decision then costs one
attribute check and one counter increment more than `Scheduler.decide`.

Arms are rebuilt when a flag changes. Each strategy in use is bound to the view (the one
given at construction: the gateway has one) at once, so the first request after a switch pays
nothing; a strategy no flag selects any more is unbound (its view listeners removed), so
abandoned variants cost nothing either. A strategy selected again starts afresh.

Counts: every routed request counts once for each flag variant it was decided with (a request
the admission queue holds counts when it is dispatched). Component flags listed in `follows`
(the queue order, the history) count every routed request while their variant is in effect.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ollamamax import variants
from ollamamax.flags import Flag, Flags
from ollamamax.scheduler.decide import LabelMask, Scheduler
from ollamamax.scheduler.request import Decision, RouteRequest
from ollamamax.scheduler.view import ClusterView

PER_REQUEST = (variants.STRATEGY, variants.WEIGHTS, variants.CONSTRAINTS)
WEIGHTED = "intelligent"  # the strategy whose weights `scheduler.weights` chooses


class _Arm:
    __slots__ = ("label_mask", "scheduler", "served", "variants")

    def __init__(self, scheduler: Scheduler, label_mask: LabelMask,
                 chosen: tuple[tuple[str, str], ...]) -> None:
        self.scheduler = scheduler
        self.label_mask = label_mask
        self.variants = chosen  # ((flag, variant), ...) a request on this arm counts for
        self.served = 0


class FlaggedScheduler:
    def __init__(self, flags: Flags, view: ClusterView, *, seed: int = 0, holds: bool = True,
                 follows: Iterable[str] = ()) -> None:
        """`holds`: an admission queue holds requests the decision says must wait."""
        self.flags = flags
        self.view = view
        self.seed = seed
        self.holds = holds
        self._strategy, self._weights, self._constraints = (flags[n] for n in PER_REQUEST)
        self._schedulers: dict[tuple[str, str], Scheduler] = {}
        self._listeners: dict[tuple[str, str], list[Any]] = {}
        self._arms: dict[tuple[str, str, str], _Arm] = {}
        self._fixed: _Arm | None = None
        self._seq = 0
        self._totals: Counter[tuple[str, str]] = Counter()  # counts of arms since replaced
        self._follows = {name: (flags[name].current, 0) for name in follows}
        flags.subscribe(self._changed)
        self._rebuild()

    @property
    def name(self) -> str:
        flag = self._strategy
        s = flag.setting
        return flag.current if not flag.split else f"{s.base} ({s.variant} for {s.percent:g}%)"

    @property
    def strategy(self) -> Any:
        """The strategy most requests use."""
        return self._scheduler(self._strategy.current, self._weights.current).strategy

    def decide(self, request: RouteRequest, view: ClusterView, now: float) -> Decision:
        arm = self._fixed
        if arm is None:
            arm = self._pick(request)
        decision = arm.scheduler.decide(request, view, now)
        if not (decision.wait and self.holds):  # held: counted when dispatched
            arm.served += 1
        return decision

    def _pick(self, request: RouteRequest) -> _Arm:
        key = request.key
        if key:
            data = key.encode()
        else:
            self._seq += 1
            data = self._seq.to_bytes(8, "little")
        arm = self._arms[self._strategy.pick(data), self._weights.pick(data),
                         self._constraints.pick(data)]
        arm.scheduler.label_mask = arm.label_mask  # schedulers are shared across constraints
        return arm

    # -- counting --------------------------------------------------------------------------

    def served(self) -> dict[tuple[str, str], int]:
        """``{(flag, variant): requests routed}`` since start."""
        out = Counter(self._totals)
        for arm in self._arms.values():
            for chosen in arm.variants:
                out[chosen] += arm.served
        routed = self._routed()
        for name, (variant, since) in self._follows.items():
            out[name, variant] += routed - since
        return {chosen: n for chosen, n in out.items() if n}

    # -- flag changes ----------------------------------------------------------------------

    def _changed(self, flag: Flag) -> None:
        if flag.name in self._follows:
            routed = self._routed()
            variant, since = self._follows[flag.name]
            self._totals[flag.name, variant] += routed - since
            self._follows[flag.name] = (flag.current, routed)
        if flag.name in PER_REQUEST:
            self._rebuild()

    def _routed(self) -> int:
        return sum(arm.served for arm in self._arms.values()) + sum(
            n for (flag, _), n in self._totals.items() if flag == variants.STRATEGY)

    def _rebuild(self) -> None:
        for arm in self._arms.values():  # keep what the old arms counted
            for chosen in arm.variants:
                self._totals[chosen] += arm.served
        self._arms = {}
        for s in self._strategy.active:
            for w in self._weights.active:
                for c in self._constraints.active:
                    self._arms[s, w, c] = self._arm(s, w, c)
        self._fixed = next(iter(self._arms.values())) if len(self._arms) == 1 else None
        if self._fixed is not None:
            self._fixed.scheduler.label_mask = self._fixed.label_mask
        in_use = {(s, w if s == WEIGHTED else "cached") for s, w, _ in self._arms}
        for key in set(self._schedulers) - in_use:
            self._retire(key)

    def _arm(self, strategy: str, weights: str, constraints: str) -> _Arm:
        chosen = [(variants.STRATEGY, strategy), (variants.CONSTRAINTS, constraints)]
        if strategy == WEIGHTED:
            chosen.append((variants.WEIGHTS, weights))
        return _Arm(self._scheduler(strategy, weights),
                    variants.load(variants.CONSTRAINTS, constraints), tuple(chosen))

    def _scheduler(self, strategy: str, weights: str) -> Scheduler:
        key = (strategy, weights if strategy == WEIGHTED else "cached")
        scheduler = self._schedulers.get(key)
        if scheduler is None:
            if strategy == WEIGHTED:
                impl = variants.load(variants.WEIGHTS, key[1])(seed=self.seed)
                scheduler = Scheduler(impl, seed=self.seed)
            else:
                scheduler = Scheduler(strategy, seed=self.seed)
            before = len(self.view.listeners)
            scheduler.bind(self.view)
            self._listeners[key] = self.view.listeners[before:]
            self._schedulers[key] = scheduler
        return scheduler

    def _retire(self, key: tuple[str, str]) -> None:
        """Nothing selects this strategy now: stop keeping its arrays current."""
        del self._schedulers[key]
        gone = {id(listener) for listener in self._listeners.pop(key, ())}
        self.view.listeners[:] = [x for x in self.view.listeners if id(x) not in gone]
