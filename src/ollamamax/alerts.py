"""Alert rules: thresholds on what the gateway measures, a `for` duration, notifications.

Each rule reads one signal (the sampler computes them once a tick: scheduling time p99,
TTFT p95, error rate over the window, this process's memory and CPU) and has two thresholds.
A level (warning, critical) fires once its threshold has been exceeded for the rule's whole
`for` duration, so a blip does not page; the rule shows the highest level firing and notifies
each change (firing at a new severity, resolved) to the log and to webhooks.

    Alerts(rules).evaluate(signals, now) -> [Notification]   pure: time is an argument
    WebhookNotifier(urls).notify(notes)                        JSON POSTs, retried with backoff
    run(alerts, sample, notifier, interval)                    the thin loop the gateway runs
    prometheus_rules(rules, window) -> YAML                    the same rules for Prometheus

Defaults are the optimisation catalogue's (scheduling time > 50 / 100 ms, memory > 300 /
500 MB, CPU > 75 / 90 %, error rate > 1 / 5 %) plus TTFT p95 > 10 / 30 s; the config file's
``[alerts.rules.NAME]`` tables change any of them (docs/configuration.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

LEVELS = ("warning", "critical")
NEVER = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended"


@dataclass(frozen=True)
class Rule:
    name: str
    signal: str  # the sampler's key for the value compared
    title: str
    unit: str
    warning: float
    critical: float
    for_s: float
    expr: str  # PromQL for the same value; "$window" stands for the window, e.g. 60s
    enabled: bool = True

    @property
    def alertname(self) -> str:
        return "OllamaMax" + "".join(part.title() for part in self.name.split("_"))

    def threshold(self, level: str) -> float:
        return self.warning if level == "warning" else self.critical


_SCHEDULE = "ollamamax_gateway_schedule_seconds_bucket"
_REQUESTS = "ollamamax_gateway_requests_total"
CATALOGUE: tuple[Rule, ...] = (
    Rule("scheduling_time", "scheduling_p99_ms", "scheduling decision time p99", "ms", 50, 100,
         30, f"1000 * histogram_quantile(0.99, sum by (le) (rate({_SCHEDULE}[$window])))"),
    Rule("memory", "memory_mb", "gateway memory (RSS)", "MB", 300, 500, 60,
         "ollamamax_gateway_process_resident_memory_bytes / 1048576"),
    Rule("cpu", "cpu_percent", "gateway CPU (% of one core)", "%", 75, 90, 60,
         "100 * rate(ollamamax_gateway_process_cpu_seconds_total[$window])"),
    Rule("error_rate", "error_rate_percent", "requests answered with a 5xx", "%", 1, 5, 30,
         f'100 * sum(rate({_REQUESTS}{{status=~"5.."}}[$window])) / sum(rate({_REQUESTS}[$window]))'),
    Rule("ttft", "ttft_p95_ms", "time to first token p95", "ms", 10_000, 30_000, 30,
         "1000 * histogram_quantile(0.95, sum by (le) "
         "(rate(ollamamax_gateway_ttft_seconds_bucket[$window])))"),
)
RULE_NAMES = tuple(rule.name for rule in CATALOGUE)


def rules_from(overrides: Mapping[str, Any]) -> tuple[Rule, ...]:
    """The catalogue with `overrides` (``{name: {warning, critical, for, enabled}}``, from
    the config's ``[alerts.rules.NAME]``; fields None or absent keep the default) applied.
    ValueError for an unknown rule or a warning above its critical."""
    unknown = sorted(set(overrides) - set(RULE_NAMES))
    if unknown:
        raise ValueError(f"unknown alert rule {', '.join(unknown)}; valid rules: "
                         f"{', '.join(RULE_NAMES)}")
    rules = []
    for default in CATALOGUE:
        given = overrides.get(default.name)
        changes = {} if given is None else {
            key: value for key, value in _fields(given).items() if value is not None}
        rule = dataclasses.replace(default, **changes)
        if rule.warning > rule.critical:
            raise ValueError(f"alert rule {rule.name}: warning {rule.warning:g} is above "
                             f"critical {rule.critical:g}")
        if rule.for_s < 0:
            raise ValueError(f"alert rule {rule.name}: for must be >= 0 seconds")
        rules.append(rule)
    return tuple(rules)


def _fields(given: Any) -> dict[str, Any]:
    get = given.get if isinstance(given, Mapping) else lambda k: getattr(given, k, None)
    return {"warning": get("warning"), "critical": get("critical"),
            "for_s": get("for_") if get("for") is None else get("for"),
            "enabled": get("enabled")}


# -- evaluation --------------------------------------------------------------------------


@dataclass
class AlertState:
    rule: Rule
    value: float | None = None
    firing: str = ""  # the highest level firing, "" when none
    held: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(LEVELS))
    fired_at: float | None = None
    resolved_at: float | None = None

    @property
    def state(self) -> str:
        if self.firing:
            return "firing"
        return "pending" if any(t is not None for t in self.held.values()) else "ok"

    @property
    def severity(self) -> str:
        """The level firing, else the level pending, else ""."""
        if self.firing:
            return self.firing
        return next((lv for lv in reversed(LEVELS) if self.held[lv] is not None), "")

    def describe(self, now: float) -> dict[str, Any]:
        r = self.rule
        since = self.fired_at if self.firing else self.held.get(self.severity or "warning")
        return {"rule": r.name, "alertname": r.alertname, "title": r.title, "unit": r.unit,
                "state": self.state, "severity": self.severity, "value": self.value,
                "warning": r.warning, "critical": r.critical, "for_s": r.for_s,
                "since": since, "for_seconds_so_far": None if since is None else now - since,
                "fired_at": self.fired_at, "resolved_at": self.resolved_at}


@dataclass(frozen=True)
class Notification:
    rule: Rule
    status: str  # firing | resolved
    severity: str
    value: float | None
    at: float
    started: float

    @property
    def summary(self) -> str:
        r = self.rule
        if self.status == "resolved":
            shown = "no data" if self.value is None else f"{self.value:.4g} {r.unit}"
            return f"{r.title} back under {r.warning:g} {r.unit} (now {shown})"
        return (f"{r.title} {self.value:.4g} {r.unit} above {r.threshold(self.severity):g} "
                f"{r.unit} for {r.for_s:g} s")

    def to_json(self) -> dict[str, Any]:
        r = self.rule
        return {"status": self.status,
                "labels": {"alertname": r.alertname, "rule": r.name, "severity": self.severity,
                           "service": "ollamamax-gateway"},
                "annotations": {"summary": self.summary, "title": r.title},
                "value": self.value, "threshold": r.threshold(self.severity), "unit": r.unit,
                "startsAt": _iso(self.started),
                "endsAt": _iso(self.at) if self.status == "resolved" else NEVER}


class Alerts:
    """Rule states; `evaluate` moves them with the signals' values at time `now` (seconds
    since the epoch: it also stamps notifications)."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.states = [AlertState(rule) for rule in rules if rule.enabled]
        self.evaluations = 0  # liveness: the loop still turns

    def evaluate(self, signals: Mapping[str, float | None], now: float) -> list[Notification]:
        self.evaluations += 1
        notes = []
        for st in self.states:
            note = self._step(st, signals.get(st.rule.signal), now)
            if note is not None:
                notes.append(note)
        return notes

    @staticmethod
    def _step(st: AlertState, value: float | None, now: float) -> Notification | None:
        rule = st.rule
        st.value = value
        firing = ""
        for level in LEVELS:
            if value is None or not value > rule.threshold(level):
                st.held[level] = None
                continue
            since = st.held[level]
            if since is None:
                since = st.held[level] = now
            if now - since >= rule.for_s:
                firing = level
        if firing == st.firing:
            return None
        was, st.firing = st.firing, firing
        if firing:
            if not was:
                st.fired_at, st.resolved_at = now, None
            return Notification(rule, "firing", firing, value, now, st.fired_at or now)
        st.resolved_at = now
        return Notification(rule, "resolved", was, value, now, st.fired_at or now)

    def describe(self, now: float) -> list[dict[str, Any]]:
        return [st.describe(now) for st in self.states]

    def firing(self) -> list[AlertState]:
        return [st for st in self.states if st.firing]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- notifications -----------------------------------------------------------------------


