"""The store on etcd 3.4, through its v3 JSON gateway (``/v3/...``) with aiohttp.

The gateway speaks protobuf's JSON mapping, and its quirks are handled here, once: keys and
values are base64 (msgspec's ``bytes``), 64-bit numbers come as strings (decoded with
``strict=False``), and fields at their zero value are left out, so a failed transaction has
no ``succeeded``, an empty range no ``kvs``, a put event no ``type`` and an empty value no
``value``: every reply field has a default. A prefix is the range ``[prefix, prefix+1)``
where ``+1`` increments the last byte that is not 0xff (the empty prefix is ``["\\0", "\\0")``,
every key).

A watch is one streamed POST; each line is one JSON object. When the stream breaks or ends
(member killed or restarted, network cut), the watch reconnects to the next endpoint and asks
again from the revision after the last one it delivered, so the caller sees every event once.
It asks etcd to cancel it when its member loses the cluster leader (``hasleader`` metadata),
so a member cut off from the others cannot keep it silently stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp
import msgspec

from ollamamax.cluster.etcd_http import EtcdError, EtcdHttp, tls_context
from ollamamax.cluster.store import EventType, KeyValue, Store, WatchEvent
from ollamamax.errors import Compacted, LeaseNotFound, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

NOT_FOUND = 5  # gRPC status etcd gives an unknown lease
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
WATCH_BACKOFF_S = (0.05, 1.0)  # first and longest pause before reconnecting a watch


class _Header(msgspec.Struct):
    revision: int = 0


class _KV(msgspec.Struct):
    key: bytes = b""
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0

    def public(self) -> KeyValue:
        return KeyValue(_text(self.key), self.value, self.create_revision, self.mod_revision,
                        self.version, self.lease)


class _Reply(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    kvs: list[_KV] = []  # range
    deleted: int = 0  # deleterange
    succeeded: bool = False  # txn
    ID: int = 0  # lease grant
    TTL: int = 0  # lease grant


class _KeepAlive(msgspec.Struct):
    result: _Reply = msgspec.field(default_factory=_Reply)


class _Event(msgspec.Struct):
    type: str = "PUT"
    kv: _KV = msgspec.field(default_factory=_KV)

    def public(self) -> WatchEvent:
        kind = EventType.DELETE if self.type == "DELETE" else EventType.PUT
        return WatchEvent(kind, _text(self.kv.key), self.kv.value, self.kv.mod_revision)


class _WatchResult(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    events: list[_Event] = []


class _WatchLine(msgspec.Struct):
    result: _WatchResult | None = None
    error: dict[str, Any] | str | None = None  # a stream error: {"grpc_code", "message", ...}


class _Cursor:
    """Where a watch stands: the next revision it must deliver, and whether its current
    stream was accepted (so a later failure starts the back-off over)."""

    def __init__(self, start_revision: int) -> None:
        self.next = start_revision
        self.created = False


class EtcdStore(Store):
    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0,
                 connect_timeout: float = 1.0, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 sleep: Sleep = asyncio.sleep) -> None:
        """`endpoints`: client URLs (a list or one comma-separated string); `timeout` bounds
        each call including failover; TLS trusts `ca_file` and presents `cert_file`/`key_file`."""
        urls = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
        self._http = EtcdHttp(urls, timeout=timeout, connect_timeout=connect_timeout,
                              ssl_context=tls_context(ca_file, cert_file, key_file))
        self._sleep = sleep
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint that answered last (tried first by the next call)."""
        return self._http.endpoint

    # -- leases ----------------------------------------------------------------------------

    async def _grant(self, ttl_s: int) -> int:
        # repeatable: a lease granted twice by a retry expires unused
        reply = await self._call("/v3/lease/grant", {"TTL": ttl_s}, repeatable=True)
        return reply.ID

    async def _keep_alive(self, lease: int) -> int:
        answer = await self._send("/v3/lease/keepalive", {"ID": lease}, repeatable=True)
        ttl = _decode(answer, _KeepAlive).result.TTL
        if ttl <= 0:  # etcd's way of saying so: no TTL in the answer
            raise LeaseNotFound(lease)
        return ttl

    async def _revoke(self, lease: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": lease}, repeatable=True, lease=lease)

    # -- keys ------------------------------------------------------------------------------

    async def _put(self, key: str, value: bytes, lease: int) -> int:
        body = {"key": _bytes(key), "value": value, "lease": lease}
        reply = await self._call("/v3/kv/put", body, repeatable=False, lease=lease)
        return reply.header.revision

    async def _get(self, key: str) -> KeyValue | None:
        reply = await self._call("/v3/kv/range", {"key": _bytes(key)}, repeatable=True)
        return reply.kvs[0].public() if reply.kvs else None

    async def _get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        reply = await self._call("/v3/kv/range", prefix_range(prefix), repeatable=True)
        return [kv.public() for kv in reply.kvs], reply.header.revision

    async def _delete(self, key: str) -> bool:
        reply = await self._call("/v3/kv/deleterange", {"key": _bytes(key)}, repeatable=False)
        return reply.deleted > 0

    async def _delete_prefix(self, prefix: str) -> int:
        reply = await self._call("/v3/kv/deleterange", prefix_range(prefix), repeatable=False)
        return reply.deleted

    async def _compare_and_swap(self, key: str, expected: int, value: bytes, lease: int) -> bool:
        raw = _bytes(key)
        body = {"compare": [{"key": raw, "target": "MOD", "result": "EQUAL",
                             "mod_revision": expected}],
                "success": [{"request_put": {"key": raw, "value": value, "lease": lease}}]}
        reply = await self._call("/v3/kv/txn", body, repeatable=False, lease=lease)
        return reply.succeeded

    async def _compact(self, revision: int) -> None:
        try:
            await self._call("/v3/kv/compaction", {"revision": revision}, repeatable=False)
        except EtcdError as exc:
            if "future revision" in str(exc):
                raise ValueError(f"cannot compact at {revision}: {exc}") from exc
            if "has been compacted" not in str(exc):  # compacting again is a no-op
                raise

    # -- watch -----------------------------------------------------------------------------

    async def _watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        self._check()
        cursor = _Cursor(start_revision)
        failures = 0
        while not self._closed:
            try:
                async for event in self._watch_stream(prefix, cursor):
                    yield event
                reason = "the stream ended"
            except aiohttp.ClientConnectorCertificateError as exc:
                raise StoreError(f"etcd watch: TLS certificate refused: {exc}") from exc
            except (aiohttp.ClientError, TimeoutError, StoreUnavailable) as exc:
                reason = str(exc) or type(exc).__name__
            if self._closed:
                return
            failures = 1 if cursor.created else failures + 1
            cursor.created = False
            (log.warning if failures == 1 else log.debug)(
                "etcd watch on %r interrupted (%s); resuming from revision %d",
                prefix, reason, cursor.next)
            await self._sleep(min(WATCH_BACKOFF_S[1], WATCH_BACKOFF_S[0] * 2 ** (failures - 1)))

    async def _watch_stream(self, prefix: str, cursor: _Cursor) -> AsyncIterator[WatchEvent]:
        """One watch stream from `cursor.next`, moving the cursor past what it yields."""
        request = {"create_request": {**prefix_range(prefix), "start_revision": cursor.next}}
        lines = self._http.stream("/v3/watch", request, REQUIRE_LEADER)
        async with contextlib.aclosing(lines):
            async for line in lines:
                result = _watch_result(line)
                if result.created:
                    cursor.created = True
                    cursor.next = cursor.next or result.header.revision + 1
                floor = cursor.next
                for event in result.events:
                    if event.kv.mod_revision >= floor:  # never twice, whatever a member resends
                        yield event.public()
                        cursor.next = event.kv.mod_revision + 1

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any], *, repeatable: bool,
                    lease: int = 0) -> _Reply:
        return _decode(await self._send(path, body, repeatable=repeatable, lease=lease), _Reply)

    async def _send(self, path: str, body: dict[str, Any], *, repeatable: bool,
                    lease: int = 0) -> bytes:
        self._check()
        try:
            return await self._http.call(path, body, repeatable=repeatable)
        except EtcdError as exc:
            if lease and exc.code == NOT_FOUND:
                raise LeaseNotFound(lease) from None
            raise

    def _check(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    async def close(self) -> None:
        self._closed = True
        await self._http.close()


def prefix_range(prefix: str) -> dict[str, bytes]:
    """etcd's ``key``/``range_end`` pair for every key that starts with `prefix`."""
    raw = _bytes(prefix)
    end = raw.rstrip(b"\xff")
    if not end:  # "" or all 0xff: no upper bound
        return {"key": raw or b"\0", "range_end": b"\0"}
    return {"key": raw, "range_end": end[:-1] + bytes([end[-1] + 1])}


def _watch_result(line: bytes) -> _WatchResult:
    message = _decode(line, _WatchLine)
    if message.error is not None or message.result is None:
        error = message.error if isinstance(message.error, dict) else {"message": message.error}
        text = str(error.get("message") or error)
        # 14 UNAVAILABLE; 1 CANCELLED is what the gateway says while etcd shuts down
        # ("the client connection is closing"): both end this stream, not the watch
        if error.get("grpc_code", error.get("code")) in (None, 1, 14):
            raise StoreUnavailable(f"etcd watch: {text}")
        raise EtcdError(int(error.get("grpc_code", error.get("code", 0))), text)
    result = message.result
    if result.compact_revision:
        raise Compacted(result.compact_revision)
    if result.canceled:
        raise StoreUnavailable(f"etcd canceled the watch: {result.cancel_reason or 'no reason'}")
    return result


def _decode(answer: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(answer, type=kind, strict=False)
    except msgspec.DecodeError as exc:
        raise StoreError(f"etcd answered something unexpected: {answer[:200]!r}") from exc


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")  # a foreign non-UTF-8 key survives the trip
