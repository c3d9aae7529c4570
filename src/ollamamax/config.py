"""Layered configuration: defaults < TOML file < ``OLLAMAMAX_*`` environment < CLI flags.

The result is typed, validated and frozen. Environment variables name a section and a key:
``OLLAMAMAX_GATEWAY_LISTEN=127.0.0.1:8080``, ``OLLAMAMAX_NODE_NUM_PARALLEL=2``; list values
are comma-separated. Cross-field rules are checked at load and refused with a sentence that
says why.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ollamamax.errors import ConfigError

ENV_PREFIX = "OLLAMAMAX_"


def _positive(section: Any, *fields: str) -> None:
    for name in fields:
        if getattr(section, name) <= 0:
            raise ValueError(f"{name} must be > 0")


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class GatewayConfig(_Section):
    listen: str = "127.0.0.1:11434"
    backends: tuple[str, ...] = ()
    health_interval: float = 1.0  # seconds between active health checks of each node
    health_timeout: float = 1.0
    unhealthy_after: int = 2  # consecutive failed checks that mark a node down
    healthy_after: int = 1  # consecutive good checks that mark it up again
    connect_timeout: float = 2.0
    ttft_timeout: float = 300.0  # until the first byte; a cold model load counts here
    idle_timeout: float = 120.0  # between two chunks of a stream
    total_timeout: float = 0.0  # from arrival to the last byte, retries included; 0: no limit
    drain_timeout: float = 30.0  # on SIGTERM: how long in-flight requests may still run
    max_attempts: int = 3  # nodes tried for one request before giving up
    max_body_bytes: int = 64 << 20
    flags_file: str = ""  # feature flag settings survive restarts here ("": in memory only)

    def __post_init__(self) -> None:
        _positive(self, "health_interval", "health_timeout", "connect_timeout", "ttft_timeout",
                  "idle_timeout", "max_attempts", "max_body_bytes", "unhealthy_after",
                  "healthy_after")
        if self.total_timeout < 0 or self.drain_timeout < 0:
            raise ValueError("gateway.total_timeout and gateway.drain_timeout must be >= 0")
        if self.health_timeout > self.health_interval * 5:
            raise ValueError("gateway.health_timeout must not exceed 5 x health_interval, "
                             "or a dead node would be noticed long after it died")


class NodeConfig(_Section):
    listen: str = "127.0.0.1:11435"
    id: str = ""  # default: "<hostname>-<port>"
    advertise_url: str = ""  # what gateways should call; default: http://<listen>
    labels: tuple[str, ...] = ()  # published in the node's cluster record (requests may require them)
    engine: str = "llamacpp"
    engine_url: str = "http://127.0.0.1:11434"  # the stock Ollama behind the `ollama` engine
    models_dir: str = "~/.ollamamax/models"
    num_parallel: int = 1  # requests served at once per loaded model (OLLAMA_NUM_PARALLEL)
    max_loaded: int = 3  # models resident at once (OLLAMA_MAX_LOADED_MODELS)
    max_queue: int = 512  # waiting requests before 503 (OLLAMA_MAX_QUEUE)
    keep_alive: float = 300.0  # seconds a model stays loaded after its last request
    num_ctx: int = 4096  # context per request slot
    threads: int = 1  # llama.cpp threads per model
    sim_profile: str = "cpu-small"
    sim_speed: float = 1.0  # >1 compresses simulated time
    sim_models: tuple[str, ...] = ()  # extra simulated models, "name:tag=size_bytes"
    seed: int = 0  # seeds the sim engine's output; llama.cpp samples afresh per request, as Ollama
    drain_timeout: float = 30.0  # on SIGTERM: how long the node's own requests may still run

    def __post_init__(self) -> None:
        _positive(self, "num_parallel", "max_loaded", "num_ctx", "threads", "sim_speed")
        if self.max_queue < 0:
            raise ValueError("node.max_queue must be >= 0")
        if self.drain_timeout < 0:
            raise ValueError("node.drain_timeout must be >= 0")


class SchedulerConfig(_Section):
    strategy: str = "intelligent"
    queue: bool = True  # hold requests at the gateway while every slot is busy (late binding)
    max_waiting: int = 1024  # requests held at once before 503
    max_waiting_per_key: int = 256  # per API key before 429
    prewarm: bool = False  # load models ahead of their forecast demand (docs/routing.md)
    prewarm_interval: float = 5.0  # seconds between two prewarm plans

    def __post_init__(self) -> None:
        _positive(self, "max_waiting", "max_waiting_per_key", "prewarm_interval")


class ResilienceConfig(_Section):
    """Outlier detection, circuit breakers, the retry budget and hedging (docs/resilience.md)."""

    consecutive_failures: int = 5  # failures in a row that eject a node (Envoy's default)
    base_ejection: float = 30.0  # seconds; the n-th ejection lasts n times as long
    max_ejection: float = 300.0
    max_ejected_share: float = 0.1  # of the nodes out at once (one may always be)
    panic_threshold: float = 0.5  # fewer routable than this share: ejections are lifted
    retry_budget: float = 0.2  # extra attempts, as a share of recent requests
    retry_budget_min: int = 10  # extra attempts always allowed per window
    retry_budget_window: float = 10.0  # seconds
    hedge: bool = False  # second copy of a non-streamed request after the node's p95
    hedge_min_delay: float = 0.05  # never hedge sooner than this (seconds)

    def __post_init__(self) -> None:
        _positive(self, "consecutive_failures", "base_ejection", "retry_budget_window")
        if self.base_ejection > self.max_ejection:
            raise ValueError("resilience.base_ejection must not exceed max_ejection")
        for name in ("max_ejected_share", "panic_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"resilience.{name} is a share between 0 and 1")
        if self.retry_budget < 0 or self.retry_budget_min < 0 or self.hedge_min_delay < 0:
            raise ValueError("resilience.retry_budget, retry_budget_min and hedge_min_delay "
                             "must be >= 0")


class ClusterConfig(_Section):
    """Cluster mode: the coordination store, membership and LAN discovery (docs/cluster.md)."""

    store: str = "embedded"  # "etcd": nodes register there and gateways watch it
    etcd_endpoints: tuple[str, ...] = ()
    etcd_ca_file: str = ""
    etcd_cert_file: str = ""
    etcd_key_file: str = ""
    prefix: str = "ollamamax/"
    lease_ttl: int = 5  # seconds a node's keys outlive its last keep-alive (sent every TTL/3)
    telemetry_interval: float = 2.0  # a node writes its telemetry at most this often
    discovery: bool = False  # zeroconf: nodes advertise themselves, gateways browse the LAN
    discovery_service: str = "_ollamamax._tcp"  # browsed by gateways besides _ollama._tcp
    discovery_interfaces: tuple[str, ...] = ()  # IPv4 addresses mDNS uses; empty: all

    def __post_init__(self) -> None:
        _positive(self, "lease_ttl", "telemetry_interval")
        if self.store not in ("embedded", "etcd"):
            raise ValueError("cluster.store must be 'embedded' or 'etcd'")
        if (self.store == "etcd") != bool(self.etcd_endpoints):
            raise ValueError("cluster.store = 'etcd' and cluster.etcd_endpoints go together "
                             "(the --etcd URLS flag sets both)")
        if not self.prefix.endswith("/"):
            raise ValueError("cluster.prefix must end with '/'")
        if self.etcd_key_file and not self.etcd_cert_file:
            raise ValueError("cluster.etcd_key_file needs cluster.etcd_cert_file")
        if not self.discovery_service.endswith(("._tcp", "._udp")):
            raise ValueError("cluster.discovery_service must look like _name._tcp")


class LogConfig(_Section):
    level: str = "info"
    format: str = "text"

    def __post_init__(self) -> None:
        if self.format not in ("text", "json"):
            raise ValueError("log.format must be 'text' or 'json'")
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log.level must be debug, info, warning or error")


class AlertRuleConfig(_Section):
    """``[alerts.rules.NAME]``: what is given replaces the rule's default (docs/metrics.md)."""

    warning: float | None = None
    critical: float | None = None
    for_: float | None = msgspec.field(default=None, name="for")  # seconds
    enabled: bool | None = None


