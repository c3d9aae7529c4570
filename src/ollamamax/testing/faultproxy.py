"""A TCP fault proxy with toxiproxy's toxics, for tests, benchmarks and the command line.

toxiproxy itself cannot be installed here and ``tc netem`` does not exist in this kernel
(NOTES.md), so latency, resets and stalls between a gateway and a node come from this
asyncio proxy. It speaks toxiproxy's vocabulary:

    proxy = FaultProxy("127.0.0.1:11435")          # the node; listens on 127.0.0.1:0
    url = await proxy.start()                      # give `url` to the gateway as the node
    proxy.add(Toxic("latency", "downstream", {"latency": 200, "jitter": 50}))
    proxy.add(Toxic("reset_peer", "upstream", {"timeout": 0}, toxicity=0.5))
    proxy.remove("latency_downstream"); proxy.clear()
    await proxy.disable(); await proxy.enable()    # toxiproxy's "down"

Streams: ``upstream`` is client -> server (the request), ``downstream`` server -> client (the
answer). `toxicity` is the probability that a toxic applies to a connection, drawn once per
connection and toxic. Toxics can be added and removed while connections run: they apply to
those connections from then on. Attributes (toxiproxy's names; times in milliseconds):

    latency     latency, jitter   each chunk is held latency ± jitter (uniform); chunks are
                                  pipelined, so throughput is kept and order too
    bandwidth   rate              at most `rate` KB/s
    slow_close  delay             the end of the stream is passed on `delay` ms late
    timeout     timeout           data stops passing; the connection is closed after
                                  `timeout` ms (0: never: a blackhole, the peer hangs)
    reset_peer  timeout           TCP RST to both peers `timeout` ms after the toxic applies
                                  to the connection (0: as soon as data arrives in its stream)
    slicer      average_size, size_variation, delay (microseconds)
                                  chunks cut in slices of average_size ± size_variation bytes
    limit_data  bytes             the connection is closed once `bytes` bytes have passed

On the command line: ``ollamamax testing faultproxy --upstream HOST:PORT --toxic
latency@downstream:latency=200,jitter=50 --api 127.0.0.1:0`` (``--api`` serves a small HTTP
API with toxiproxy's JSON shapes to change toxics at run time; see `api_app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ollamamax.errors import BadRequest, ConfigError, NotFound

log = logging.getLogger(__name__)

UPSTREAM, DOWNSTREAM = "upstream", "downstream"
READ_SIZE = 65536
# Every toxic type, with its attributes and their defaults (toxiproxy's).
KINDS: dict[str, dict[str, float]] = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
    "limit_data": {"bytes": 0},
}


@dataclass(frozen=True)
class Toxic:
    type: str
    stream: str = DOWNSTREAM
    attributes: Mapping[str, float] = field(default_factory=dict)
    toxicity: float = 1.0
    name: str = ""  # default: "<type>_<stream>", as toxiproxy names them

    def __post_init__(self) -> None:
        if self.type not in KINDS:
            raise ConfigError(f"unknown toxic {self.type!r}; valid toxics: {', '.join(KINDS)}")
        if self.stream not in (UPSTREAM, DOWNSTREAM):
            raise ConfigError(f"toxic stream must be upstream or downstream, not {self.stream!r}")
        unknown = set(self.attributes) - set(KINDS[self.type])
        if unknown:
            raise ConfigError(f"toxic {self.type} has no attribute {', '.join(sorted(unknown))}; "
                              f"it has: {', '.join(KINDS[self.type])}")
        if any(float(v) < 0 for v in self.attributes.values()):
            raise ConfigError(f"toxic {self.type}: attributes must be >= 0")
        if not 0 <= self.toxicity <= 1:
            raise ConfigError("toxicity is a probability between 0 and 1")
        if not self.name:
            object.__setattr__(self, "name", f"{self.type}_{self.stream}")

    def attr(self, key: str) -> float:
        return float(self.attributes.get(key, KINDS[self.type][key]))

    def to_json(self) -> dict[str, Any]:
        """toxiproxy's shape."""
        return {"name": self.name, "type": self.type, "stream": self.stream,
                "toxicity": self.toxicity,
                "attributes": {k: self.attr(k) for k in KINDS[self.type]}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Toxic:
        try:
            return cls(str(data["type"]), str(data.get("stream", DOWNSTREAM)),
                       {str(k): float(v) for k, v in (data.get("attributes") or {}).items()},
                       float(data.get("toxicity", 1.0)), str(data.get("name", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"a toxic needs a type and numeric attributes ({exc})") from None

    @classmethod
    def parse(cls, spec: str) -> Toxic:
        """``TYPE[@STREAM][:key=value,...]``; keys are attributes, or ``toxicity``/``name``,
        e.g. ``latency@downstream:latency=200,jitter=50`` or ``reset_peer:toxicity=0.5``."""
        head, _, tail = spec.partition(":")
        kind, _, stream = head.partition("@")
        attributes: dict[str, float] = {}
        toxicity, name = 1.0, ""
        for item in filter(None, (part.strip() for part in tail.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"toxic {spec!r}: {item!r} is not key=value")
            if key == "name":
                name = value
                continue
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"toxic {spec!r}: {key} must be a number") from None
            if key == "toxicity":
                toxicity = number
            else:
                attributes[key] = number
        return cls(kind.strip(), stream.strip() or DOWNSTREAM, attributes, toxicity, name)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``http://HOST:PORT`` -> (host, port)."""
    if "//" not in text:
        text = "tcp://" + text
    parts = urlsplit(text)
    if not parts.hostname or parts.port is None:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    return parts.hostname, parts.port


@dataclass
class ProxyStats:
    connections: int = 0
    resets: int = 0
    refused: int = 0  # the upstream could not be reached
    bytes: dict[str, int] = field(default_factory=lambda: {UPSTREAM: 0, DOWNSTREAM: 0})


class FaultProxy:
    def __init__(self, upstream: str | tuple[str, int], listen: str | tuple[str, int] = (
                 "127.0.0.1", 0), *, toxics: Iterable[Toxic] = (),
                 rng: random.Random | None = None) -> None:
        self.upstream = parse_address(upstream) if isinstance(upstream, str) else upstream
        self.listen = parse_address(listen) if isinstance(listen, str) else listen
        self.rng = rng or random.Random()
        self.toxics: dict[str, Toxic] = {}
        self.connections: set[_Connection] = set()
        self.stats = ProxyStats()
        self.enabled = False
        self._server: asyncio.Server | None = None
        for toxic in toxics:
            self.add(toxic)

    @property
    def port(self) -> int:
        return self.listen[1]

    @property
    def url(self) -> str:
        return f"http://{self.listen[0]}:{self.listen[1]}"

    async def start(self) -> str:
        """Listen (port 0: the OS picks one, kept across disable/enable); return the URL."""
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1],
                                                  reuse_address=True)
        self.listen = (self.listen[0], self._server.sockets[0].getsockname()[1])
        self.enabled = True
        return self.url

    async def stop(self) -> None:
        """Close everything and wait (briefly) for the connections' tasks to end."""
        await self.disable()
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0.01)

    async def disable(self) -> None:
        """toxiproxy's "down": stop listening and close every connection."""
        self.enabled = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn.close()

    async def enable(self) -> None:
        if not self.enabled:
            await self.start()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- toxics ----------------------------------------------------------------------------

    def add(self, toxic: Toxic) -> Toxic:
        """Add (or replace, by name) a toxic; running connections get it too."""
        self.remove(toxic.name)
        self.toxics[toxic.name] = toxic
        for conn in list(self.connections):
            conn.toxic_added(toxic)
        return toxic

    def remove(self, name: str) -> bool:
        toxic = self.toxics.pop(name, None)
        if toxic is None:
            return False
        for conn in list(self.connections):
            conn.toxic_removed(toxic)
        return True

    def clear(self) -> None:
        for name in list(self.toxics):
            self.remove(name)

    # -- connections -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.stats.refused += 1
            _reset(writer)  # the client sees the refusal as a reset, as through toxiproxy
            return
        conn = _Connection(self, reader, writer, up_reader, up_writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)


