"""A lean closed-loop HTTP/1.1 load generator for latency benchmarks.

Each concurrent worker owns one persistent keep-alive connection (an `asyncio.Protocol`, on
uvloop when it is installed) and sends the same POST again as soon as the previous answer's
last byte has arrived: a closed loop, so the offered load is `concurrency` requests in flight.
Everything per request happens in callbacks, without a coroutine or a future, so the
generator costs a few microseconds of CPU per request and is not the bottleneck at a few
thousand requests per second on one core (`LoadResult.client_cpu_us` reports what it cost).

Latency is time to the last byte, from just before the request is written, in integer
nanoseconds (`time.perf_counter_ns`). Responses are framed by ``Content-Length`` or by
chunked transfer encoding (what aiohttp uses for streams). A warm-up phase runs first on the
same connections and is not recorded. An answer counts as an error unless it is a 200 whose
body passes a plausibility check; the errors are counted by kind and a run with errors is not
`ok`. Percentiles are exact: nearest-rank over the sorted samples, so every reported
percentile is a latency some request really had.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

Validator = Callable[[bytes], bool]

_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"


def ollama_done(body: bytes) -> bool:
    """Plausible Ollama answer: the (last) JSON object says ``"done": true``, with no error."""
    tail = body[-512:]
    return (b'"done":true' in tail or b'"done": true' in tail) and b'"error"' not in tail


@dataclass(frozen=True)
class Target:
    """What every request of a run is: one POST with a fixed body."""

    url: str  # http://host:port (a path here is ignored; see `path`)
    path: str
    body: bytes
    validate: Validator = ollama_done
    content_type: str = "application/json"

    def request_bytes(self) -> bytes:
        host = urlsplit(self.url).netloc
        head = (f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
                "Accept: */*\r\n\r\n")
        return head.encode("latin-1") + self.body

    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"load generator needs an http://HOST:PORT URL, not {self.url!r}")
        return parts.hostname, parts.port or 80


@dataclass
class LoadResult:
    """One measured phase: latencies of the answers that passed, and what went wrong."""

    concurrency: int
    latencies_ns: np.ndarray  # of successful requests, in completion order
    errors: Counter[str] = field(default_factory=Counter)  # kind -> count
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0  # CPU this process spent during the measured phase
    reconnects: int = 0
    # The steady part of the phase: from its start until the last request was sent, while
    # every worker still had a request in flight (the drain after it runs below concurrency).
    steady_s: float = 0.0
    steady_completed: int = 0

    @property
    def ok_count(self) -> int:
        return int(self.latencies_ns.size)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def completed(self) -> int:
        return self.ok_count + self.error_count

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and self.ok_count > 0

    @property
    def rps(self) -> float:
        """Successful requests per second at full concurrency (the drain at the end of a
        closed-loop run, with fewer requests in flight, is left out)."""
        if self.steady_s > 0 and self.steady_completed > 0 and self.completed:
            return self.steady_completed / self.steady_s * self.ok_count / self.completed
        return self.ok_count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def client_cpu_us(self) -> float:
        """The load generator's CPU per completed request, in microseconds."""
        return self.client_cpu_s * 1e6 / self.completed if self.completed else 0.0

    def percentile_ms(self, p: float) -> float:
        return percentile_ms(self.latencies_ns, p)

    def describe_errors(self) -> str:
        return ", ".join(f"{n} x {kind}" for kind, n in self.errors.most_common())


def percentile_ms(latencies_ns: np.ndarray, p: float) -> float:
    """Exact nearest-rank percentile in milliseconds: the smallest sample with at least `p`
    percent of the samples at or below it. NaN when there are no samples."""
    if latencies_ns.size == 0:
        return float("nan")
    value = np.percentile(latencies_ns, p, method="inverted_cdf")
    return float(value) / 1e6


def merge(results: list[LoadResult]) -> LoadResult:
    """Several runs of one case as one result (samples, errors and times added up)."""
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r.errors)
    return LoadResult(
        concurrency=results[0].concurrency if results else 0,
        latencies_ns=np.concatenate([r.latencies_ns for r in results]) if results
        else np.empty(0, np.int64),
        errors=errors,
        elapsed_s=sum(r.elapsed_s for r in results),
        client_cpu_s=sum(r.client_cpu_s for r in results),
        reconnects=sum(r.reconnects for r in results),
        steady_s=sum(r.steady_s for r in results),
        steady_completed=sum(r.steady_completed for r in results),
    )