class AlertsConfig(_Section):
    """In-process alert rules, their notifications and the dashboard's sampling."""

    enabled: bool = True  # evaluate the rules (the dashboard samples either way)
    interval: float = 1.0  # seconds between two samples and evaluations
    window: float = 60.0  # seconds that percentiles, rates and the error rate cover
    webhooks: tuple[str, ...] = ()  # URLs that get each change as JSON (POST)
    webhook_timeout: float = 5.0
    webhook_retries: int = 3  # after the first attempt, waiting 0.5 s, 1 s, 2 s, ...
    rules: dict[str, AlertRuleConfig] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive(self, "interval", "window", "webhook_timeout")
        if self.webhook_retries < 0:
            raise ValueError("alerts.webhook_retries must be >= 0")
        for url in self.webhooks:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"alerts.webhooks: {url!r} is not an http(s) URL")
        from ollamamax.alerts import rules_from

        rules_from(self.rules)  # unknown names and warning > critical are refused here


class SecurityConfig(_Section):
    """API keys, rate limits, the cluster token and TLS (SECURITY.md)."""

    cluster_token: str = ""  # shared secret between gateways and nodes, and between nodes
    cluster_token_file: str = ""  # the same, read from a file (first line)
    keys_file: str = ""  # the gateway's API keys, hashed (`ollamamax keys`); "": no keys, open
    keys_reload_interval: float = 2.0  # seconds between checks of the keys file for changes
    open_metrics: bool = False  # with keys: /metrics without a key (else an admin key)
    tls_cert_file: str = ""  # this process's certificate (PEM): its listener speaks https
    tls_key_file: str = ""  # the certificate's private key (PEM)
    tls_client_ca_file: str = ""  # a node requires client certificates signed by this CA (mTLS)
    tls_ca_file: str = ""  # CA that signs the nodes' certificates ("": the system's)
    tls_client_cert_file: str = ""  # the certificate a gateway presents to mTLS nodes
    tls_client_key_file: str = ""  # its private key

    def __post_init__(self) -> None:
        if self.cluster_token and self.cluster_token_file:
            raise ValueError("security.cluster_token and security.cluster_token_file are exclusive")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("security.tls_cert_file and security.tls_key_file go together")
        if bool(self.tls_client_cert_file) != bool(self.tls_client_key_file):
            raise ValueError("security.tls_client_cert_file and tls_client_key_file go together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("security.tls_client_ca_file (mutual TLS) needs tls_cert_file and "
                             "tls_key_file: client certificates are only asked for over TLS")
        _positive(self, "keys_reload_interval")

    def token(self) -> str:
        """The cluster token ("" when none is configured)."""
        if self.cluster_token_file:
            from pathlib import Path

            try:
                return Path(self.cluster_token_file).expanduser().read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise ConfigError(f"security.cluster_token_file: cannot read a token: {exc}") from None
        return self.cluster_token


