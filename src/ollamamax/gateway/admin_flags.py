"""The gateway's feature flags: built from config, applied to its parts, changed over HTTP.

    GET  /admin/flags                   every flag: setting, variants, history, requests served
    PUT  /admin/flags/{name}            {"variant": "round_robin", "percent": 10}  (percent
                                        optional, default 100) -> the flag as GET shows it
    POST /admin/flags/{name}/rollback   back to the setting before the last change

Bad input is a 4xx in Ollama's ``{"error": "..."}`` shape: an unknown flag 404, an unknown
variant, a percent outside 0..100 or a body that is not that JSON 400, nothing to roll back
409. With API keys (`security.middleware`), every one needs an admin key: `require_admin`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import msgspec
from aiohttp import web

from ollamamax import variants
from ollamamax.api.http import json_response, read_body
from ollamamax.config import Config
from ollamamax.errors import BadRequest
from ollamamax.flags import Flag, FlagFile, Flags
from ollamamax.metrics import GatewayMetrics
from ollamamax.scheduler.baselines import ListHistory, moved_history
from ollamamax.scheduler.flagged import FlaggedScheduler
from ollamamax.scheduler.router import Router
from ollamamax.scheduler.view import ClusterView

log = logging.getLogger(__name__)

MAX_BODY = 4096
Served = Callable[[], Mapping[tuple[str, str], int]]


def gateway_flags(config: Config) -> Flags:
    """Every flag, defaults from config, saved settings from `gateway.flags_file` if set."""
    path = config.gateway.flags_file
    return Flags(variants.definitions(config.scheduler.strategy),
                 FlagFile(path) if path else None)


def flagged_scheduler(flags: Flags, view: ClusterView, queue: bool) -> FlaggedScheduler:
    follows = (variants.HISTORY, *((variants.QUEUE_ORDER,) if queue else ()))
    return FlaggedScheduler(flags, view, holds=queue, follows=follows)


def follow(flags: Flags, router: Router, metrics: GatewayMetrics,
           scheduler: FlaggedScheduler) -> None:
    """Apply the component flags now and whenever they change; count requests per variant."""

    def apply(flag: Flag) -> None:
        if flag.name == variants.QUEUE_ORDER and router.queue is not None \
                and router.queue.order != flag.current:
            router.queue.set_order(flag.current)
        elif flag.name == variants.HISTORY:
            kind = "list" if isinstance(router.view.history, ListHistory) else "ring"
            if kind != flag.current:
                router.view.history = moved_history(router.view.history, flag.current)

    for name in (variants.QUEUE_ORDER, variants.HISTORY):
        apply(flags[name])
    flags.subscribe(apply)
    metrics.read_flag_counts(scheduler.served)


def add_routes(app: web.Application, flags: Flags, served: Served) -> None:
    admin = FlagsAdmin(flags, served)
    app.router.add_get("/admin/flags", admin.list)
    app.router.add_route("PUT", "/admin/flags/{name}", admin.set)
    app.router.add_route("POST", "/admin/flags/{name}/rollback", admin.rollback)


def require_admin(request: web.Request) -> None:
    """401/403 unless the request carries an admin key, when API keys exist (the middleware
    already checks by path; this holds even for a path it would not classify as admin)."""
    from ollamamax.security.middleware import GUARD

    guard = request.config_dict.get(GUARD)
    if guard is not None:
        guard.check_admin(request)


def _who(request: web.Request) -> str:
    """Who changed a flag, for the log: the key's name (never the key) and the address."""
    from ollamamax.security.middleware import KEY

    record = request.get(KEY)
    return f"key {record.name!r} from {request.remote}" if record is not None else \
        str(request.remote)


class _SetBody(msgspec.Struct, forbid_unknown_fields=True):
    variant: str
    percent: float = 100.0


_decode_set = msgspec.json.Decoder(_SetBody).decode


class FlagsAdmin:
    def __init__(self, flags: Flags, served: Served) -> None:
        self.flags = flags
        self.served = served

    async def list(self, request: web.Request) -> web.Response:
        require_admin(request)
        counts = self.served()
        return json_response({"flags": [self._shown(flag, counts) for flag in self.flags]})

    async def set(self, request: web.Request) -> web.Response:
        require_admin(request)
        name = request.match_info["name"]
        self.flags[name]  # an unknown flag is a 404 before the body is read
        body = await read_body(request, MAX_BODY)
        try:
            wanted = _decode_set(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # broken UTF-8: the latter
            raise BadRequest('expected a JSON object {"variant": "...", "percent": 0-100}: '
                             f"{exc}") from None
        self.flags.set(name, wanted.variant, wanted.percent)
        log.info("flag %s set to %s at %g%% by %s", name, wanted.variant, wanted.percent,
                 _who(request))
        return json_response(self._shown(self.flags[name], self.served()))

    async def rollback(self, request: web.Request) -> web.Response:
        require_admin(request)
        name = request.match_info["name"]
        self.flags.rollback(name)
        log.info("flag %s rolled back by %s", name, _who(request))
        return json_response(self._shown(self.flags[name], self.served()))

    @staticmethod
    def _shown(flag: Flag, counts: Mapping[tuple[str, str], int]) -> dict[str, object]:
        return {**flag.describe(), "served": {v: counts[flag.name, v]
                                              for v in flag.definition.variants
                                              if counts.get((flag.name, v))}}