def payload(notes: list[Notification], source: str = "") -> dict[str, Any]:
    """One webhook body for the changes of one evaluation, shaped like Alertmanager's webhook
    (version 4), so receivers written for Alertmanager read it."""
    firing = any(n.status == "firing" for n in notes)
    return {"version": "4", "receiver": "ollamamax", "status": "firing" if firing else "resolved",
            "source": source or "ollamamax-gateway", "commonLabels": {"service": "ollamamax-gateway"},
            "alerts": [n.to_json() for n in notes]}


Post = Callable[[str, bytes, float], Awaitable[int]]


class WebhookNotifier:
    """Logs every change; POSTs it as JSON to each webhook in the background, retried with
    exponential backoff (`backoff` s, then twice as long, ...) `retries` times."""

    def __init__(self, urls: Iterable[str] = (), *, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.5, source: str = "", post: Post | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 on_result: Callable[[bool], None] | None = None) -> None:
        self.urls = tuple(urls)
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.source = source
        self._post = post or self._aiohttp_post
        self._sleep = sleep
        self._on_result = on_result
        self._session: Any = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def notify(self, notes: list[Notification]) -> None:
        if not notes:
            return
        for note in notes:
            if note.status == "firing":
                log.warning("alert %s firing (%s): %s", note.rule.name, note.severity, note.summary)
            else:
                log.info("alert %s resolved: %s", note.rule.name, note.summary)
        if not self.urls:
            return
        body = json.dumps(payload(notes, self.source)).encode()
        for url in self.urls:
            task = asyncio.get_running_loop().create_task(self.deliver(url, body),
                                                          name=f"alert-webhook {url}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def deliver(self, url: str, body: bytes) -> bool:
        """POST `body` until a 2xx answer or the retries run out; True when delivered."""
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await self._sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status = await self._post(url, body, self.timeout)
            except (OSError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # noqa: BLE001 - aiohttp's ClientError and kin
                reason = str(exc) or type(exc).__name__
            else:
                if 200 <= status < 300:
                    self._result(True)
                    return True
                reason = f"HTTP {status}"
        log.warning("alert webhook %s not delivered after %d attempts: %s", url,
                    self.retries + 1, reason)
        self._result(False)
        return False

    def _result(self, ok: bool) -> None:
        if self._on_result is not None:
            self._on_result(ok)

    async def _aiohttp_post(self, url: str, body: bytes, timeout: float) -> int:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        async with self._session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=timeout),
                                      headers={"Content-Type": "application/json"}) as reply:
            await reply.read()
            return reply.status

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None