class CacheConfig(_Section):
    """The response cache's tiers (docs/cache.md)."""

    # tiers by name, fastest first; () turns the cache off. The catalogue's sizes (L1 100 MB,
    # L2 1 GB, L3 10 GB) are the defaults; its TTLs (1 ms, 1 min, 1 h) are not: an answer is
    # keyed by its model's digest and dropped when the model changes, so it stays valid longer.
    tiers: tuple[str, ...] = ("memory",)
    embeddings: bool = True  # embeddings are deterministic: cached unless this is false
    generations: bool = False  # temperature-0 seeded generations cached without the header opt-in
    max_entry_bytes: int = 8 << 20  # larger answers are not recorded
    memory_max_bytes: int = 100 << 20
    memory_ttl: float = 3600.0  # seconds; 0: until evicted or invalidated
    disk_dir: str = "~/.cache/ollamamax/responses"
    disk_max_bytes: int = 1 << 30
    disk_ttl: float = 86400.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "ollamamax:cache:"
    redis_max_bytes: int = 10 << 30
    redis_ttl: float = 86400.0

    def __post_init__(self) -> None:
        from ollamamax.cache import tier_class

        for name in self.tiers:
            tier_class(name)  # an unknown name is refused with the valid ones
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError("cache.tiers names a tier twice")
        _positive(self, "max_entry_bytes", "memory_max_bytes", "disk_max_bytes", "redis_max_bytes")
        if min(self.memory_ttl, self.disk_ttl, self.redis_ttl) < 0:
            raise ValueError("cache TTLs must be >= 0 (0: no expiry)")


