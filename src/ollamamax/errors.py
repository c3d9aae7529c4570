"""The exceptions of OllamaMax, in one tree.

    OllamaMaxError
    ├── ConfigError               bad configuration; the message says which value and why
    ├── RequestError              the client's fault: a 4xx answer (``status``)
    │   ├── BadRequest            400: malformed JSON, wrong types, missing fields
    │   ├── ModelNotFound         404: no node has the model
    │   ├── PayloadTooLarge       413: body over the configured cap
    │   └── NotFound              404: unknown path or object
    ├── Unavailable               503: nothing can serve now (all nodes down)
    ├── QueueFull (scheduler.queue)  503 / 429 with Retry-After: admission control refused
    ├── UpstreamError             a node failed *before the first byte*: retryable elsewhere
    │   ├── UpstreamConnectError  could not connect / connection dropped before an answer
    │   │   └── UpstreamRefused   no connection could be opened at all (the node is down)
    │   ├── UpstreamTimeout       connect or first-token timeout
    │   └── UpstreamStatus        the node answered 5xx (or 404 for a model it should have)
    ├── StreamBroken              a node failed *after* the first byte: not retryable, the
    │   │                         stream ends with an error chunk
    │   └── StreamStopped         the gateway itself ended it (total timeout, shutdown)
    ├── EngineError               an engine failed inside a node: 500 unless a subclass says
    │   └── EngineOverloaded      503: the node's queue is full
    └── StoreError                the coordination store (``cluster``) refused or failed a call
        ├── StoreUnavailable      no endpoint answered in time: retryable (a write may have
        │                         been applied or not)
        ├── LeaseNotFound         the lease expired or was revoked: grant a new one
        └── Compacted             a watch asked for history the store no longer keeps: re-list
                                  from ``compact_revision`` on

`api.errors` is the one place that turns these into HTTP answers in Ollama's
``{"error": "..."}`` shape. Retryable and fatal failures are different types so the request
path never has to inspect messages.
"""

from __future__ import annotations


class OllamaMaxError(Exception):
    """Base of every error OllamaMax raises on purpose."""

    status = 500
    headers: dict[str, str] = {}  # extra response headers (e.g. Retry-After); never mutated

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class ConfigError(OllamaMaxError):
    """A configuration value is missing, malformed or inconsistent with another."""


class RequestError(OllamaMaxError):
    status = 400


class BadRequest(RequestError):
    status = 400


class ModelNotFound(RequestError):
    status = 404

    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found")
        self.model = model


class NotFound(RequestError):
    status = 404


class PayloadTooLarge(RequestError):
    status = 413


class Unauthorized(RequestError):
    """No credentials, or wrong ones (401)."""

    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(RequestError):
    """Valid credentials that do not allow this (403)."""

    status = 403


class Unavailable(OllamaMaxError):
    status = 503


class UpstreamError(OllamaMaxError):
    """A node failed before it sent the first byte; the request may go to another node."""

    status = 502

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(f"node {node}: {reason}")
        self.node = node
        self.reason = reason


class UpstreamConnectError(UpstreamError):
    pass


class UpstreamRefused(UpstreamConnectError):
    """Nothing was sent: the connection was refused or could not be opened in time."""


class UpstreamTimeout(UpstreamError):
    status = 504


class UpstreamStatus(UpstreamError):
    def __init__(self, node: str, status: int, body: bytes) -> None:
        super().__init__(node, f"HTTP {status}: {_short(body)}")
        self.upstream_status = status
        self.body = body


class StreamBroken(OllamaMaxError):
    """A node failed after the first byte reached the client; the stream ends with an error."""

    status = 502


class StreamStopped(StreamBroken):
    """The gateway ended a stream after its first byte (the request's total timeout, or the
    drain deadline of a shutdown): not the node's fault."""


class EngineError(OllamaMaxError):
    status = 500


class EngineOverloaded(EngineError):
    status = 503


class StoreError(OllamaMaxError):
    """The coordination store failed a call; the subclasses are the cases callers act on."""

    status = 503


class StoreUnavailable(StoreError):
    """No endpoint answered in time; retryable. Whether a write was applied is unknown."""


class LeaseNotFound(StoreError):
    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease:x} not found (expired or revoked)")
        self.lease = lease


class Compacted(StoreError):
    """The revision a watch starts from was compacted away: list again, then watch from
    ``compact_revision``."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; the oldest kept is {compact_revision}")
        self.compact_revision = compact_revision


def _short(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."
