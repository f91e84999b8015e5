"""Typed settings: built-in defaults, then ``config.toml``, then the environment.

Every key has a default here and is documented in the repository's ``config.toml``.
Environment overrides use ``RELAY__SECTION__KEY`` (values parsed as TOML scalars or
arrays when they parse, else taken as strings), plus the conventional names
``DATABASE_URL``, ``REDIS_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` and
``RELAY_OPERATOR_TOKEN``.

Validation happens once, at start-up, and fails with a message that names the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Dialect = Literal["ga", "beta"]


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range. The message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Where the relay keeps its embedded database and other local state.
    data_dir: str = ".relay"
    # Request bodies above this many bytes are refused with 413.
    max_body_bytes: int = 65536
    log_level: str = "INFO"
    # "text" (human readable stage lines) or "json" (one object per line, for production).
    log_format: Literal["text", "json"] = "text"
    # Bearer token for operator endpoints; empty means "generate one at start and print it".
    operator_token: str = field(default="", repr=False)
    # SIGTERM: refuse new sessions, wait this long for live ones, then hang them up.
    drain_timeout_s: float = 30.0
    # Seconds advertised in Retry-After while draining.
    drain_retry_after_s: int = 30
    # Create a demo user on first start and print its token (local runs).
    create_demo_user: bool = True


@dataclass(frozen=True)
class DatabaseConfig:
    # Empty: start an embedded PostgreSQL under server.data_dir.
    url: str = field(default="", repr=False)
    pool_min_size: int = 2
    pool_max_size: int = 10
    # Per-query timeout (the incident's 2 s was too tight for a cold pool).
    query_timeout_s: float = 8.0
    connect_timeout_s: float = 5.0
    # Retries after the first attempt, on connection errors and timeouts only.
    retries: int = 2
    backoff_base_s: float = 0.25
    backoff_max_s: float = 2.0
    # Keep-warm ping interval for idle pooled connections.
    keepalive_interval_s: float = 30.0
    # Retry-After (seconds) on a 503 caused by the database.
    retry_after_s: int = 5


@dataclass(frozen=True)
class CacheConfig:
    # Empty: the in-process cache only.
    redis_url: str = field(default="", repr=False)
    key_prefix: str = "relay:"
    # TTL of a cached known user.
    hit_ttl_s: int = 300
    # Short TTL of a cached unknown token, so a brute force does not reach PostgreSQL.
    miss_ttl_s: int = 30
    # The in-process fallback cache: bounded, TTL'd.
    local_max_entries: int = 10000
    local_ttl_s: int = 60
    # Any Redis call slower than this counts as a failure.
    redis_timeout_s: float = 0.25
    # Consecutive Redis failures that open the breaker, and how long it stays open.
    breaker_failure_threshold: int = 3
    breaker_open_s: float = 15.0


@dataclass(frozen=True)
class LimitsConfig:
    per_user_concurrent_sessions: int = 2
    # Session requests per user per minute (sliding window).
    per_user_requests_per_minute: int = 10
    # Sessions (pending, connecting, active) this instance accepts at once.
    global_max_sessions: int = 200
    retry_after_s: int = 10
    # Interview seconds a user must still have to start a session.
    min_remaining_seconds: int = 1


@dataclass(frozen=True)
class UpstreamConfig:
    dialect: Dialect = "ga"
    # Empty: use the built-in simulator as the upstream.
    api_key: str = field(default="", repr=False)
    base_url: str = "https://api.openai.com/v1"
    # Empty: the dialect's default (ga: gpt-realtime, beta: gpt-4o-realtime-preview-2024-12-17).
    model: str = ""
    voice: str = "marin"
    instructions: str = (
        "You are a friendly, professional interviewer. Ask one question at a time, "
        "listen to the answer, and follow up briefly."
    )
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    transcription_model: str = "gpt-4o-mini-transcribe"
    # Lifetime of the minted ephemeral secret.
    secret_ttl_s: int = 600
    mint_timeout_s: float = 20.0
    sdp_timeout_s: float = 20.0
    hangup_timeout_s: float = 5.0
    # Retries of a mint answered 429/5xx (Retry-After honoured, capped by retry_after_max_s).
    mint_retries: int = 2
    backoff_base_s: float = 0.5
    retry_after_max_s: float = 5.0


@dataclass(frozen=True)
class SessionConfig:
    # A minted session must be exchanged within this many seconds, once.
    pending_ttl_s: int = 60
    # Both legs connected within this many seconds of the exchange, or the session fails.
    connect_timeout_s: float = 15.0
    # No media on either leg for this long ends the session.
    idle_media_timeout_s: float = 30.0
    # Hard cap per interview; the user's remaining seconds may cut it shorter.
    max_duration_s: int = 3600
    # Bound on waiting for ICE gathering while answering or offering.
    ice_gather_timeout_s: float = 5.0
    # Max bytes of an SDP offer.
    max_sdp_bytes: int = 20000


@dataclass(frozen=True)
class IceServerConfig:
    urls: tuple[str, ...] = ()
    username: str = ""
    credential: str = field(default="", repr=False)


@dataclass(frozen=True)
class IceConfig:
    # STUN/TURN servers used by the relay's peers and offered to the browser.
    # Empty: host candidates only (never aiortc's implicit public STUN server).
    servers: tuple[IceServerConfig, ...] = ()
    # Addresses gathered as host candidates. Empty: every address of the machine.
    host_addresses: tuple[str, ...] = ("127.0.0.1",)


@dataclass(frozen=True)
class EventsConfig:
    # Browser data-channel event types forwarded upstream; anything else is refused.
    # session.update is always refused, whatever this says.
    browser_allowed: tuple[str, ...] = ("response.cancel", "output_audio_buffer.clear")
    # Max size of one browser data-channel message.
    max_message_bytes: int = 16384


@dataclass(frozen=True)
class MediaConfig:
    # Frames held by each forwarding queue; beyond this the oldest is dropped and counted.
    queue_max_frames: int = 50
    # Opus passthrough forwards packets socket to socket (relay.media.fastpath) instead
    # of through aiortc's receiver and sender; false: aiortc's path.
    fast_path: bool = True


@dataclass(frozen=True)
class Settings:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    ice: IceConfig = field(default_factory=IceConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    media: MediaConfig = field(default_factory=MediaConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    def replace(self, section: str, **changes: Any) -> Settings:
        """A copy with some keys of one section changed (tests and the CLI use this)."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **changes)})


