"""TLS contexts from `[security]`: what a listener serves, what a gateway trusts.

Listeners (gateway and node) speak https when `tls_cert_file` and `tls_key_file` are set; a
node with `tls_client_ca_file` also requires a client certificate signed by that CA (mutual
TLS) before a single byte of HTTP. Clients of nodes (the gateway, nodes calling nodes) verify
https nodes against `tls_ca_file` (the system's CAs when empty) and present
`tls_client_cert_file` when set. TLS 1.2 is the floor.
"""

from __future__ import annotations

import ssl

from ollamamax.config import SecurityConfig
from ollamamax.errors import ConfigError


def server_context(config: SecurityConfig, mutual: bool = False) -> ssl.SSLContext | None:
    """The listener's context (None: plain http). `mutual`: this listener honours
    `tls_client_ca_file` (nodes do; a gateway's clients use API keys instead)."""
    if not config.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, config.tls_cert_file, config.tls_key_file, "tls_cert_file")
    if mutual and config.tls_client_ca_file:
        _load_ca(ctx, config.tls_client_ca_file, "tls_client_ca_file")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(config: SecurityConfig) -> ssl.SSLContext:
    """The context for calling https nodes: verify them, present a client certificate if
    configured."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_ca_file:
        _load_ca(ctx, config.tls_ca_file, "tls_ca_file")
    if config.tls_client_cert_file:
        _load_chain(ctx, config.tls_client_cert_file, config.tls_client_key_file,
                    "tls_client_cert_file")
    return ctx


def wants_client_context(config: SecurityConfig) -> bool:
    """Whether calls to nodes need a context of our own (else the defaults serve https)."""
    return bool(config.tls_ca_file or config.tls_client_cert_file)


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, name: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"security.{name}: cannot load {cert} with its key: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None


def _load_ca(ctx: ssl.SSLContext, path: str, name: str) -> None:
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"security.{name}: cannot load CA {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
