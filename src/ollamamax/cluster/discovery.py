"""LAN discovery with zeroconf (mDNS / DNS-SD): nodes advertise, gateways browse.

A node advertises ``<id>._ollamamax._tcp.local.`` with its URL, id and engine as TXT
properties (`Advertiser`). A gateway browses ``_ollama._tcp.local.`` (stock Ollama servers
someone advertises, e.g. with avahi) and the configured service type, ``_ollamamax._tcp`` by
default (`LanDiscovery`). What it finds becomes a backend like one from ``gateway.backends``:
the health checks poll it (``/telemetry``, or ``/api/tags`` and ``/api/ps`` for a stock
Ollama) and mark it up; a service that goes away leaves the view. A node that is also a
member in etcd is left to the membership watch.

`DiscoveredBackends` is the pure part (service events into the view), `LanDiscovery` and
`Advertiser` the zeroconf shell. mDNS listens on UDP port 5353 and joins its multicast group
on the chosen interfaces only (``cluster.discovery_interfaces``; empty: all).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ollamamax.scheduler.view import ClusterView

log = logging.getLogger(__name__)

OLLAMA_SERVICE = "_ollama._tcp"
NODE_SERVICE = "_ollamamax._tcp"
RESOLVE_MS = 3000


def fqdn(service: str) -> str:
    """``_x._tcp`` -> ``_x._tcp.local.``"""
    return service if service.endswith(".local.") else f"{service.rstrip('.')}.local."


class DiscoveredBackends:
    """Services found on the LAN, applied to a view (pure)."""

    def __init__(self, view: ClusterView, is_member: Callable[[str], bool] | None = None) -> None:
        self.view = view
        self.is_member = is_member or (lambda node_id: False)
        self.found: dict[str, tuple[str, str]] = {}  # service name -> (node id, url)

    def added(self, name: str, node_id: str, url: str) -> str:
        """A service resolved to `url`; returns what changed ("" for nothing)."""
        if self.is_member(node_id):
            return ""  # the membership watch describes it
        if self.found.get(name) == (node_id, url) and self._present(node_id):
            return ""
        self.found[name] = (node_id, url)
        self.view.add(node_id, url)
        return f"discovered {node_id} at {url} ({name}); health checks will mark it up"

    def removed(self, name: str) -> str:
        entry = self.found.pop(name, None)
        if entry is None or self.is_member(entry[0]):
            return ""
        self.view.remove(entry[0])
        return f"{entry[0]} is no longer advertised ({name}): it left the view"

    def _present(self, node_id: str) -> bool:
        i = self.view.index.get(node_id)
        return i is not None and bool(self.view.present[i])


def identify(service_type: str, name: str, info: AsyncServiceInfo) -> tuple[str, str] | None:
    """(node id, URL) of a resolved service: our nodes say both in TXT properties; for
    anything else, the instance name and its first IPv4 address and port."""
    props = info.decoded_properties
    instance = name.removesuffix("." + service_type).removesuffix(service_type)
    node_id = props.get("id") or instance or name
    url = props.get("url")
    if not url:
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not addresses or not info.port:
            return None
        url = f"http://{addresses[0]}:{info.port}"
    return node_id, url.rstrip("/")


def _interfaces(interfaces: Sequence[str]) -> dict[str, object]:
    return {"interfaces": list(interfaces)} if interfaces else {}


class LanDiscovery:
    """Browse `services` on the LAN and keep `backends` (hence the view) in step."""

    def __init__(self, backends: DiscoveredBackends, services: Sequence[str], *,
                 interfaces: Sequence[str] = (),
                 on_change: Callable[[], None] | None = None) -> None:
        self.backends = backends
        self.services = [fqdn(s) for s in dict.fromkeys(services)]
        self.interfaces = list(interfaces)
        self.on_change = on_change
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only, **_interfaces(self.interfaces))
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, self.services,
                                            handlers=[self._on_service])
        log.info("browsing the LAN for %s", ", ".join(self.services))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            await self._zc.async_close()
        self._browser = self._zc = None

    def _on_service(self, zeroconf: Zeroconf, service_type: str, name: str,
                    state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self._said(self.backends.removed(name))
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, RESOLVE_MS):
            log.info("could not resolve %s", name)
            return
        found = identify(service_type, name, info)
        if found is not None:
            self._said(self.backends.added(name, *found))

    def _said(self, sentence: str) -> None:
        if sentence:
            log.info("%s", sentence)
            if self.on_change is not None:
                self.on_change()


class Advertiser:
    """A node's ``<id>._ollamamax._tcp.local.`` advertisement."""

    def __init__(self, node_id: str, url: str, engine: str, *, service: str = NODE_SERVICE,
                 interfaces: Sequence[str] = ()) -> None:
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"cannot advertise {url!r}: it needs a host and a port")
        self.node_id, self.url = node_id, url
        service_type = fqdn(service)
        address = socket.gethostbyname(parts.hostname)  # an IPv4 literal stays as it is
        self.info = AsyncServiceInfo(
            service_type, f"{node_id}.{service_type}", port=parts.port,
            addresses=[socket.inet_aton(address)], server=f"{node_id}.local.",
            properties={"id": node_id, "url": url, "engine": engine})
        self.interfaces = list(interfaces)
        self._zc: AsyncZeroconf | None = None

    async def start(self) -> None:
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only, **_interfaces(self.interfaces))
        await self._zc.async_register_service(self.info, allow_name_change=True)
        log.info("advertising %s on the LAN as %s", self.url, self.info.name)

    async def stop(self) -> None:
        if self._zc is not None:
            await self._zc.async_unregister_service(self.info)
            await self._zc.async_close()
            self._zc = None
