"""Typed, bounded settings: built-in defaults, then ``config.toml``, then the environment.

Every key has a default here and is documented in the repository's ``config.toml``
(a unit test checks they match). Validation is pydantic's, once, at start-up: each
numeric key carries its bounds (``Field(ge=..., le=...)``) and a failure raises
``ConfigError`` whose message names the key (``limits.per_user_requests_per_minute``).

Environment overrides (read by pydantic-settings): ``RELAY__SECTION__KEY``, e.g.
``RELAY__SERVER__PORT=9090``; list values are JSON
(``RELAY__ICE__HOST_ADDRESSES='["127.0.0.1"]'``). The conventional names
``DATABASE_URL``, ``REDIS_URL``, ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
``RELAY_OPERATOR_TOKEN`` and ``RELAY_TURN_SECRET`` are read too; ``RELAY__...`` wins over them.
Any of these names with ``_FILE`` appended (``OPENAI_API_KEY_FILE``,
``RELAY__CLUSTER__STATE_KEY_FILE``) names a file holding the value instead, as Docker's and
Kubernetes' secrets are mounted; setting both is an error.

Every section is a frozen model; add a key as one line, ``name: type = default``, with
``Annotated[int, Field(ge=1)]`` (or ``le``/``gt``) for its bounds.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

# pydantic-settings' own environment parser (pinned version): used to parse the mapping
# load_settings is given exactly as its EnvSettingsSource parses os.environ.
from pydantic_settings.sources.utils import parse_env_vars

Dialect = Literal["ga", "beta"]

ENV_PREFIX = "RELAY__"

# The shortest operator token accepted (``secrets.token_urlsafe(24)`` and longer qualify).
MIN_SECRET_CHARS = 32


# A network of server.trusted_proxies (relay.web.forwarded matches peers against them).
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(value: object) -> object:
    """``10.0.0.0/8``, ``172.30.0.5`` (one address), ``fd00::/8``; host bits may be set."""
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"not a network or address: {exc}") from None
    return value


ProxyNetwork = Annotated[Network, BeforeValidator(_network)]

# A web origin: http(s), a host name or an IP literal (IPv6 in brackets), an optional port.
_ORIGIN = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


# Keys a value may still be sealed with besides the current one (each is tried in turn).
MAX_PREVIOUS_STATE_KEYS = 8
STATE_KEY_BYTES = 32


def _state_key_problem(text: str) -> str | None:
    """Why ``text`` is not a state key (base64 of 32 bytes), never quoting it."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return f"not base64 of {STATE_KEY_BYTES} bytes (generate one: relay state-key generate)"
    if len(key) != STATE_KEY_BYTES:
        return (
            f"must decode to {STATE_KEY_BYTES} bytes, got {len(key)} "
            "(generate one: relay state-key generate)"
        )
    return None


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range. The message names the key."""


class _Section(BaseModel):
    # Frozen (settings never change after start) and strict about unknown keys (typos).
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    # 0: any free port (tests).
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # Where the relay keeps its embedded database and other local state.
    data_dir: str = ".relay"
    # Request bodies above this many bytes are refused with 413.
    max_body_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 65536
    # A connection must deliver a request line and headers within this many seconds of
    # opening or of its previous response (so an idle keep-alive connection closes after
    # it too), or it is closed (relay.web.low_level).
    header_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    # A request body must arrive within this many seconds of the relay starting to read it,
    # or the request gets 408 body_timeout and the connection is closed (relay.web.body).
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    log_level: str = "INFO"
    # "text" (human readable stage lines) or "json" (one object per line, for production).
    log_format: Literal["text", "json"] = "text"
    # Bearer token for operator endpoints, at least 32 characters; empty means "generate
    # one at start and print it".
    operator_token: str = Field(default="", repr=False)
    # SIGTERM: refuse new sessions, wait this long for live ones, then hang them up.
    drain_timeout_s: Annotated[float, Field(ge=0, le=86400)] = 30.0
    # Seconds advertised in Retry-After while draining.
    drain_retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 30
    # Create (or refresh) the demo user at every start and print its token: "auto" only
    # with the embedded PostgreSQL (database.url empty: a try-out on one machine, README's
    # first run), never in a database configured for production, shared by a cluster
    # (docs/deploy.md) where each start would invalidate the token another printed; true
    # or false decide it outright.
    create_demo_user: bool | Literal["auto"] = "auto"

    def demo_user_wanted(self, database_url: str) -> bool:
        if self.create_demo_user == "auto":
            return not database_url
        return self.create_demo_user

    # Once started, move every object alive to the garbage collector's permanent
    # generation (relay.memory): collections then scan live interviews only.
    gc_freeze: bool = True
    # After an interview ends, free it (a full collection, freed heap handed back to the
    # system) within this many seconds, at most once per interval; 0: Python decides.
    memory_release_delay_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    # Those full collections pause everything, the forwarding too, for about half a
    # millisecond per live interview: at most this share of the time (the next one waits
    # until the last one's pause is that share of the time since). 0: no bound.
    memory_release_pause_share: Annotated[float, Field(ge=0, le=1)] = 0.002
    # Networks (CIDR, or single addresses) of the reverse proxies in front of the relay:
    # from them, the client is the X-Forwarded-For hop they saw (relay.web.forwarded).
    trusted_proxies: tuple[ProxyNetwork, ...] = ()
    # The asyncio event loop of `relay serve` (relay.event_loop): "uvloop" or "asyncio".
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    # The relay's address as candidates reach it (https://interviews.example.com): the base
    # of interviews' candidate links. Empty: the origin of the request that created them.
    public_url: str = ""
    # Web origins (exact: scheme://host[:port]) whose pages may call the candidate API and
    # the OpenAI-compatible /v1/realtime routes from the browser (CORS, relay.web.cors).
    # Empty: none; nothing else is ever cross-origin.
    cors_origins: Annotated[tuple[str, ...], Field(max_length=100)] = ()

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if value and (not re.match(r"^https?://[^/?#\s]+/?$", value)):
            raise ValueError("an http(s) origin such as https://interviews.example.com")
        return value.rstrip("/")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            # An origin as a browser sends it: no path, no trailing slash, no wildcard (a
            # "*" would open the candidate API to every site).
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an exact origin such as https://app.example.com "
                    "(scheme, host and optional port; no path, no wildcard)"
                )
        return tuple(dict.fromkeys(o.lower() for o in origins))

    @field_validator("operator_token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        # A short token is guessed (one of a single character was, in 17 requests);
        # the failed-authentication limit only slows guessing down.
        if value and len(value) < MIN_SECRET_CHARS:
            raise ValueError(
                f"shorter than {MIN_SECRET_CHARS} characters; generate one with "
                '`python3 -c "import secrets; print(secrets.token_urlsafe(32))"`'
            )
        return value


class DatabaseConfig(_Section):
    # Empty: start an embedded PostgreSQL under server.data_dir.
    url: str = Field(default="", repr=False)
    pool_min_size: Annotated[int, Field(ge=0, le=1000)] = 2
    pool_max_size: Annotated[int, Field(ge=1, le=1000)] = 10
    # Per-query timeout (the incident's 2 s was too tight for a cold pool).
    query_timeout_s: Annotated[float, Field(gt=0, le=600)] = 8.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    # Retries after the first attempt, on connection errors and timeouts only.
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff_base_s: Annotated[float, Field(ge=0, le=60)] = 0.25
    backoff_max_s: Annotated[float, Field(ge=0, le=600)] = 2.0
    # Keep-warm ping interval for idle pooled connections (below 1 s it would spin).
    keepalive_interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # Retry-After (seconds) on a 503 caused by the database.
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 5
    # The schema migrations' own time limit (lock wait included), not query_timeout_s: a
    # migration may wait for another instance's, or rewrite a table.
    migration_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # Start-up's database steps (migrate, warm, recover) are tried this many times, with
    # backoff, before /readyz reports them failed for good.
    bootstrap_attempts: Annotated[int, Field(ge=1, le=1000)] = 20

    @model_validator(mode="after")
    def _pool_sizes(self) -> DatabaseConfig:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size: larger than database.pool_max_size")
        return self


class CacheConfig(_Section):
    # Empty: the in-process cache only.
    redis_url: str = Field(default="", repr=False)
    key_prefix: str = "relay:"
    # TTL of a cached known user. Long (6 h) because it no longer bounds staleness: a change
    # to a user's row, by the relay or by hand, evicts it at once (invalidate_from_database).
    hit_ttl_s: Annotated[int, Field(ge=1, le=86400)] = 21600
    # PostgreSQL NOTIFies every change to a user's cached columns and each process drops the
    # entry (relay.admission.invalidation). False: entries go only when they expire.
    invalidate_from_database: bool = True
    # TTL of a known user cached while this process does not hear those changes (the switch
    # above off, or its listening connection down): then the TTL is what bounds staleness.
    hit_ttl_without_listener_s: Annotated[int, Field(ge=1, le=86400)] = 300
    # Short TTL of a cached unknown token, so a brute force does not reach PostgreSQL.
    miss_ttl_s: Annotated[int, Field(ge=1, le=86400)] = 30
    # The in-process fallback cache: bounded, TTL'd.
    local_max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 10000
    local_ttl_s: Annotated[int, Field(ge=1, le=86400)] = 60
    # Unknown tokens are kept apart (bounded separately) so they never evict known users.
    local_negative_max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 2000
    # Any Redis call slower than this counts as a failure.
    redis_timeout_s: Annotated[float, Field(gt=0, le=60)] = 0.25
    # Consecutive Redis failures that open the breaker, and how long it stays open.
    breaker_failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 3
    breaker_open_s: Annotated[float, Field(gt=0, le=3600)] = 15.0


class LimitsConfig(_Section):
    per_user_concurrent_sessions: Annotated[int, Field(ge=1, le=1000)] = 2
    # Session requests per user per minute (sliding window).
    per_user_requests_per_minute: Annotated[int, Field(ge=1, le=100_000)] = 10
    # Sessions (pending, connecting, active) this instance accepts at once.
    global_max_sessions: Annotated[int, Field(ge=1, le=100_000)] = 200
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 10
    # Retry-After of 409 credit_in_use (the candidate's time held by another running
    # session of theirs): how often a waiting page asks again, within its 90 s bound.
    credit_in_use_retry_after_s: Annotated[int, Field(ge=1, le=60)] = 5
    # Interview seconds a user must still have to start a session.
    min_remaining_seconds: Annotated[int, Field(ge=1, le=86400)] = 1
    # Failed authentications per client address per minute before 429 (sliding window).
    failed_auth_per_minute: Annotated[int, Field(ge=1, le=100_000)] = 20
    # Sessions the whole cluster accepts at once (needs Redis); 0: no cluster-wide cap.
    cluster_max_sessions: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    # Session creations running at once in this process (relay.admission.gate); twice the
    # default database pool: each holds a connection for only part of its life (the rest is
    # the upstream mint), so the pool stays busy without a queue growing behind it.
    max_inflight_admissions: Annotated[int, Field(ge=1, le=10_000)] = 20
    # How long a session request waits for one of them to finish before 503 overloaded.
    admission_queue_timeout_s: Annotated[float, Field(ge=0, le=30)] = 1.0


class ClusterConfig(_Section):
    # How often each member (instance or worker) refreshes its heartbeat; a member
    # silent for 3 intervals is dead: it leaves the cluster view and its sessions'
    # rows are closed.
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    # Key sealing what the relay stores and must read back (webhook signing secrets,
    # pending sessions' upstream secrets, idempotent answers) (base64 of 32 bytes). Empty:
    # generated once into server.data_dir (fine for workers on one machine; several
    # machines must share one). Prefer RELAY__CLUSTER__STATE_KEY.
    state_key: str = Field(default="", repr=False)
    # Keys that sealed values before state_key replaced them (relay.sealing): values open
    # with any of them, and are sealed with state_key only. Dropped once `relay state-key
    # reseal` has run (docs/operations.md, "Rotating the state key").
    previous_state_keys: tuple[str, ...] = Field(
        default=(), max_length=MAX_PREVIOUS_STATE_KEYS, repr=False
    )
    # This member's address in the cluster view. Empty: http://<host>:<port>.
    advertise_address: str = ""
    # A member silent for 3 heartbeats plus this long is removed and its connecting or
    # active sessions' rows are closed (relay_lost); the grace spares a short DB outage.
    recover_after_s: Annotated[float, Field(gt=0, le=3600)] = 30.0

    @field_validator("state_key")
    @classmethod
    def _a_key(cls, value: str) -> str:
        # Checked here so that a malformed key is one line at start (exit 2), as any
        # setting; relay.sealing decodes it (and the generated file's).
        problem = _state_key_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("previous_state_keys")
    @classmethod
    def _keys(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for index, value in enumerate(values):
            problem = _state_key_problem(value)
            if problem:
                raise ValueError(f"key number {index + 1}: {problem}")
        return values


class UpstreamConfig(_Section):
    dialect: Dialect = "ga"
    # Empty: use the built-in simulator as the upstream (on a loopback server.host with no
    # trusted_proxies only, unless simulate is true).
    api_key: str = Field(default="", repr=False)
    # Use the built-in simulator even with a key; required to run it on a non-loopback host.
    simulate: bool = False
    # When simulating: a `relay simulate` service shared by every instance (its /v1 URL, e.g.
    # http://127.0.0.1:9000/v1), so that a session minted through one instance is exchanged
    # through any other. Empty: each relay runs a simulator of its own.
    simulator_url: str = ""
    base_url: str = "https://api.openai.com/v1"
    # "ga" is the current API; "beta" (OpenAI answers it 400 beta_api_shape_disabled) only
    # for upstreams that still serve it, and only when set explicitly.
    # Empty: the dialect's default (ga: gpt-realtime-2.1, beta: gpt-4o-realtime-preview-2024-12-17).
    model: str = ""
    # Empty: the dialect's default (ga: marin, beta: verse; marin and cedar are GA-only).
    voice: str = ""
    # reasoning.effort for reasoning models (gpt-realtime-2*); empty: the model's default.
    # Never sent for other models.
    reasoning_effort: Literal["", "minimal", "low", "medium", "high", "xhigh"] = ""
    instructions: str = (
        "You are a friendly, professional interviewer. Ask one question at a time, "
        "listen to the answer, and follow up briefly."
    )
    vad_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    vad_prefix_padding_ms: Annotated[int, Field(ge=0, le=10_000)] = 300
    vad_silence_duration_ms: Annotated[int, Field(ge=0, le=10_000)] = 500
    # Not deprecated and streams deltas (the SDK's audio_transcription.py); empty: no input
    # transcription.
    transcription_model: str = "gpt-realtime-whisper"
    # Lifetime of the minted ephemeral secret (OpenAI's bounds).
    secret_ttl_s: Annotated[int, Field(ge=10, le=7200)] = 600
    mint_timeout_s: Annotated[float, Field(gt=0, le=300)] = 20.0
    sdp_timeout_s: Annotated[float, Field(gt=0, le=300)] = 20.0
    hangup_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Retries of a mint answered 429/5xx (Retry-After honoured, capped by retry_after_max_s).
    mint_retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff_base_s: Annotated[float, Field(ge=0, le=60)] = 0.5
    retry_after_max_s: Annotated[float, Field(ge=0, le=600)] = 5.0
    # /readyz turns red after this many failed mints/SDP exchanges in a row, while the
    # latest is younger than the window; Retry-After on that 503 (relay/upstream/health.py).
    ready_failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 3
    ready_failure_window_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    ready_retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 15

    @field_validator("base_url", "simulator_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            # The value itself is not echoed: a URL may carry credentials.
            raise ValueError("not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _voice_of_the_dialect(self) -> UpstreamConfig:
        if self.dialect == "beta" and voice_for(self) not in BETA_VOICES:
            raise ValueError(
                f"voice: {voice_for(self)!r} is not a voice of the beta dialect "
                f"(one of {', '.join(sorted(BETA_VOICES))})"
            )
        return self


class SessionConfig(_Section):
    # A minted session must be exchanged within this many seconds, once.
    pending_ttl_s: Annotated[int, Field(ge=1, le=3600)] = 60
    # Both legs connected within this many seconds of the exchange, or the session fails.
    connect_timeout_s: Annotated[float, Field(gt=0, le=600)] = 15.0
    # No media on either leg for this long ends the session (0: never).
    idle_media_timeout_s: Annotated[float, Field(ge=0, le=86400)] = 30.0
    # Hard cap per interview; the user's remaining seconds may cut it shorter.
    max_duration_s: Annotated[int, Field(ge=1, le=86400)] = 3600
    # Bound on waiting for ICE gathering while answering or offering.
    ice_gather_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    # Max bytes of an SDP offer.
    max_sdp_bytes: Annotated[int, Field(ge=1, le=1_000_000)] = 20000
    # A dropped browser leg may resume (POST /api/sessions/{id}/resume) within this many
    # seconds; the upstream leg is kept meanwhile and the time is not charged. 0: a drop
    # ends the interview at once.
    reconnect_grace_s: Annotated[float, Field(ge=0, le=600)] = 30.0
    # This many seconds before the limit the interviewer is asked to close (0: never).
    wrap_up_s: Annotated[float, Field(ge=0, le=3600)] = 60.0
    # At the limit, a reply in progress may finish within this many seconds (0: cut it).
    overrun_grace_s: Annotated[float, Field(ge=0, le=300)] = 15.0
    # How often an interview's holder saves the seconds used so far (one database write
    # per interview each time): what a crash of its process can leave uncharged.
    progress_interval_s: Annotated[float, Field(ge=1, le=300)] = 10.0
    # An active interview whose upstream leg (the interviewer's service) drops is healed
    # in place: a new upstream session is minted, seeded with the conversation so far and
    # swapped in under the same browser leg, at most this many times per loss (0: the
    # loss ends the session as ``upstream_*``, as before). The time away is not charged.
    upstream_reconnect_attempts: Annotated[int, Field(ge=0, le=10)] = 3
    # Wait before the second attempt; doubled before each later one.
    upstream_reconnect_backoff_s: Annotated[float, Field(ge=0, le=30)] = 0.5
    # An upstream leg from which nothing arrived (no audio packet, no event) for this long
    # while the interview is active counts as lost (``upstream_silent``): healed as above,
    # or the session ends. 0: off (the default), since it suits only an upstream that sends
    # audio all the time, the codec's silence between replies (the simulator does).
    upstream_silence_timeout_s: Annotated[float, Field(ge=0, le=600)] = 0.0

    @field_validator("upstream_silence_timeout_s")
    @classmethod
    def _silence_long_enough(cls, value: float) -> float:
        # The compiled path copies a direction's last-packet time every second or so: a
        # shorter watch would take a leg that is up for silent.
        if 0 < value < 5:
            raise ValueError("0 (off) or at least 5 seconds")
        return value


class IceServerConfig(_Section):
    urls: tuple[str, ...] = ()
    username: str = ""
    credential: str = Field(default="", repr=False)

    @field_validator("urls")
    @classmethod
    def _stun_or_turn(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"{url!r} is not a stun:/turn: URL")
        return urls


class IceConfig(_Section):
    # STUN/TURN servers used by the relay's peers and offered to the browser.
    # Empty: host candidates only (never aiortc's implicit public STUN server).
    servers: tuple[IceServerConfig, ...] = ()
    # Addresses gathered as host candidates. Empty: every address of the machine.
    host_addresses: tuple[str, ...] = ("127.0.0.1",)
    # UDP ports for every media socket of the relay (both legs, TURN client sockets).
    # 0 and 0: any port. When all are in use, an exchange gets 503 no_media_ports.
    udp_port_min: Annotated[int, Field(ge=0, le=65535)] = 0
    udp_port_max: Annotated[int, Field(ge=0, le=65535)] = 0
    # Retry-After (seconds) on 503 no_media_ports.
    no_media_ports_retry_after_s: Annotated[int, Field(ge=0, le=3600)] = 5
    # NAT 1:1 (a cloud VM's public IP): announced instead of the host candidates' address
    # in the answers to browsers. Empty: the gathered addresses as they are.
    public_address: str = ""
    # TURN servers with expiring credentials (TURN REST, coturn's use-auth-secret): each
    # session gets username "<expiry>:<session id>", credential HMAC-SHA1(secret, username).
    turn_urls: tuple[str, ...] = ()
    # The shared secret (also RELAY_TURN_SECRET); never logged nor sent anywhere.
    turn_secret: str = Field(default="", repr=False)
    # Credential lifetime: with turn_urls, at least session.pending_ttl_s +
    # session.max_duration_s (checked at load), as allocations are refreshed with the same
    # credentials for the whole interview; the default adds 5 minutes for clock skew.
    turn_ttl_s: Annotated[int, Field(ge=60, le=90000)] = 3960
    # Which of the relay's own legs also gather a relayed candidate through turn_urls.
    relay_turn: Literal["none", "upstream", "both"] = "none"

    @field_validator("public_address")
    @classmethod
    def _an_ip_address(cls, address: str) -> str:
        if address:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return address

    @field_validator("turn_urls")
    @classmethod
    def _turn_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if not url.startswith(("turn:", "turns:")):
                raise ValueError(f"{url!r} is not a turn:/turns: URL")
        return urls

    @model_validator(mode="after")
    def _ports_and_turn(self) -> IceConfig:
        low, high = self.udp_port_min, self.udp_port_max
        if (low, high) != (0, 0) and not 1024 <= low <= high <= 65535:
            raise ValueError(
                "udp_port_min: both 0 (any port), or 1024 <= udp_port_min <= udp_port_max <= 65535"
            )
        if self.turn_urls and not self.turn_secret:
            raise ValueError("turn_secret: required with ice.turn_urls (or RELAY_TURN_SECRET)")
        if self.relay_turn != "none" and not self.turn_urls:
            raise ValueError("relay_turn: needs ice.turn_urls")
        return self


# events.browser_server_events' default: the server event types a page may see (GA names,
# plus beta names for the legacy dialect).
DEFAULT_SERVER_EVENTS: tuple[str, ...] = (
    "error",
    "session.created",
    "session.updated",
    "conversation.created",
    "conversation.item.created",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.retrieved",
    "conversation.item.truncated",
    "conversation.item.deleted",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "input_audio_buffer.timeout_triggered",
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
    "response.created",
    "response.done",
    "response.output_item.added",
    "response.output_item.done",
    "response.content_part.added",
    "response.content_part.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.audio_transcript.delta",
    "response.audio_transcript.done",
    "response.text.delta",
    "response.text.done",
)

# events.browser_session_fields' default: the session fields a page may see (dotted paths;
# GA shape first, then the beta names).
DEFAULT_SESSION_FIELDS: tuple[str, ...] = (
    "type",
    "object",
    "id",
    "model",
    "expires_at",
    "output_modalities",
    "audio.input.format",
    "audio.input.turn_detection",
    "audio.input.noise_reduction",
    "audio.input.transcription.model",
    "audio.input.transcription.language",
    "audio.output.format",
    "audio.output.voice",
    "audio.output.speed",
    "modalities",
    "voice",
    "input_audio_format",
    "output_audio_format",
    "turn_detection",
    "input_audio_noise_reduction",
    "input_audio_transcription.model",
    "input_audio_transcription.language",
    "speed",
)


class EventsConfig(_Section):
    # Browser data-channel event types forwarded upstream; anything else is refused.
    # session.update is always refused, whatever this says.
    # conversation.item.retrieve reads an item back (OpenAI's Agents SDK asks for each user
    # item once transcribed); what comes back passes the server-event filter like any event.
    browser_allowed: tuple[str, ...] = (
        "response.cancel",
        "output_audio_buffer.clear",
        "conversation.item.retrieve",
    )
    # Max size of one browser data-channel message.
    max_message_bytes: Annotated[int, Field(ge=1, le=1_048_576)] = 16384
    # Upstream server event types passed to the browser; anything else is dropped.
    browser_server_events: tuple[str, ...] = DEFAULT_SERVER_EVENTS
    # Session fields (dotted paths) the browser sees in session.created / session.updated;
    # everything else (instructions, tools, prompt, tracing, ...) is removed.
    browser_session_fields: tuple[str, ...] = DEFAULT_SESSION_FIELDS
    # More than this many refused browser events within refused_window_s is a flood:
    # the browser's data channel is closed with an error event.
    max_refused_events: Annotated[int, Field(ge=1, le=100_000)] = 20
    refused_window_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # After a flood: "close_channel" (the interview goes on, audio only) or "end_interview".
    on_refused_flood: Literal["close_channel", "end_interview"] = "close_channel"
    # Each allowed browser event type: at most this many at once, then this many per
    # second (a token bucket per type); beyond, the event is refused as rate_limited.
    browser_burst: Annotated[int, Field(ge=1, le=10_000)] = 10
    browser_rate_per_s: Annotated[float, Field(gt=0, le=1000)] = 5.0
    # Bytes either data channel may hold unsent (its peer not reading, a stalled leg);
    # events that would go beyond are dropped and counted, not queued.
    max_buffered_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 262144

    @field_validator("browser_allowed")
    @classmethod
    def _never_session_update(cls, allowed: tuple[str, ...]) -> tuple[str, ...]:
        if "session.update" in allowed:
            raise ValueError("session.update can never be allowed")
        return allowed


class MediaConfig(_Section):
    # Frames held by each forwarding queue; beyond this the oldest is dropped and counted.
    queue_max_frames: Annotated[int, Field(ge=1, le=10_000)] = 50
    # Opus passthrough forwards packets socket to socket (relay.media.fastpath) instead
    # of through aiortc's receiver and sender; false: aiortc's path.
    fast_path: bool = True
    # While datagrams arrive faster than one per this many ms, the media sockets are read
    # together on a timer every this many ms instead of one wake-up per datagram
    # (relay.media.udp); a datagram then waits up to about this long. 0: never batch.
    receive_batch_ms: Annotated[float, Field(ge=0, le=10)] = 1.0
    # The fast path's per-packet work in compiled code (relay.media._fastloop) when it was
    # built at install; false (or not built): the same fast path in Python.
    compiled_fast_path: bool = True
    # The compiled loop reads and forwards on a thread of its own, without the interpreter,
    # so the audio does not wait for the event loop's other work (a full collection, a
    # burst of callbacks); false: on the event loop's thread.
    forwarding_thread: bool = True
    # "raised": that thread asks for real-time priority (SCHED_FIFO 1) where the process may,
    # else nice -10; "default": it runs as the process does.
    forwarding_priority: Literal["raised", "default"] = "raised"


class RecordingConfig(_Section):
    # Record every interview (both voices, transcript, manifest).
    enabled: bool = True
    # "ogg" (Ogg/Opus, stereo) or "wav" (16-bit PCM, stereo).
    format: Literal["ogg", "wav"] = "ogg"
    # Recordings older than this are deleted (files and objects) and their rows marked.
    retention_days: Annotated[int, Field(ge=1, le=36500)] = 30
    # "local" (files under directory) or "s3" (uploaded after finalisation).
    storage: Literal["local", "s3"] = "local"
    # Where recordings are written (and kept, with local storage). Empty: data_dir/recordings.
    directory: str = ""
    s3_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_prefix: str = "recordings/"
    s3_region: str = "us-east-1"
    # Shown on the candidate page before Start.
    notice_text: str = (
        "This interview is recorded (audio and transcript) and shared with the hiring team."
    )
    # While recording, refuse (409 recording_notice_required) a session whose client did
    # not confirm it showed the notice; false: API-only deployments that inform candidates
    # another way (what the client said is stored either way).
    require_notice: bool = True
    # Worker processes that finalise recordings.
    render_workers: Annotated[int, Field(ge=1, le=16)] = 1

    @field_validator("s3_endpoint_url")
    @classmethod
    def _http_endpoint(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            # The value itself is not echoed: a URL may carry credentials.
            raise ValueError("not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> RecordingConfig:
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("s3_bucket: required when recording.storage is s3")
        return self


class InterviewsConfig(_Section):
    # An interview's budget when its creator gives none (seconds of conversation over all
    # its sessions).
    default_max_duration_s: Annotated[int, Field(ge=1, le=86400)] = 1800
    # How long a candidate link stays valid when its creator gives no expires_at.
    default_expires_s: Annotated[int, Field(ge=60, le=31_536_000)] = 604800
    # After a session of an interview in progress fails (a dropped network, a relay
    # restart), the candidate may start again with the same link for this long; then the
    # interview is failed (interview.failed).
    rejoin_window_s: Annotated[int, Field(ge=0, le=86400)] = 600


class WebhooksConfig(_Section):
    # Deliver webhooks from this process (the dispatcher, relay.webhooks.dispatcher);
    # endpoints can be managed either way. Any number of instances may deliver: each
    # delivery is claimed by one.
    deliver: bool = True
    # Plain http is refused except to loopback, and loopback only when this is true
    # (local development and tests).
    allow_insecure_loopback: bool = False
    # Networks (CIDR, or single addresses) an endpoint may resolve to although they are not
    # public (private, link-local, loopback, shared, reserved); every other such address is
    # refused, at registration and again at each delivery (relay.webhooks.ssrf).
    allowed_networks: tuple[ProxyNetwork, ...] = ()
    # One attempt's time limit: connect, send, and the receiver's answer.
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0
    # Retries: exponential backoff from retry_base_s, doubling up to retry_max_interval_s,
    # with jitter; a delivery is given up once retry_for_s have passed since its event.
    retry_base_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    retry_max_interval_s: Annotated[float, Field(gt=0, le=86400)] = 3600.0
    retry_for_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 3 * 86400.0
    # The dispatcher is woken by new events (a trigger on the outbox) and at the due time
    # of the next retry or lease expiry; this is how often an idle one reads the outbox's
    # state regardless: the depth gauge, and work no notification announced.
    poll_interval_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    # Deliveries one process attempts at once.
    max_in_flight: Annotated[int, Field(ge=1, le=256)] = 8
    # Events older than this, with nothing left to deliver, are deleted with their
    # deliveries and the delivery log.
    retention_days: Annotated[int, Field(ge=1, le=3650)] = 30

    @model_validator(mode="after")
    def _max_interval_above_base(self) -> WebhooksConfig:
        if self.retry_max_interval_s < self.retry_base_s:
            raise ValueError("retry_max_interval_s: must be at least retry_base_s")
        return self


class _Sources:
    """Where ``load_settings`` reads from (``Settings()`` alone is the built-in defaults)."""

    def __init__(self, toml_file: Path | None, environ: Mapping[str, str]) -> None:
        self.toml_file = toml_file
        self.environ = environ


# Set by load_settings only while it builds a Settings: pydantic-settings asks the class
# for its sources, and the file and environment are per call, not per class.
_loading: ContextVar[_Sources | None] = ContextVar("relay_config_loading", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    session: SessionConfig = SessionConfig()
    ice: IceConfig = IceConfig()
    events: EventsConfig = EventsConfig()
    media: MediaConfig = MediaConfig()
    recording: RecordingConfig = RecordingConfig()
    cluster: ClusterConfig = ClusterConfig()
    interviews: InterviewsConfig = InterviewsConfig()
    webhooks: WebhooksConfig = WebhooksConfig()

    @model_validator(mode="after")
    def _across_sections(self) -> Settings:
        _check_across_sections(self)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = _loading.get()
        if sources is None:
            return (init_settings,)  # Settings(...) in code: defaults and arguments only
        env = EnvSettingsSource(settings_cls)
        # The environment is the one given to load_settings (tests pass their own), parsed
        # the way pydantic-settings parses os.environ. ``env_vars`` is the source's private
        # state: tests/unit/test_config.py guards it (…private_names_still_work…).
        env.env_vars = parse_env_vars(sources.environ, False, False, None)
        chain: list[PydanticBaseSettingsSource] = [
            init_settings,
            env,
            _ConventionalEnv(settings_cls, sources.environ),
        ]
        if sources.toml_file is not None:
            chain.append(TomlConfigSettingsSource(settings_cls, toml_file=sources.toml_file))
        return tuple(chain)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir)

    @property
    def recording_path(self) -> Path:
        return Path(self.recording.directory or self.data_path / "recordings")

    def replace(self, section: str, **changes: Any) -> Settings:
        """A copy with some keys of one section changed, validated (tests and the CLI)."""
        current: BaseModel = getattr(self, section)
        try:
            updated = type(current).model_validate({**current.model_dump(), **changes})
        except ValidationError as exc:
            raise _config_error(exc, prefix=f"{section}.") from None
        # Not _check_across_sections: callers change one section at a time.
        return self.model_copy(update={section: updated})


def _check_across_sections(settings: Settings) -> None:
    """Rules between keys of different sections (each message names its key)."""
    ice, session = settings.ice, settings.session
    needed = session.pending_ttl_s + session.max_duration_s
    if ice.turn_urls and ice.turn_ttl_s < needed:
        # A credential that expires mid-interview stops the TURN allocation's refreshes.
        raise ValueError(
            f"ice.turn_ttl_s: must be at least session.pending_ttl_s + "
            f"session.max_duration_s ({needed}) with ice.turn_urls"
        )


DEFAULT_MODELS: dict[str, str] = {
    "ga": "gpt-realtime-2.1",
    "beta": "gpt-4o-realtime-preview-2024-12-17",
}
DEFAULT_VOICES: dict[str, str] = {"ga": "marin", "beta": "verse"}
# Voices of the beta-era models; marin and cedar came with GA.
BETA_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse"})

_CONVENTIONAL_ENV: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "url"),
    "REDIS_URL": ("cache", "redis_url"),
    "OPENAI_API_KEY": ("upstream", "api_key"),
    "OPENAI_BASE_URL": ("upstream", "base_url"),
    "RELAY_OPERATOR_TOKEN": ("server", "operator_token"),
    "RELAY_TURN_SECRET": ("ice", "turn_secret"),
}


class _ConventionalEnv(PydanticBaseSettingsSource):
    """The well-known variable names (DATABASE_URL, ...), below ``RELAY__...``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._environ = environ

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole mapping

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, str]] = {}
        for name, (section, key) in _CONVENTIONAL_ENV.items():
            value = self._environ.get(name)
            if value:
                out.setdefault(section, {})[key] = value
        return out