class SyncConfig(_Section):
    """Peer-to-peer model sync: blob service, transfers, placement (docs/sync.md)."""

    chunk_size: int = 8 << 20  # bytes per verified chunk of a blob transfer
    upload_mbps: float = 0.0  # this node's blob uploads, MB/s (10^6 bytes); 0: unlimited
    download_mbps: float = 0.0  # this node's blob downloads, MB/s; 0: unlimited
    max_sources: int = 4  # holders one transfer downloads from at once
    registry: str = "https://registry.ollama.ai"  # where `models pull` and /api/pull fetch from
    pull_parts: int = 16  # parallel ranged parts per blob of a registry pull (Ollama's 16)
    stall_timeout: float = 30.0  # seconds without a byte before a pull part is retried
    replicas: int = 1  # placement: copies of a model without a desired record (1: no replication)
    plan_interval: float = 1.0  # seconds between two passes of the elected sync planner
    scan_interval: float = 2.0  # seconds between two scans of the node's store for changed models
    parallel_assignments: int = 2  # models one node fetches and installs at once

    def __post_init__(self) -> None:
        _positive(self, "chunk_size", "max_sources")
        _positive(self, "pull_parts", "stall_timeout")
        _positive(self, "replicas", "plan_interval", "scan_interval", "parallel_assignments")
        if not self.registry.startswith(("http://", "https://")):
            raise ValueError("sync.registry must be an http(s) URL")
        if self.upload_mbps < 0 or self.download_mbps < 0:
            raise ValueError("sync.upload_mbps and sync.download_mbps must be >= 0 (0: unlimited)")


class Config(_Section):
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    node: NodeConfig = msgspec.field(default_factory=NodeConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    resilience: ResilienceConfig = msgspec.field(default_factory=ResilienceConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    cache: CacheConfig = msgspec.field(default_factory=CacheConfig)
    sync: SyncConfig = msgspec.field(default_factory=SyncConfig)


SECTIONS: dict[str, type[_Section]] = {
    "gateway": GatewayConfig, "node": NodeConfig, "scheduler": SchedulerConfig, "log": LogConfig,
    "resilience": ResilienceConfig, "cluster": ClusterConfig, "alerts": AlertsConfig,
    "security": SecurityConfig, "cache": CacheConfig, "sync": SyncConfig,
}


def load(
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration. `overrides` maps ``"section.key"`` to values from flags."""
    env = os.environ if env is None else env
    layers: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    path = file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        _merge(layers, _read_file(Path(path)), source=str(path))
    _merge(layers, _from_env(env), source="environment")
    _merge(layers, _from_dotted(overrides or {}), source="flags")
    try:
        return msgspec.convert(layers, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _from_env(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        section, _, key = var[len(ENV_PREFIX):].lower().partition("_")
        struct = SECTIONS.get(section)
        if struct is None or key not in struct.__struct_fields__:
            continue  # other OLLAMAMAX_* variables (e.g. OLLAMAMAX_GATEWAY for clients)
        default = getattr(struct(), key)
        out.setdefault(section, {})[key] = (
            tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(default, tuple) else value
        )
    return out


def _from_dotted(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        if value is None:
            continue  # a flag not given
        section, _, key = dotted.partition(".")
        out.setdefault(section, {})[key] = value
    return out


def _merge(layers: dict[str, dict[str, Any]], new: Mapping[str, Any], source: str) -> None:
    for section, values in new.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]; "
                              f"valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table")
        layers[section].update(values)


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:11434"`` -> ``("127.0.0.1", 11434)``; ``":0"`` binds 127.0.0.1."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen address {listen!r} must look like HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback_url(url: str) -> bool:
    """True when `url` names this machine (localhost or a loopback address): no proxy from
    the environment should stand between us and it."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
