"""The OpenAI Realtime client: mint, SDP exchange and hang-up over HTTP, in either dialect.

Request shapes live in ``dialects``, the retry policy in ``retry``; this module does the
I/O, the deadlines, the error mapping, the metrics and the stage log lines. Every stage
has one deadline (``asyncio.timeout``) covering connect, headers and body, so the caller
sees ``UpstreamTimeout`` within the configured time, retries included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from relay.config import ConfigError, UpstreamConfig, model_for
from relay.observability.metrics import SLOW_BUCKETS, MetricsRegistry, bounded
from relay.observability.request_context import current_request_id
from relay.upstream.base import (
    MintedSession,
    SdpAnswer,
    SessionOverrides,
    Stage,
    UpstreamError,
    UpstreamFailure,
    UpstreamTimeout,
)
from relay.upstream.dialects import (
    DIALECTS,
    HttpRequest,
    MalformedResponse,
    dialect_for,
    parse_error,
    redact,
)
from relay.upstream.retry import header, is_retryable_status, parse_retry_after, retry_delay

log = logging.getLogger("relay.upstream")

UNREACHABLE = "upstream_unreachable"
_LABEL_UNSAFE = re.compile(r"[^a-z0-9_]+")
_HTTP_FALLBACK = re.compile(r"http_[1-5][0-9][0-9]")
_STAGE_NAMES: Mapping[Stage, str] = {
    "mint": "OPENAI_SESSION",
    "sdp": "OPENAI_SDP_EXCHANGE",
    "hangup": "OPENAI_HANGUP",
}


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299


# An SDP answer is a few KB and an error body less; anything far larger is not OpenAI.
MAX_UPSTREAM_BODY_BYTES = 1 << 20


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            # A protocol error (upstream_protocol_error), not something to buffer.
            raise aiohttp.ClientPayloadError(f"upstream body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def public_url(url: str) -> str:
    """The URL without any user:password part (safe for logs and reprs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def validate_upstream_config(config: UpstreamConfig) -> None:
    """Refuse a configuration that cannot work; warn about one that probably will not."""
    if not config.api_key.strip():
        raise ConfigError(
            "upstream.api_key: empty (set OPENAI_API_KEY, or leave it unset to use the simulator)"
        )
    parts = urlsplit(config.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream.base_url: not an http(s) URL: {public_url(config.base_url)!r}")
    if config.dialect not in DIALECTS:
        raise ConfigError(f"upstream.dialect: {config.dialect!r} is not one of ga, beta")
    for key in ("mint_timeout_s", "sdp_timeout_s", "hangup_timeout_s"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"upstream.{key}: must be > 0, got {getattr(config, key)}")
    for key in ("mint_retries", "backoff_base_s", "retry_after_max_s"):
        if getattr(config, key) < 0:
            raise ConfigError(f"upstream.{key}: must be >= 0, got {getattr(config, key)}")
    model = model_for(config)
    if config.dialect == "ga" and "realtime-preview" in model:
        log.warning("upstream.model %r is a beta-era preview model; dialect is ga", model)
    if config.dialect == "beta":
        if not model.startswith("gpt-4o"):
            log.warning("upstream.model %r is not a beta-era model; dialect is beta", model)
        log.warning(
            "upstream.dialect beta: OpenAI's service refuses the beta Realtime shape "
            "(400 beta_api_shape_disabled); it works only with an upstream that still serves "
            "it (such as `relay simulate --dialect beta`). Use ga."
        )


# Outcome labels: the upstream's error codes are its own strings, so only known ones become
# label values (anything else counts as "other"), keeping the label set bounded.
KNOWN_OUTCOMES = frozenset(
    {
        "error",
        "server_error",
        "rate_limit_exceeded",
        "insufficient_quota",
        "invalid_api_key",
        "invalid_request_error",
        "invalid_value",
        "invalid_offer",
        "unknown_parameter",
        "missing_required_parameter",
        "model_not_found",
        "beta_api_shape_disabled",
        "call_id_not_found",
        "session_expired",
        "upstream_protocol_error",
        "invalid_response",
        "invalid_answer",
        UNREACHABLE,
    }
)


def _outcome(code: str | None) -> str:
    label = _LABEL_UNSAFE.sub("_", (code or "error").lower()).strip("_")
    if _HTTP_FALLBACK.fullmatch(label):
        return label  # http_<status>: bounded by the status space
    return bounded(label, KNOWN_OUTCOMES)


class OpenAIRealtimeClient:
    """The ``UpstreamClient`` for api.openai.com (or anything speaking its HTTP surface)."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        metrics: MetricsRegistry,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        validate_upstream_config(config)
        self._config = config
        self._dialect = dialect_for(config.dialect)
        self._model = model_for(config)
        self._base_url = config.base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._requests = metrics.counter(
            "relay_upstream_requests_total",
            "Upstream HTTP requests (each attempt), by stage and outcome (ok, timeout, code)",
            ["stage", "outcome"],
        )
        self._latency = metrics.histogram(
            "relay_upstream_duration_seconds",
            "Upstream stage latency (mint, sdp, hangup), retries included, whatever the outcome",
            ["stage"],
            buckets=SLOW_BUCKETS,
        )
        self._retries = metrics.counter(
            "relay_upstream_retries_total", "Upstream attempts repeated after a failure", ["stage"]
        )

    def _count(self, stage: Stage, outcome: str) -> None:
        self._requests.inc(stage=stage, outcome=outcome)

    def __repr__(self) -> str:
        return (
            f"OpenAIRealtimeClient(dialect={self.dialect!r}, model={self._model!r}, "
            f"base_url={public_url(self._base_url)!r})"
        )

    @property
    def dialect(self) -> str:
        return self._dialect.name

    @property
    def model(self) -> str:
        return self._model

    # -- stages ------------------------------------------------------------------------

    async def mint(
        self, *, request_id: str, overrides: SessionOverrides | None = None
    ) -> MintedSession:
        """Mint an ephemeral secret; 429/5xx/connection errors retried within one deadline."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + cfg.mint_timeout_s
        request = self._dialect.mint_request(cfg, self._model, overrides)
        log.info("[%s] OPENAI_SESSION_START", request_id)
        retries = 0
        try:
            while True:
                retry_after: float | None = None
                should_retry: str | None = None
                try:
                    async with asyncio.timeout_at(deadline):
                        reply = await self._send(request)
                except TimeoutError:
                    self._count("mint", "timeout")
                    raise self._timeout("mint", cfg.mint_timeout_s) from None
                except aiohttp.ClientError as exc:
                    error = self._transport_error("mint", exc)
                else:
                    if reply.ok:
                        try:
                            minted = self._parse_mint(reply)
                        except UpstreamError as exc:
                            self._count("mint", _outcome(exc.code))
                            raise
                        self._count("mint", "ok")
                        log.info(
                            "[%s] OPENAI_SESSION_COMPLETE - %.0fms",
                            request_id,
                            (loop.time() - started) * 1000,
                        )
                        return minted
                    error = self._http_error("mint", reply)
                    retry_after = parse_retry_after(reply.headers)
                    should_retry = header(reply.headers, "x-should-retry")
                self._count("mint", _outcome(error.code))
                if retries >= cfg.mint_retries or not self._retryable(error, should_retry):
                    raise error
                delay = retry_delay(
                    retries,
                    retry_after_s=retry_after,
                    base_s=cfg.backoff_base_s,
                    cap_s=cfg.retry_after_max_s,
                )
                if loop.time() + delay >= deadline:
                    log.warning(
                        "[%s] OPENAI_SESSION_RETRY skipped: a %.2fs wait would pass the "
                        "%.1fs deadline",
                        request_id,
                        delay,
                        cfg.mint_timeout_s,
                    )
                    raise error
                retries += 1
                self._retries.inc(stage="mint")
                log.warning(
                    "[%s] OPENAI_SESSION_RETRY %d/%d in %.0fms after status=%s code=%s",
                    request_id,
                    retries,
                    cfg.mint_retries,
                    delay * 1000,
                    error.status,
                    error.code,
                )
                await asyncio.sleep(delay)
        except UpstreamFailure as exc:
            self._log_failure("mint", request_id, exc, (loop.time() - started) * 1000)
            raise
        finally:
            self._latency.observe(loop.time() - started, stage="mint")

    async def exchange_sdp(
        self, minted: MintedSession, offer_sdp: str, *, request_id: str
    ) -> SdpAnswer:
        """Post our offer with the minted secret; one attempt (an offer is single-use)."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        started = loop.time()
        request = self._dialect.sdp_request(minted, offer_sdp)
        log.info("[%s] OPENAI_SDP_EXCHANGE_START", request_id)
        try:
            try:
                async with asyncio.timeout(cfg.sdp_timeout_s):
                    reply = await self._send(request, secret=minted.secret)
            except TimeoutError:
                raise self._timeout("sdp", cfg.sdp_timeout_s) from None
            except aiohttp.ClientError as exc:
                raise self._transport_error("sdp", exc) from None
            if not reply.ok:
                # Always read the JSON error first: an error body is no SDP answer.
                raise self._http_error("sdp", reply, secret=minted.secret)
            try:
                answer = self._dialect.parse_sdp(
                    reply.headers, reply.body.decode("utf-8", errors="replace")
                )
            except MalformedResponse as exc:
                raise UpstreamError(
                    "sdp", exc.message, status=reply.status, code=exc.code
                ) from None
        except UpstreamFailure as exc:
            code = exc.code if isinstance(exc, UpstreamError) else None
            self._count("sdp", "timeout" if isinstance(exc, UpstreamTimeout) else _outcome(code))
            self._log_failure("sdp", request_id, exc, (loop.time() - started) * 1000)
            raise
        finally:
            self._latency.observe(loop.time() - started, stage="sdp")
        self._count("sdp", "ok")
        if answer.call_id is None and self.dialect == "ga":
            log.warning("[%s] upstream answer carried no Location: no call id", request_id)
        log.info(
            "[%s] OPENAI_SDP_EXCHANGE_COMPLETE - %.0fms", request_id, (loop.time() - started) * 1000
        )
        return answer

    async def hangup(self, call_id: str) -> None:
        """End the upstream call (GA); best effort: failures are logged and counted only."""
        request = self._dialect.hangup_request(call_id) if call_id else None
        if request is None:
            return
        request_id = current_request_id()
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = "ok"
        try:
            async with asyncio.timeout(self._config.hangup_timeout_s):
                reply = await self._send(request)
        except TimeoutError:
            outcome = "timeout"
            log.warning(
                "[%s] OPENAI_HANGUP_FAILED timeout after %.1fs (call %s)",
                request_id,
                self._config.hangup_timeout_s,
                call_id,
            )
        except aiohttp.ClientError as exc:
            outcome = UNREACHABLE
            log.warning(
                "[%s] OPENAI_HANGUP_FAILED unreachable (call %s): %s",
                request_id,
                call_id,
                self._transport_error("hangup", exc).message,
            )
        except Exception as exc:  # best effort by contract: never raise from a hang-up
            outcome = "internal_error"
            log.warning(
                "[%s] OPENAI_HANGUP_FAILED (call %s): %s",
                request_id,
                call_id,
                redact(f"{type(exc).__name__}: {exc}", self._secrets()),
            )
        else:
            if not reply.ok:
                code, message = parse_error(reply.status, reply.body, self._secrets())
                outcome = _outcome(code)
                # 404: the call already ended upstream (the peer closed first); nothing to do.
                level = logging.INFO if reply.status == 404 else logging.WARNING
                log.log(
                    level,
                    "[%s] OPENAI_HANGUP_FAILED status=%d code=%s (call %s): %s",
                    request_id,
                    reply.status,
                    code,
                    call_id,
                    message,
                )
        ms = (loop.time() - started) * 1000
        self._count("hangup", outcome)
        self._latency.observe(ms / 1000, stage="hangup")
        if outcome == "ok":
            log.info("[%s] OPENAI_HANGUP_COMPLETE - %.0fms (call %s)", request_id, ms, call_id)

    async def close(self) -> None:
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- helpers -----------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the upstream client is closed")
        if self._session is None:
            # Deadlines come from asyncio.timeout per stage, not from aiohttp's defaults.
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def _send(self, request: HttpRequest, *, secret: str | None = None) -> _Reply:
        token = secret if request.credential == "secret" else self._config.api_key
        if not token:
            raise RuntimeError(f"no {request.credential} for the upstream request")
        headers = {**request.headers, "Authorization": f"Bearer {token}"}
        body: bytes | None = request.text.encode("utf-8") if request.text is not None else None
        json_body: Any = dict(request.json) if request.json is not None else None
        async with self._http().post(
            self._base_url + request.path,
            params=dict(request.params) or None,
            headers=headers,
            json=json_body,
            data=body,
            # A redirect would carry a credential to a place nobody configured.
            allow_redirects=False,
        ) as resp:
            payload = await _read_limited(resp, MAX_UPSTREAM_BODY_BYTES)
            return _Reply(resp.status, resp.headers.copy(), payload)

    def _secrets(self, secret: str | None = None) -> tuple[str, ...]:
        return (self._config.api_key, secret) if secret else (self._config.api_key,)

    def _parse_mint(self, reply: _Reply) -> MintedSession:
        try:
            try:
                data = json.loads(reply.body)
            except ValueError:
                raise MalformedResponse(
                    "invalid_response", "unexpected upstream response: not JSON"
                ) from None
            return self._dialect.parse_mint(data, self._model)
        except MalformedResponse as exc:
            raise UpstreamError("mint", exc.message, status=reply.status, code=exc.code) from None

    def _http_error(
        self, stage: Stage, reply: _Reply, *, secret: str | None = None
    ) -> UpstreamError:
        code, message = parse_error(reply.status, reply.body, self._secrets(secret))
        return UpstreamError(stage, message, status=reply.status, code=code)

    def _transport_error(self, stage: Stage, exc: aiohttp.ClientError) -> UpstreamError:
        # Only the exception's own text: its request_info (with our Authorization header)
        # is not chained on (``from None`` at the raise sites) and never formatted.
        detail = redact(f"{type(exc).__name__}: {exc}", self._secrets())
        if isinstance(exc, aiohttp.ClientConnectionError):
            return UpstreamError(
                stage, f"upstream unreachable: {detail}", status=None, code=UNREACHABLE
            )
        return UpstreamError(
            stage, f"upstream protocol error: {detail}", status=None, code="upstream_protocol_error"
        )

    def _timeout(self, stage: Stage, seconds: float) -> UpstreamTimeout:
        return UpstreamTimeout(stage, f"no answer from the upstream within {seconds:g}s")

    @staticmethod
    def _retryable(error: UpstreamError, should_retry: str | None = None) -> bool:
        if error.status is None:
            return error.code == UNREACHABLE
        return is_retryable_status(error.status, error.code, should_retry=should_retry)

    def _log_failure(self, stage: Stage, request_id: str, exc: UpstreamFailure, ms: float) -> None:
        name = _STAGE_NAMES[stage]
        if isinstance(exc, UpstreamTimeout):
            log.error("[%s] %s_TIMEOUT - %.0fms: %s", request_id, name, ms, exc.message)
        elif isinstance(exc, UpstreamError):
            log.error(
                "[%s] %s_FAILED status=%s code=%s - %.0fms: %s",
                request_id,
                name,
                exc.status,
                exc.code,
                ms,
                exc.message,
            )