class _Phase:
    """How many requests are left to start in one phase, and what the finished ones gave."""

    def __init__(self, requests: int | None, duration: float | None, record: bool,
                 in_flight: int) -> None:
        self.remaining = requests if requests is not None else -1  # -1: unlimited
        self.started_ns = time.perf_counter_ns()
        self.deadline_ns = (self.started_ns + int(duration * 1e9)
                            if duration is not None else None)
        self.record = record
        self.samples: list[int] = []
        self.errors: Counter[str] = Counter()
        self.in_flight = in_flight  # workers still looping
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.drained_ns = 0  # when the last request was sent
        self.completed_then = 0  # requests finished by then

    def take(self, now_ns: int) -> bool:
        """Whether a worker should start another request now."""
        if self.remaining == 0:
            return False
        if self.deadline_ns is not None and now_ns >= self.deadline_ns:
            self.remaining = 0
            self._drained(now_ns)
            return False
        if self.remaining > 0:
            self.remaining -= 1
            if self.remaining == 0:
                self._drained(now_ns)
        return True

    def _drained(self, now_ns: int) -> None:
        self.drained_ns = now_ns
        self.completed_then = len(self.samples) + sum(self.errors.values())

    def retire(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and not self.done.done():
            self.done.set_result(None)


# What the parser waits for: the head, a Content-Length body, a chunked body, or EOF.
_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class _Worker(asyncio.Protocol):
    """One connection sending one request at a time and parsing the answer incrementally."""

    def __init__(self, request: bytes, validate: Validator, on_lost: Callable[[_Worker], None]):
        self.request = request
        self.validate = validate
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.phase: _Phase | None = None
        self.busy = False
        self.timed_out = False
        self.started_ns = 0
        self._buf = bytearray()  # the response so far
        self._state = _HEAD
        self._status = 0
        self._pos = 0  # where the body starts in the buffer
        self._end = 0  # where it ends (Content-Length)
        self._keep_alive = True

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self._abort("bytes outside a response")
            return
        buf = self._buf
        buf += data
        try:
            if self._state == _HEAD:
                end = buf.find(_HEAD_END)
                if end < 0:
                    return
                self._head(end)
            state = self._state
            if state == _LENGTH:
                if len(buf) < self._end:
                    return
                if len(buf) > self._end:
                    raise ValueError("bytes after the end of a response")
                body = bytes(buf[self._pos:])
            elif state == _CHUNKED:
                # A complete chunked body ends with an empty line; walk the chunks only then.
                if not buf.endswith(_HEAD_END) or (body := self._chunked_body()) is None:
                    return
            else:  # _UNTIL_CLOSE: the body ends when the server closes the connection
                return
        except ValueError:
            self._abort("malformed response")
            return
        self._complete(body)

    def eof_received(self) -> bool | None:
        if self.busy and self._state == _UNTIL_CLOSE:
            self._keep_alive = False
            self._complete(bytes(self._buf[self._pos:]))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self._fail("timeout" if self.timed_out else "connection lost")
        self.on_lost(self)

    # -- the loop --------------------------------------------------------------------------

    def start(self, phase: _Phase) -> None:
        """Begin looping in `phase` (the connection must be open)."""
        self.phase = phase
        self._next()

    def _next(self) -> None:
        phase = self.phase
        assert phase is not None
        now = time.perf_counter_ns()
        if self.transport is None or not phase.take(now):
            self.phase = None
            phase.retire()
            return
        self._buf.clear()
        self._state = _HEAD
        self.busy = True
        self.started_ns = now
        self.transport.write(self.request)

    def _complete(self, body: bytes) -> None:
        latency = time.perf_counter_ns() - self.started_ns
        self.busy = False
        phase = self.phase
        assert phase is not None
        if self._status != 200:
            self._fail(f"HTTP {self._status}")
        elif not self.validate(body):
            self._fail("implausible body")
        elif phase.record:
            phase.samples.append(latency)
        if not self._keep_alive:
            self._abort("")  # connection_lost reconnects and resumes the phase
            return
        self._next()

    def _fail(self, kind: str) -> None:
        if self.phase is not None and self.phase.record:
            self.phase.errors[kind] += 1

    def _abort(self, kind: str) -> None:
        if kind:
            self._fail(kind)
        self.busy = False
        if self.transport is not None:
            self.transport.abort()

    # -- HTTP/1.1 response parsing -----------------------------------------------------------

    def _head(self, end: int) -> None:
        """Read the status and framing headers of the head ending at `end`."""
        head = bytes(self._buf[:end]).lower()
        if not head.startswith(b"http/1."):
            raise ValueError("not an HTTP/1.x response")
        self._status = status = int(head[9:12])
        self._pos = end + 4
        connection = _header(head, b"\r\nconnection:")
        # HTTP/1.1 keeps the connection open unless told otherwise; HTTP/1.0 closes it.
        self._keep_alive = (head[7:8] == b"1" if connection is None
                            else b"close" not in connection)
        encoding = _header(head, b"\r\ntransfer-encoding:")
        length = _header(head, b"\r\ncontent-length:")
        if encoding is not None and b"chunked" in encoding:
            self._state = _CHUNKED
        elif length is not None or status in (204, 304) or 100 <= status < 200:
            self._state = _LENGTH
            self._end = self._pos + (int(length) if length is not None else 0)
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False

    def _chunked_body(self) -> bytes | None:
        """The decoded body if the whole chunked body is in the buffer, else None."""
        buf = self._buf
        pos = self._pos
        parts = []
        while True:
            end = buf.find(_CRLF, pos)
            if end < 0:
                return None
            size_field = buf[pos:end]
            try:
                size = int(size_field, 16)
            except ValueError:  # a chunk extension: SIZE;name=value
                size = int(size_field.split(b";", 1)[0], 16)
            pos = end + 2
            if size == 0:
                break
            stop = pos + size
            if buf[stop:stop + 2] != _CRLF:
                if len(buf) < stop + 2:
                    return None
                raise ValueError("chunk data not followed by CRLF")
            parts.append(buf[pos:stop])
            pos = stop + 2
        # After the last chunk: optional trailer lines, then an empty line.
        rest = buf[pos:]
        if rest != _CRLF and not rest.endswith(_HEAD_END):
            return None
        return b"".join(parts)


def _header(head: bytes, marker: bytes) -> bytes | None:
    """The value of the header `marker` (b"\\r\\nname:") in a lower-cased head, or None."""
    start = head.find(marker)
    if start < 0:
        return None
    start += len(marker)
    end = head.find(_CRLF, start)
    return head[start:end if end >= 0 else None].strip()


class LoadGenerator:
    """Open `concurrency` connections to `target`, then run phases on them."""

    def __init__(self, target: Target, concurrency: int, answer_timeout: float = 30.0) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.target = target
        self.concurrency = concurrency
        # An answer slower than this is aborted and counted as an error ("timeout").
        self.answer_timeout = answer_timeout
        self._request = target.request_bytes()
        self._workers: list[_Worker] = []
        self._phase: _Phase | None = None
        self._reconnects = 0
        self._closing = False
        self._pending: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Open every connection; `ConnectionError` if any cannot be opened."""
        opened = await asyncio.gather(*(self._connect() for _ in range(self.concurrency)))
        if not all(opened):
            await self.close()
            raise ConnectionError(f"cannot connect to {self.target.url}")

    async def close(self) -> None:
        self._closing = True
        for task in list(self._pending):
            task.cancel()
        for worker in list(self._workers):
            if worker.transport is not None:
                worker.transport.close()
        self._workers.clear()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    async def __aenter__(self) -> LoadGenerator:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, requests: int | None = None, duration: float | None = None,
                  record: bool = True) -> LoadResult:
        """Run one phase of `requests` requests (or `duration` seconds) on all connections."""
        if (requests is None) == (duration is None):
            raise ValueError("give requests or duration, not both")
        workers = [w for w in self._workers if w.transport is not None]
        phase = self._phase = _Phase(requests, duration, record, len(workers))
        reconnects = self._reconnects
        cpu0, t0 = time.process_time(), time.perf_counter()
        if not workers:
            phase.done.set_result(None)
        for worker in workers:
            worker.start(phase)
        watchdog = asyncio.create_task(self._watchdog(phase))
        try:
            await phase.done
        finally:
            watchdog.cancel()
            self._phase = None
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        steady = (phase.drained_ns - phase.started_ns) / 1e9 if phase.drained_ns else 0.0
        return LoadResult(self.concurrency, np.asarray(phase.samples, dtype=np.int64),
                          phase.errors, elapsed, cpu, self._reconnects - reconnects,
                          steady, phase.completed_then)

    async def _connect(self) -> _Worker | None:
        host, port = self.target.address()
        loop = asyncio.get_running_loop()
        try:
            _, worker = await loop.create_connection(
                lambda: _Worker(self._request, self.target.validate, self._lost), host, port)
        except OSError:
            return None
        self._workers.append(worker)
        return worker

    def _lost(self, worker: _Worker) -> None:
        """A connection closed: replace it and let its worker's loop continue on the new one."""
        with contextlib.suppress(ValueError):
            self._workers.remove(worker)
        phase = worker.phase
        worker.phase = None
        if self._closing:
            return
        task = asyncio.create_task(self._resume(phase))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _resume(self, phase: _Phase | None) -> None:
        worker = await self._connect()
        self._reconnects += 1
        if phase is None or phase is not self._phase:
            return
        if worker is None:
            if phase.record:
                phase.errors["connect failed"] += 1
            phase.retire()  # this worker's loop ends; the others go on
            return
        worker.start(phase)

    async def _watchdog(self, phase: _Phase) -> None:
        limit = int(self.answer_timeout * 1e9)
        while True:
            await asyncio.sleep(min(1.0, self.answer_timeout / 4))
            now = time.perf_counter_ns()
            for worker in list(self._workers):
                if worker.busy and now - worker.started_ns > limit and worker.transport:
                    worker.timed_out = True
                    worker.transport.abort()


async def run(target: Target, concurrency: int, *, requests: int | None = None,
              duration: float | None = None, warmup: int = 0, answer_timeout: float = 30.0,
              ) -> LoadResult:
    """Connect, warm up (`warmup` requests, not recorded), measure, disconnect."""
    async with LoadGenerator(target, concurrency, answer_timeout) as gen:
        if warmup:
            await gen.run(requests=warmup, record=False)
        return await gen.run(requests=requests, duration=duration)


def run_sync(target: Target, concurrency: int, *, requests: int | None = None,
             duration: float | None = None, warmup: int = 0, answer_timeout: float = 30.0,
             ) -> LoadResult:
    """`run` on a fresh event loop (uvloop when installed)."""
    coro = run(target, concurrency, requests=requests, duration=duration, warmup=warmup,
               answer_timeout=answer_timeout)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    return uvloop.run(coro)