DEFAULT_MODELS: dict[str, str] = {
    "ga": "gpt-realtime",
    "beta": "gpt-4o-realtime-preview-2024-12-17",
}

_CONVENTIONAL_ENV: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "url"),
    "REDIS_URL": ("cache", "redis_url"),
    "OPENAI_API_KEY": ("upstream", "api_key"),
    "OPENAI_BASE_URL": ("upstream", "base_url"),
    "RELAY_OPERATOR_TOKEN": ("server", "operator_token"),
}


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then the TOML file (if any), then the environment; validated."""
    env = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{file}: [{section}] must be a table")
            raw.setdefault(section, {}).update(values)
    for name, (section, key) in _CONVENTIONAL_ENV.items():
        if env.get(name):
            raw.setdefault(section, {})[key] = env[name]
    for name, value in env.items():
        if not name.startswith("RELAY__"):
            continue
        parts = name[len("RELAY__") :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{name}: expected RELAY__SECTION__KEY")
        raw.setdefault(parts[0], {})[parts[1]] = _parse_env_value(value)
    settings: Settings = _build(Settings, raw, "")
    validate(settings)
    return settings


def _parse_env_value(value: str) -> Any:
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _build(cls: type[Any], raw: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"unknown setting {where}{name}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a table")
        return _build(hint, value, f"{key}.")  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list")
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unsupported type")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from exc
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from exc
    if hint is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {hint!r}")


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value}")


def validate(s: Settings) -> None:
    """Range and consistency checks; raises ConfigError naming the key."""
    if not 0 <= s.server.port <= 65535:
        raise ConfigError(f"server.port: {s.server.port} is not a TCP port")
    for key, value in (
        ("server.max_body_bytes", s.server.max_body_bytes),
        ("database.query_timeout_s", s.database.query_timeout_s),
        ("database.connect_timeout_s", s.database.connect_timeout_s),
        ("database.pool_max_size", s.database.pool_max_size),
        ("cache.hit_ttl_s", s.cache.hit_ttl_s),
        ("cache.miss_ttl_s", s.cache.miss_ttl_s),
        ("cache.local_max_entries", s.cache.local_max_entries),
        ("cache.redis_timeout_s", s.cache.redis_timeout_s),
        ("upstream.mint_timeout_s", s.upstream.mint_timeout_s),
        ("upstream.sdp_timeout_s", s.upstream.sdp_timeout_s),
        ("session.connect_timeout_s", s.session.connect_timeout_s),
        ("session.max_duration_s", s.session.max_duration_s),
        ("media.queue_max_frames", s.media.queue_max_frames),
    ):
        _positive(key, value)
    if s.database.retries < 0:
        raise ConfigError("database.retries: must be >= 0")
    if s.database.pool_min_size > s.database.pool_max_size:
        raise ConfigError("database.pool_min_size: larger than database.pool_max_size")
    if not 0.0 < s.upstream.vad_threshold < 1.0:
        raise ConfigError(
            f"upstream.vad_threshold: must be in (0, 1), got {s.upstream.vad_threshold}"
        )
    if not 10 <= s.upstream.secret_ttl_s <= 7200:
        raise ConfigError("upstream.secret_ttl_s: must be within 10..7200 (OpenAI's bounds)")
    if s.upstream.base_url and not s.upstream.base_url.startswith(("http://", "https://")):
        # The value itself is not echoed: a URL may carry credentials.
        raise ConfigError("upstream.base_url: not an http(s) URL")
    if "session.update" in s.events.browser_allowed:
        raise ConfigError("events.browser_allowed: session.update can never be allowed")
    for i, server in enumerate(s.ice.servers):
        for url in server.urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ConfigError(f"ice.servers[{i}].urls: {url!r} is not a stun:/turn: URL")


def model_for(upstream: UpstreamConfig) -> str:
    """The configured model, or the dialect's default."""
    return upstream.model or DEFAULT_MODELS[upstream.dialect]