def load_settings(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then the TOML file (if any), then the environment; validated."""
    env = _read_value_files(dict(os.environ if environ is None else environ))
    file: Path | None = None
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
    _check_env_names(env)
    token = _loading.set(_Sources(file, env))
    try:
        return Settings()
    except ValidationError as exc:
        raise _config_error(exc) from None
    except SettingsError as exc:  # a source could not parse a value
        raise ConfigError(str(exc)) from None
    finally:
        _loading.reset(token)


FILE_SUFFIX = "_FILE"


def _read_value_files(env: dict[str, str]) -> dict[str, str]:
    """``NAME_FILE=/run/secrets/x`` for a setting's variable (``RELAY__...`` or a
    conventional name) becomes ``NAME`` with the file's text, one trailing newline removed
    (what ``echo`` and most secret stores leave). Read once at start-up, before the event
    loop runs. Neither the path's contents nor the value appear in an error."""
    out = dict(env)
    for name, path in env.items():
        if not name.endswith(FILE_SUFFIX):
            continue
        target = name[: -len(FILE_SUFFIX)]
        if not (target.upper().startswith(ENV_PREFIX) or target in _CONVENTIONAL_ENV):
            continue  # another program's variable
        if _names_a_setting(name):
            continue  # a setting whose own name ends in _file
        # Empty is unset, as for the conventional names' own source: compose passes
        # OPENAI_API_KEY="${OPENAI_API_KEY:-}" to its relays whether it is set or not.
        if env.get(target):
            raise ConfigError(f"{name} and {target} are both set: set one")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{name}: cannot read {path}: {reason}") from None
        # One line ending removed, a Windows one too (a file saved by a Windows editor).
        out[target] = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
        del out[name]
    return out


