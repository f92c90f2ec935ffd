"""Settings: read the environment (and CLI flags) once, cast, validate, hide secrets."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class Secret:
    """Hold a secret value that never appears in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret itself; call only where it is used."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


class ConfigError(ValueError):
    """A setting is missing or malformed."""


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _port_ranges(value: str) -> tuple[tuple[int, int], ...]:
    """Parse `50000-50199` (or several, comma-separated; `50000` is one port)."""
    ranges = []
    for part in _split(value):
        first, _, last = part.partition("-")
        try:
            ranges.append((int(first), int(last or first)))
        except ValueError:
            raise ValueError(f"{part!r} is not a port range like 50000-50199") from None
    return tuple(ranges)


def _addresses(value: str) -> tuple[str, ...]:
    """Parse comma-separated IP addresses (no host names: candidates carry addresses)."""
    parsed = []
    for part in _split(value):
        try:
            parsed.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address") from None
    return tuple(parsed)


def _check_port_ranges(ranges: tuple[tuple[int, int], ...]) -> None:
    for first, last in ranges:
        if not (1 <= first <= 65535 and 1 <= last <= 65535):
            raise ConfigError(f"ICE_PORT_RANGE: {first}-{last} is outside 1-65535")
        if first > last:
            raise ConfigError(f"ICE_PORT_RANGE: {first}-{last} is reversed (write {last}-{first})")
    ordered = sorted(ranges)
    for (a_first, a_last), (b_first, b_last) in zip(ordered, ordered[1:]):
        if b_first <= a_last:
            raise ConfigError(
                f"ICE_PORT_RANGE: {a_first}-{a_last} and {b_first}-{b_last} overlap"
            )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the server is configured by; built once at start-up."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./var")
    database_url: Secret | None = None  # None: embedded PostgreSQL in data_dir/pg
    redis_url: Secret | None = None
    jwt_secret: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 24 * 3600
    max_body_bytes: int = 1024 * 1024
    max_upload_bytes: int = 5 * 1024 * 1024
    login_attempts_per_minute: int = 10
    public_url: str = ""
    log_requests: bool = True
    # Payments: Stripe when a secret key is set, otherwise the offline provider.
    stripe_secret_key: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    stripe_webhook_secret: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    stripe_api_base: str = "https://api.stripe.com"
    stripe_publishable_key: str = ""
    hold_ttl_seconds: int = 600
    hold_sweep_seconds: float = 5.0  # how often expired holds are released
    stripe_max_network_retries: int = 2
    # Media: never a default STUN server (aiortc's built-in default is a public host).
    ice_servers: tuple[str, ...] = ()
    ice_host_addresses: tuple[str, ...] = ()  # empty: every non-loopback address
    # UDP ports ICE host candidates bind in (inclusive ranges); empty: any port.
    ice_port_ranges: tuple[tuple[int, int], ...] = ()
    # Addresses advertised instead of the bound ones (1:1 NAT): one for every host
    # address, or one per ICE_HOST_ADDRESSES entry in the same order.
    ice_announced_addresses: tuple[str, ...] = ()
    # TURN relays for clients (not used by the server itself), with credentials minted
    # per session from TURN_SECRET (coturn's use-auth-secret, the TURN REST API scheme).
    turn_urls: tuple[str, ...] = ()
    turn_secret: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    turn_credential_ttl: int = 24 * 3600
    max_viewers_per_room: int = 500
    remb_bitrate_bps: int = 2_500_000
    # Lower layers (0-2) the server encodes for single-layer publishers while viewers need them.
    simulcast_ladder: int = 0
    publisher_grace_seconds: float = 15.0  # a publisher gone this long: viewers see "paused"
    publisher_idle_timeout: float = 1800.0  # a show without a publisher this long ends
    # Realtime events: batching tick (0 sends every event on its own), chat limits,
    # and the prefix of every Redis key and channel (several deployments may share one).
    realtime_tick_ms: int = 100
    realtime_batching: bool = True
    realtime_adaptive: bool = True  # a quiet room's event leaves at once, not on the tick
    realtime_lean_datachannel: bool = True  # events DataChannels bypass aiortc's send path
    chat_rate_limit: int = 5
    chat_rate_window: int = 10
    redis_prefix: str = "shopstream:"
    # Public catalog/livestream reads are served from memory for at most this long;
    # every announced change (stock included) drops them at once. 0 turns the cache off.
    read_cache_seconds: float = 1.0
    # The database role the application's queries run as (RLS applies to it).
    db_app_role: str = "shopstream_app"
    # Connections the server keeps open (min) and may open (max) to PostgreSQL.
    db_pool_min: int = 2
    db_pool_max: int = 20
    # Origins (https://shop.example) whose pages may call the API, WHIP and WHEP; "*" any.
    cors_origins: tuple[str, ...] = ()
    # Scale-out (server/workers.py, signaling/cluster.py): server processes on this host
    # (0: one per core with REDIS_URL, else 1), this process's index among them, its
    # node id in the cluster (empty: derived), and where each worker's private port
    # starts (0: port + 1); the cluster reaches a worker at cluster_host:that port.
    workers: int = 0
    worker_index: int = 0
    node_id: str = ""
    worker_port_base: int = 0
    cluster_host: str = ""
    # Viewers a worker takes before it redirects new ones (307) to a less-loaded node; 0: never.
    max_node_viewers: int = 0

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from environment variables, then apply non-None overrides."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}

        def take(name: str, field: str, cast: Any = str) -> None:
            raw = env.get(name)
            if raw is None or raw == "":
                return
            try:
                values[field] = cast(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None

        take("SHOPSTREAM_HOST", "host")
        take("SHOPSTREAM_PORT", "port", int)
        take("SHOPSTREAM_DATA_DIR", "data_dir", Path)
        take("DATABASE_URL", "database_url", Secret)
        take("REDIS_URL", "redis_url", Secret)
        take("JWT_SECRET", "jwt_secret", Secret)
        take("ACCESS_TOKEN_TTL", "access_token_ttl", int)
        take("REFRESH_TOKEN_TTL", "refresh_token_ttl", int)
        take("MAX_BODY_BYTES", "max_body_bytes", int)
        take("MAX_UPLOAD_BYTES", "max_upload_bytes", int)
        take("LOGIN_ATTEMPTS_PER_MINUTE", "login_attempts_per_minute", int)
        take("PUBLIC_URL", "public_url")
        take("LOG_REQUESTS", "log_requests", lambda v: v.lower() not in ("0", "false", "no", "off"))
        take("STRIPE_SECRET_KEY", "stripe_secret_key", Secret)
        take("STRIPE_WEBHOOK_SECRET", "stripe_webhook_secret", Secret)
        take("STRIPE_API_BASE", "stripe_api_base")
        take("STRIPE_PUBLISHABLE_KEY", "stripe_publishable_key")
        take("HOLD_TTL_SECONDS", "hold_ttl_seconds", int)
        take("HOLD_SWEEP_SECONDS", "hold_sweep_seconds", float)
        take("STRIPE_MAX_NETWORK_RETRIES", "stripe_max_network_retries", int)
        take("ICE_SERVERS", "ice_servers", lambda v: tuple(_split(v)))
        take("ICE_HOST_ADDRESSES", "ice_host_addresses", _addresses)
        take("ICE_PORT_RANGE", "ice_port_ranges", _port_ranges)
        take("ICE_ANNOUNCED_ADDRESSES", "ice_announced_addresses", _addresses)
        take("TURN_URLS", "turn_urls", lambda v: tuple(_split(v)))
        take("TURN_SECRET", "turn_secret", Secret)
        take("TURN_CREDENTIAL_TTL", "turn_credential_ttl", int)
        take("MAX_VIEWERS_PER_ROOM", "max_viewers_per_room", int)
        take("REMB_BITRATE_BPS", "remb_bitrate_bps", int)
        take("SIMULCAST_LADDER", "simulcast_ladder", int)
        take("PUBLISHER_GRACE_SECONDS", "publisher_grace_seconds", float)
        take("PUBLISHER_IDLE_TIMEOUT", "publisher_idle_timeout", float)
        take("REALTIME_TICK_MS", "realtime_tick_ms", int)
        take("REALTIME_BATCHING", "realtime_batching", _bool)
        take("REALTIME_ADAPTIVE", "realtime_adaptive", _bool)
        take("REALTIME_LEAN_DATACHANNEL", "realtime_lean_datachannel", _bool)
        take("CHAT_RATE_LIMIT", "chat_rate_limit", int)
        take("CHAT_RATE_WINDOW", "chat_rate_window", int)
        take("REDIS_PREFIX", "redis_prefix")
        take("READ_CACHE_SECONDS", "read_cache_seconds", float)
        take("DB_APP_ROLE", "db_app_role")
        take("DB_POOL_MIN", "db_pool_min", int)
        take("DB_POOL_MAX", "db_pool_max", int)
        take("CORS_ORIGINS", "cors_origins", lambda v: tuple(_split(v)))
        take("SHOPSTREAM_WORKERS", "workers", int)
        take("SHOPSTREAM_WORKER_INDEX", "worker_index", int)
        take("NODE_ID", "node_id")
        take("WORKER_PORT_BASE", "worker_port_base", int)
        take("CLUSTER_HOST", "cluster_host")
        take("MAX_NODE_VIEWERS", "max_node_viewers", int)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigError for values the server cannot run with."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range")
        if self.access_token_ttl < 10:
            raise ConfigError("ACCESS_TOKEN_TTL must be at least 10 seconds")
        if self.max_body_bytes < 1024:
            raise ConfigError("MAX_BODY_BYTES must be at least 1024")
        if self.jwt_secret and len(self.jwt_secret.get()) < 32:
            raise ConfigError("JWT_SECRET must be at least 32 characters")
        if self.db_app_role and not self.db_app_role.replace("_", "").isalnum():
            raise ConfigError("DB_APP_ROLE must be a plain identifier")
        if not 1 <= self.db_pool_min <= self.db_pool_max:
            raise ConfigError("DB_POOL_MIN must be at least 1 and at most DB_POOL_MAX")
        if not 10 <= self.realtime_tick_ms <= 1000:
            raise ConfigError("REALTIME_TICK_MS must be between 10 and 1000")
        if not 0 <= self.read_cache_seconds <= 60:
            raise ConfigError("READ_CACHE_SECONDS must be between 0 and 60")
        if not 0 <= self.simulcast_ladder <= 2:
            raise ConfigError("SIMULCAST_LADDER must be 0 (off), 1 or 2")
        if self.chat_rate_limit < 1 or self.chat_rate_window < 1:
            raise ConfigError("CHAT_RATE_LIMIT and CHAT_RATE_WINDOW must be positive")
        for origin in self.cors_origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc
                                  or parts.path or parts.query):
                raise ConfigError(f"CORS_ORIGINS: {origin!r} must look like https://shop.example[:port]")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ConfigError(f"ICE server {url!r} must start with stun:, turn: or turns:")
        if self.workers < 0 or not 0 <= self.worker_index < max(self.workers, 1):
            raise ConfigError("SHOPSTREAM_WORKERS must be >= 1 and the worker index below it")
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                f"SHOPSTREAM_WORKERS={self.workers} needs REDIS_URL: the workers share rooms, "
                "chat and viewer counts through Redis (or run one worker)"
            )
        self._validate_ice()

    @property
    def worker_count(self) -> int:
        """Return how many server processes this host runs (the default: see `workers`)."""
        if self.workers:
            return self.workers
        return (os.cpu_count() or 1) if self.redis_url else 1

    @property
    def worker_port(self) -> int:
        """Return this worker's private port (relays reach it there; the shared port is random)."""
        if self.worker_count == 1:
            return self.port
        return (self.worker_port_base or self.port + 1) + self.worker_index

    @property
    def cluster_id(self) -> str:
        """Return this worker's node id: NODE_ID, else derived from PUBLIC_URL (or host:port)."""
        base = self.node_id or (urlsplit(self.public_url).netloc if self.public_url else "")
        base = base or f"{self.cluster_host or self.host}:{self.port}"
        return base if self.worker_count == 1 else f"{base}/w{self.worker_index}"

    @property
    def cluster_url(self) -> str:
        """Return the base URL other workers and nodes use to reach this worker."""
        host = self.cluster_host or (
            "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host)
        return f"http://{host}:{self.worker_port}"

    @property
    def worker_ice_port_ranges(self) -> tuple[tuple[int, int], ...]:
        """Return this worker's share of ICE_PORT_RANGE (each worker binds its own ports)."""
        count = self.worker_count
        if count == 1 or not self.ice_port_ranges:
            return self.ice_port_ranges
        ports = [p for first, last in self.ice_port_ranges for p in range(first, last + 1)]
        share = len(ports) // count
        if share < 1:
            raise ConfigError(f"ICE_PORT_RANGE: {len(ports)} ports cannot be split over {count} workers")
        mine = ports[self.worker_index * share:(self.worker_index + 1) * share]
        ranges: list[tuple[int, int]] = []
        for port in mine:  # consecutive ports back into ranges
            if ranges and ranges[-1][1] == port - 1:
                ranges[-1] = (ranges[-1][0], port)
            else:
                ranges.append((port, port))
        return tuple(ranges)

    def _validate_ice(self) -> None:
        # Each message names its setting: the server stops on it before binding anything.
        for name, addresses in (("ICE_HOST_ADDRESSES", self.ice_host_addresses),
                                ("ICE_ANNOUNCED_ADDRESSES", self.ice_announced_addresses)):
            try:
                _addresses(",".join(addresses))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        _check_port_ranges(self.ice_port_ranges)
        hosts, announced = len(self.ice_host_addresses), len(self.ice_announced_addresses)
        if announced > 1 and announced != hosts:
            raise ConfigError(
                f"ICE_ANNOUNCED_ADDRESSES: {announced} addresses for {hosts} ICE_HOST_ADDRESSES "
                "(give one address, or one per ICE_HOST_ADDRESSES entry in the same order)"
            )
        for url in self.turn_urls:
            if not url.startswith(("turn:", "turns:")):
                raise ConfigError(f"TURN_URLS: {url!r} must start with turn: or turns:")
        if self.turn_secret and not self.turn_urls:
            raise ConfigError("TURN_SECRET is set but TURN_URLS is empty: name the TURN server(s)")
        if self.turn_urls and not self.turn_secret:
            raise ConfigError("TURN_URLS needs TURN_SECRET (coturn's static-auth-secret)")
        if self.turn_credential_ttl < 60:
            raise ConfigError("TURN_CREDENTIAL_TTL must be at least 60 seconds")

    @property
    def ice_announced_pairs(self) -> tuple[tuple[str, str], ...]:
        """Return (bound address, advertised address) pairs; "*" binds any address."""
        if len(self.ice_announced_addresses) == 1:
            return (("*", self.ice_announced_addresses[0]),)
        return tuple(zip(self.ice_host_addresses, self.ice_announced_addresses))

    def with_jwt_secret_from_data_dir(self) -> Settings:
        """Return settings whose JWT secret is the one kept in the data folder.

        Without JWT_SECRET the server generates a secret once and keeps it in
        `data_dir/jwt_secret` (mode 0600), so tokens survive restarts and no
        secret is ever hard-coded.
        """
        if self.jwt_secret:
            return self
        path = self.data_dir / "jwt_secret"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
        return dataclasses.replace(self, jwt_secret=Secret(path.read_text().strip()))