class _Connection:
    """One client connection and its connection to the upstream: two links."""

    def __init__(self, proxy: FaultProxy, client_r: asyncio.StreamReader,
                 client_w: asyncio.StreamWriter, server_r: asyncio.StreamReader,
                 server_w: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.writers = (client_w, server_w)
        self.links = (_Link(self, UPSTREAM, client_r, server_w),
                      _Link(self, DOWNSTREAM, server_r, client_w))
        self.chosen: dict[str, bool] = {}  # toxic name -> applies to this connection
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.closed = False

    async def run(self) -> None:
        for toxic in list(self.proxy.toxics.values()):
            self.toxic_added(toxic)
        tasks = [asyncio.ensure_future(link.run()) for link in self.links]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.close()
            for timer in self.timers.values():
                timer.cancel()

    def applies(self, toxic: Toxic) -> bool:
        chosen = self.chosen.get(toxic.name)
        if chosen is None:
            chosen = self.chosen[toxic.name] = (toxic.toxicity >= 1.0 or
                                                self.proxy.rng.random() < toxic.toxicity)
        return chosen

    def active(self, stream: str) -> list[Toxic]:
        return [t for t in self.proxy.toxics.values() if t.stream == stream and self.applies(t)]

    def toxic_added(self, toxic: Toxic) -> None:
        self.chosen.pop(toxic.name, None)
        if toxic.type not in ("reset_peer", "timeout") or not self.applies(toxic):
            return
        delay = toxic.attr("timeout") / 1000
        if delay > 0:
            self.timers[toxic.name] = asyncio.get_running_loop().call_later(
                delay, self.reset if toxic.type == "reset_peer" else self.close)

    def toxic_removed(self, toxic: Toxic) -> None:
        self.chosen.pop(toxic.name, None)
        timer = self.timers.pop(toxic.name, None)
        if timer is not None:
            timer.cancel()

    def reset(self) -> None:
        """TCP RST to both peers."""
        if not self.closed:
            self.closed = True
            self.proxy.stats.resets += 1
            for writer in self.writers:
                _reset(writer)

    def close(self) -> None:
        """An orderly close (FIN) of both connections."""
        if not self.closed:
            self.closed = True
            for writer in self.writers:
                writer.close()


class _Link:
    """One direction of a connection: a reader task queues chunks with their arrival time;
    the writer applies the toxics (so latency is pipelined, not added per chunk in turn)."""

    def __init__(self, conn: _Connection, stream: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.conn = conn
        self.stream = stream
        self.reader = reader
        self.writer = writer
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.passed: dict[str, int] = {}  # limit_data toxic name -> bytes counted

    async def run(self) -> None:
        reading = asyncio.ensure_future(self._read())
        try:
            await self._write()
        except (ConnectionError, OSError):
            self.conn.close()
        finally:
            reading.cancel()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, OSError):
                data = b""
            self.queue.put_nowait((loop.time(), data))
            if not data:
                return

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.conn.closed:
            arrived, data = await self.queue.get()
            toxics = self.conn.active(self.stream)
            if not data:
                await self._end(toxics)
                return
            data = await self._hold(data, arrived, toxics, loop)
            if data and not self.conn.closed:
                await self._send(data, toxics)

    async def _hold(self, data: bytes, arrived: float, toxics: list[Toxic],
                    loop: asyncio.AbstractEventLoop) -> bytes:
        """Latency, blackholes and resets; what is left to send."""
        for toxic in toxics:
            if toxic.type == "reset_peer" and toxic.attr("timeout") == 0:
                self.conn.reset()
                return b""
            if toxic.type == "timeout":  # a blackhole: dropped while the toxic stays
                return b""
            if toxic.type == "latency":
                jitter = toxic.attr("jitter")
                delay = (toxic.attr("latency") + self.conn.proxy.rng.uniform(-jitter, jitter)) / 1000
                wait = arrived + max(0.0, delay) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
        return data

    async def _send(self, data: bytes, toxics: list[Toxic]) -> None:
        stats = self.conn.proxy.stats
        for toxic in toxics:
            if toxic.type == "limit_data":
                used = self.passed.get(toxic.name, 0)
                room = int(toxic.attr("bytes")) - used
                if len(data) >= room:
                    self.writer.write(data[:max(room, 0)])
                    await self.writer.drain()
                    stats.bytes[self.stream] += max(room, 0)
                    self.conn.close()
                    return
                self.passed[toxic.name] = used + len(data)
        for pause, piece in self._slices(data, toxics):
            if pause > 0:
                await asyncio.sleep(pause)
            self.writer.write(piece)
            await self.writer.drain()
            stats.bytes[self.stream] += len(piece)

    def _slices(self, data: bytes, toxics: list[Toxic]) -> Iterable[tuple[float, bytes]]:
        """The pieces to write, each with the pause before it (slicer, then bandwidth)."""
        slicer = next((t for t in toxics if t.type == "slicer"), None)
        bandwidth = next((t for t in toxics if t.type == "bandwidth"), None)
        rate = bandwidth.attr("rate") * 1024 if bandwidth is not None else 0.0
        if slicer is not None and slicer.attr("average_size") > 0:
            average = int(slicer.attr("average_size"))
            spread = int(slicer.attr("size_variation"))
            delay = slicer.attr("delay") / 1e6
        elif rate:  # a rate alone: pieces of 50 ms each, so the rate shows within a chunk
            average, spread, delay = max(1, int(rate / 20)), 0, 0.0
        else:
            yield 0.0, data
            return
        rng = self.conn.proxy.rng
        at = 0
        while at < len(data):
            size = max(1, average + (rng.randint(-spread, spread) if spread else 0))
            piece = data[at:at + size]
            yield (delay if at else 0.0) + (len(piece) / rate if rate else 0.0), piece
            at += size

    async def _end(self, toxics: list[Toxic]) -> None:
        """The sender closed its side: pass the end on (slow_close: later)."""
        delay = max((t.attr("delay") for t in toxics if t.type == "slow_close"), default=0.0)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        if self.writer.can_write_eof() and not self.writer.is_closing():
            with contextlib.suppress(OSError):
                self.writer.write_eof()  # half-close; the connection ends when both have


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# -- the control API (``--api``), toxiproxy's JSON shapes ------------------------------------


def api_app(proxy: FaultProxy) -> web.Application:
    """The control API of `proxy`, errors in Ollama's ``{"error": ...}`` shape."""
    from ollamamax.api.errors import error_middleware

    app = web.Application(middlewares=[error_middleware])
    add_routes(app, proxy)
    return app


def add_routes(app: web.Application, proxy: FaultProxy) -> None:
    """GET/POST /proxy ({"enabled": bool}); GET/POST/DELETE /toxics; DELETE /toxics/{name}."""

    async def show(request: web.Request) -> web.Response:
        return web.json_response(describe(proxy))

    async def set_enabled(request: web.Request) -> web.Response:
        body = await _json(request)
        await (proxy.enable() if body.get("enabled", True) else proxy.disable())
        return web.json_response(describe(proxy))

    async def list_toxics(request: web.Request) -> web.Response:
        return web.json_response([t.to_json() for t in proxy.toxics.values()])

    async def add_toxic(request: web.Request) -> web.Response:
        try:
            toxic = proxy.add(Toxic.from_json(await _json(request)))
        except ConfigError as exc:
            raise BadRequest(exc.message) from None
        log.info("toxic %s added", toxic.name)
        return web.json_response(toxic.to_json())

    async def clear_toxics(request: web.Request) -> web.Response:
        proxy.clear()
        return web.json_response([])

    async def remove_toxic(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not proxy.remove(name):
            raise NotFound(f"no toxic named {name!r}")
        log.info("toxic %s removed", name)
        return web.json_response({"removed": name})

    app.router.add_get("/proxy", show)
    app.router.add_post("/proxy", set_enabled)
    app.router.add_get("/toxics", list_toxics)
    app.router.add_post("/toxics", add_toxic)
    app.router.add_delete("/toxics", clear_toxics)
    app.router.add_delete("/toxics/{name}", remove_toxic)


def describe(proxy: FaultProxy) -> dict[str, Any]:
    return {"listen": f"{proxy.listen[0]}:{proxy.listen[1]}",
            "upstream": f"{proxy.upstream[0]}:{proxy.upstream[1]}", "enabled": proxy.enabled,
            "connections": len(proxy.connections),
            "toxics": [t.to_json() for t in proxy.toxics.values()],
            "stats": {"connections": proxy.stats.connections, "resets": proxy.stats.resets,
                      "refused": proxy.stats.refused, "bytes": dict(proxy.stats.bytes)}}


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body