def _setting_field(section: str, key: str) -> FieldInfo | None:
    """The field of setting ``section.key`` (None when there is none)."""
    model = Settings.model_fields.get(section)
    if model is None:
        return None
    annotation = model.annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation.model_fields.get(key)


def _names_a_setting(name: str) -> bool:
    parts = name[len(ENV_PREFIX) :].lower().split("__")
    if not name.upper().startswith(ENV_PREFIX) or len(parts) != 2:
        return False
    return _setting_field(*parts) is not None


def _check_env_names(env: Mapping[str, str]) -> None:
    """``RELAY__`` names must be SECTION__KEY of a known key (a typo must not go unnoticed)."""
    for name in env:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{name}: expected RELAY__SECTION__KEY")
        section, key = parts
        if section not in Settings.model_fields:
            raise ConfigError(f"unknown setting {section}")
        field = _setting_field(section, key)
        if field is None:
            raise ConfigError(f"unknown setting {section}.{key}")
        if typing.get_origin(field.annotation) is tuple:
            try:
                json.loads(env[name])
            except ValueError:
                raise ConfigError(f"{section}.{key}: expected a JSON list") from None


def _config_error(exc: ValidationError, *, prefix: str = "") -> ConfigError:
    """One line per problem, each naming its key; input values are never echoed
    (a URL or token may be among them)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        key = prefix + _dotted(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        # A check across keys of one section names its key first: "pool_min_size: ...".
        named = re.fullmatch(r"([\w.]+): (.*)", message)
        if error["type"] == "value_error" and named:
            # A check across sections (on Settings itself) names its full dotted key.
            key, message = f"{key}.{named[1]}" if key else named[1], named[2]
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown setting {key}")
        else:
            lines.append(f"{key}: {message}")
    return ConfigError("; ".join(lines))


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def model_for(upstream: UpstreamConfig) -> str:
    """The configured model, or the dialect's default."""
    return upstream.model or DEFAULT_MODELS[upstream.dialect]


def voice_for(upstream: UpstreamConfig) -> str:
    """The configured voice, or the dialect's default (one its models have)."""
    return upstream.voice or DEFAULT_VOICES[upstream.dialect]
