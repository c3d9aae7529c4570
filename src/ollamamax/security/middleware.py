"""The gateway's API-key check: who is asking, may they, and are they over their limits.

Installed only when `security.keys_file` is set; with no key in that file the gateway is open
(one attribute check per request). Once a key exists:

    /  /health                               open (load balancers, liveness probes)
    /admin/* /dashboard* /metrics            an admin key (/metrics: open with
                                             `security.open_metrics`)
    /api/pull push create delete copy        an admin key: they change what the nodes hold
    everything else (/api/*, /v1/*)          any key, user or admin

A key comes as ``Authorization: Bearer <key>`` (what the `ollama` client sends with
``headers=`` and the `openai` client with ``api_key=``). A browser opens the dashboard once
as ``/dashboard?key=<key>``: the key goes into an HttpOnly, SameSite=Strict cookie and the
browser is sent to ``/dashboard``, so the key leaves the address bar; the cookie is accepted
for GET and HEAD only, so it can never change anything. No key or an unknown one: 401 with
``WWW-Authenticate: Bearer``; a user key on an admin endpoint: 403. Every request of a key
with a rate limit is counted; tokens are charged after the answer (`metered`). The key's name
becomes the request's identity in the admission queue (per-key fairness, 429 per key).
Keys never reach logs, error messages or nodes. Refusals are counted by key name and reason
(`GatewayMetrics.auth_refused` for 401/403, `rate_limited` for 429, docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ollamamax.config import SecurityConfig
from ollamamax.errors import Forbidden, Unauthorized
from ollamamax.scheduler.queue import QueueFull
from ollamamax.security import keys as keyfile
from ollamamax.security.keys import KeyRecord, KeySet
from ollamamax.security.limits import Limits, RateLimited, tokens_used

if TYPE_CHECKING:
    from ollamamax.metrics import GatewayMetrics

log = logging.getLogger(__name__)

COOKIE = "ollamamax_key"
# the key's record on the request, for handlers (a typed key where aiohttp has them)
KEY: Any = web.RequestKey("ollamamax.api_key", KeyRecord) if hasattr(web, "RequestKey") \
    else "ollamamax.api_key"
GUARD: Any = web.AppKey("ollamamax.guard", object) if hasattr(web, "AppKey") \
    else "ollamamax.guard"
OPEN_PATHS = frozenset({"/", "/health"})
ADMIN_PREFIXES = ("/admin/", "/dashboard")
MODEL_MANAGEMENT = frozenset(f"/api/{name}" for name in ("pull", "push", "create", "delete", "copy"))
_SAFE = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def needs(path: str, open_metrics: bool = False) -> str:
    """What `path` asks for: "open", "admin" or "user"."""
    if path in OPEN_PATHS:
        return "open"
    if path.startswith(ADMIN_PREFIXES) or path == "/admin" or path in MODEL_MANAGEMENT:
        return "admin"
    if path == "/metrics":
        return "open" if open_metrics else "admin"
    return "user"


class KeyRefused(Unauthorized):
    """401, with why for the metrics: "missing" (no key came) or "invalid" (unknown key)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def bearer(header: str) -> str:
    """The credentials of an ``Authorization: Bearer ...`` header ("" if another scheme)."""
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