async def run(alerts: Alerts, sample: Callable[[], Mapping[str, float | None]],
              notifier: WebhookNotifier, interval: float,
              after: Callable[[], None] | None = None,
              clock: Callable[[], float] = time.time,
              sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Every `interval` seconds: sample the signals, evaluate the rules, notify the changes,
    then call `after` (the dashboard's streams send their next snapshot)."""
    while True:
        started = time.monotonic()
        try:
            notifier.notify(alerts.evaluate(sample(), clock()))
            if after is not None:
                after()
        except Exception:
            log.exception("unexpected error in the alert loop")
        await sleep(max(0.0, interval - (time.monotonic() - started)))


# -- Prometheus --------------------------------------------------------------------------


def prometheus_rules(rules: Iterable[Rule], window: float) -> str:
    """A Prometheus rules file (YAML) with the same rules: per rule, one alert per level with
    the level's threshold and the rule's `for`; both carry the alert name, so an Alertmanager
    inhibit rule can hide the warning while the critical fires."""
    span = _duration(window)
    lines = [
        "# Prometheus alerting rules equivalent to OllamaMax's in-process alert rules",
        "# (generated by `ollamamax alerts export`; see docs/metrics.md).",
        "# Each rule fires at two severities. To show only the higher one, add to Alertmanager:",
        "#   inhibit_rules:",
        "#     - source_matchers: [severity = critical]",
        "#       target_matchers: [severity = warning]",
        "#       equal: [alertname, instance]",
        "groups:",
        "  - name: ollamamax",
        "    rules:",
    ]
    for rule in rules:
        if not rule.enabled:
            continue
        expr = rule.expr.replace("$window", span)
        for level in LEVELS:
            threshold = rule.threshold(level)
            lines += [
                f"      - alert: {rule.alertname}",
                f"        expr: {json.dumps(f'({expr}) > {threshold:g}')}",
                f"        for: {_duration(rule.for_s)}",
                "        labels:",
                f"          severity: {level}",
                f"          rule: {rule.name}",
                "        annotations:",
                f"          summary: {json.dumps(f'{rule.title} above {threshold:g} {rule.unit}')}",
                "          description: " + json.dumps(
                    f"{rule.title} is {{{{ $value | printf \"%.4g\" }}}} {rule.unit}, above "
                    f"{threshold:g} {rule.unit} for {_duration(rule.for_s)}"),
            ]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    """A Prometheus duration: "30s", "500ms"."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"