class Guard:
    """The keys in force, their limits, and the middleware that applies them."""

    def __init__(self, config: SecurityConfig, clock: Callable[[], float] = time.monotonic,
                 metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics  # counts refusals by key and reason, when given
        self.path = config.keys_file
        self.clock = clock
        self.limits = Limits()
        self.keys = KeySet([])
        self._stamp: tuple[float, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reload(force=True)

    @property
    def active(self) -> bool:
        """Keys exist: requests must carry one."""
        return bool(self.keys.records)

    # -- the keys file -----------------------------------------------------------------

    def reload(self, force: bool = False) -> str:
        """Read the keys file again if it changed (or `force`); a sentence when it was read."""
        try:
            st = os.stat(os.path.expanduser(self.path))
            stamp: tuple[float, int, int] | None = (st.st_mtime, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return ""
        self._stamp = stamp
        before = len(self.keys)
        self.keys = KeySet(keyfile.read(self.path))
        self.limits.forget({r.name for r in self.keys.records})
        if stamp is not None and st.st_mode & 0o077:
            log.warning("keys file %s is readable by others (mode %o): chmod 600 it",
                        self.path, st.st_mode & 0o777)
        if not self.keys.records:
            return "no API keys: the gateway is open to anyone who can reach it"
        return f"{len(self.keys)} API keys in force (were {before})"

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.keys_reload_interval)
            try:
                sentence = self.reload()
            except Exception as exc:  # noqa: BLE001 - a bad edit keeps the keys in force
                log.warning("keys file %s not reloaded, the keys in force stay: %s",
                            self.path, exc)
                continue
            if sentence:
                log.info("%s", sentence)

    async def start(self, app: web.Application) -> None:
        log.info("%s", self.reload(force=True))
        self._task = asyncio.create_task(self.watch(), name="keys-file")

    async def stop(self, app: web.Application) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def install(self, app: web.Application) -> None:
        """The middleware (innermost, so its 401/403/429 get the error shapes), the reload
        loop, and the guard itself for `require_admin`."""
        app.middlewares.append(self.middleware)
        app[GUARD] = self
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)

    # -- requests --------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.keys.records:
            return await handler(request)
        needed = needs(request.path, self.config.open_metrics)
        if needed == "open":
            return await handler(request)
        record = self.admit(request, needed)
        request[KEY] = record
        if request.path.startswith("/dashboard") and "key" in request.query \
                and self.keys.find(request.query["key"]) is record:
            raise self._remember(request)
        try:
            return await handler(request)
        except QueueFull as exc:  # 429: the key has too many requests waiting
            if exc.status == 429 and self.metrics is not None:
                self.metrics.rate_limited.inc((record.name, "queue"))
            raise

    def admit(self, request: web.Request, needed: str) -> KeyRecord:
        """The key's record if it may make this request now; else 401, 403 or 429, counted."""
        metrics = self.metrics
        try:
            record = self.identify(request)
        except KeyRefused as exc:
            if metrics is not None:
                metrics.auth_refused.inc(("", exc.reason))
            raise
        if needed == "admin" and not record.admin:
            if metrics is not None:
                metrics.auth_refused.inc((record.name, "not_admin"))
            raise Forbidden(f"{request.path} needs an admin key; key {record.name!r} is a "
                            f"{record.role} key")
        try:
            self.limits.admit(record, self.clock())
        except RateLimited as exc:
            if metrics is not None:
                metrics.rate_limited.inc((record.name, exc.reason))
            raise
        return record

    def identify(self, request: web.Request) -> KeyRecord:
        """The key's record, or 401."""
        given = bearer(request.headers.get("Authorization", ""))
        if not given and request.method in _SAFE:  # the query first: it is what `_remember`s
            if request.path.startswith("/dashboard"):
                given = request.query.get("key", "")
            given = given or request.cookies.get(COOKIE, "")
        if not given:
            raise KeyRefused("an API key is required: send 'Authorization: Bearer <key>'",
                             "missing")
        record = self.keys.find(given)
        if record is None:
            raise KeyRefused("invalid API key", "invalid")
        return record

    def _remember(self, request: web.Request) -> web.HTTPFound:
        """``/dashboard?key=...``: keep the key in a cookie, drop it from the address."""
        response = web.HTTPFound(request.path)
        response.set_cookie(COOKIE, request.query["key"], httponly=True, samesite="Strict",
                            secure=request.secure, path="/")
        response.headers["Cache-Control"] = "no-store"
        return response

    def check_admin(self, request: web.Request) -> None:
        """For handlers: 401/403 unless the request carries an admin key (when keys exist)."""
        if not self.keys.records:
            return
        record = request.get(KEY) or self.identify(request)
        if not record.admin:
            raise Forbidden(f"{request.path} needs an admin key")

    # -- answers -------------------------------------------------------------------------

    async def metered(self, request: web.Request, run: Callable[[Any], Awaitable[Any]],
                      adapter: Any) -> Any:
        """Run the forward with `adapter` watched, then charge the key the answer's tokens."""
        record = request.get(KEY)
        if record is None or not (record.tokens_per_min or record.tokens_per_day):
            return await run(adapter)
        meter = Metered(adapter)
        try:
            return await run(meter)
        finally:
            self.limits.charge(record, tokens_used(meter.tail), self.clock())


class Metered:
    """An adapter (`gateway.adapters`) that passes everything through and keeps the end of
    the node's answer, where Ollama puts the token counts."""

    __slots__ = ("_inner", "stream_content_type", "tail")
    KEEP = 8192

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.stream_content_type = inner.stream_content_type
        self.tail = b""

    def whole(self, status: int, body: bytes) -> web.Response:
        self.tail = body[-self.KEEP:] if status < 400 else b""
        return self._inner.whole(status, body)

    def feed(self, data: bytes) -> bytes:
        self.tail = (self.tail + data)[-self.KEEP:]
        return self._inner.feed(data)

    def end(self) -> bytes:
        return self._inner.end()

    def error(self, message: str) -> bytes:
        return self._inner.error(message)


def open_warning(listen: str, guard: Guard | None) -> str:
    """A warning when a gateway without keys listens beyond this machine ("" otherwise)."""
    from ollamamax.config import parse_listen

    host, _ = parse_listen(listen)
    if (guard is not None and guard.active) or host in ("127.0.0.1", "::1", "localhost"):
        return ""
    return (f"the gateway listens on {listen} with no API keys: anyone who can reach it may "
            "use it (set security.keys_file and add keys with `ollamamax keys add`)")
