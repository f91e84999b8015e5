"""Optional error tracking with Sentry: on only when ``SENTRY_DSN`` is set.

The official SDK's aiohttp integration reports unhandled errors and error-level log lines;
every event is tagged with the request id (and session id) of the request it happened in,
and passes through ``scrub_event`` first, which removes anything that could be a secret:
bearer tokens, every credential the relay issues by its prefix (``rt_``, ``ri_``, ``rk_``,
``rs_``, ``ek_``, ``whsec_``), upstream keys (``sk-…``), SDP bodies,
and the values of fields whose names say token/secret/key/password/authorization/sdp.
When ``SENTRY_DSN`` is unset, nothing is imported or initialised and nothing is sent.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from relay.config import ConfigError
from relay.observability.request_context import current_request_id, current_session_id

if TYPE_CHECKING:
    from sentry_sdk.types import Event

log = logging.getLogger("relay.error_tracking")

FILTERED = "[Filtered]"
_SENSITIVE_KEY = re.compile(
    r"token|secret|passw|authorization|cookie|api[_-]?key|^key$|_key$|sdp|dsn|credential",
    re.IGNORECASE,
)
_PATTERNS = (
    # An SDP body: from its "v=0" line to the end of the text, also in its escaped form
    # (``'v=0\\r\\n…'``) as it appears in a repr() of a string or an object holding one.
    (re.compile(r"v=0(?:\r?\n|\\r\\n|\\n)(?:.|\n)*", re.MULTILINE), "[SDP]"),
    # The ``sdp=`` field of a repr (RTCSessionDescription(sdp='…')), whatever it holds.
    (re.compile(r"(\bsdp=)(['\"]).*?(?:(?<!\\)\2|$)", re.IGNORECASE | re.DOTALL), r"\1[SDP]"),
    # ICE credentials on their own (an SDP fragment without its "v=0" line).
    (re.compile(r"(a=ice-(?:pwd|ufrag):)[^\s\\'\"]+", re.IGNORECASE), r"\1" + FILTERED),
    (re.compile(r"(Bearer)\s+[^\s,;\"']+", re.IGNORECASE), r"\1 " + FILTERED),
    # Every credential the relay issues, by its prefix: user tokens, invites (in a
    # candidate_url), API keys, resume tokens, client secrets; and upstream keys.
    (re.compile(r"\b(rt_|ri_|rk_|rs_|ek_|sk-)[A-Za-z0-9_\-]{6,}"), r"\1" + FILTERED),
    # Webhook signing secrets (base64).
    (re.compile(r"\b(whsec_)[A-Za-z0-9+/=_\-]{6,}"), r"\1" + FILTERED),
    # Secrets in URLs: ?token=…, #token=…, &key=…, a candidate link's #invite=…
    (
        re.compile(r"([?#&](?:token|key|secret|invite)=)[^&#\s]+", re.IGNORECASE),
        r"\1" + FILTERED,
    ),
)
_MAX_DEPTH = 20

_enabled = False


def scrub_text(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        return FILTERED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {
            k: FILTERED
            if isinstance(k, str) and _SENSITIVE_KEY.search(k) and v not in (None, "")
            else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        # Header lists come as [name, value] pairs: a sensitive name filters its value.
        if len(value) == 2 and isinstance(value[0], str) and _SENSITIVE_KEY.search(value[0]):
            return [value[0], FILTERED]
        return [_scrub(v, depth + 1) for v in value]
    return value


def scrub_event(event: Event, hint: dict[str, Any] | None = None) -> Event:
    """Sentry ``before_send``: the event with every secret-looking value replaced, tagged
    with the request and session it happened in."""
    scrubbed: dict[str, Any] = _scrub(event)
    tags = scrubbed.get("tags")
    if not isinstance(tags, dict):
        tags = scrubbed["tags"] = {}
    request_id = current_request_id()
    if request_id != "-":
        tags.setdefault("request_id", request_id)
    session_id = current_session_id()
    if session_id:
        tags.setdefault("session_id", session_id)
    return cast("Event", scrubbed)


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    scrubbed: dict[str, Any] = _scrub(crumb)
    return scrubbed


def init_error_tracking(environ: Mapping[str, str], *, release: str) -> bool:
    """Initialise Sentry when ``SENTRY_DSN`` is set; return whether it is on."""
    global _enabled
    dsn = check_environment(environ)
    if not dsn:
        return False
    traces_sample_rate = _sample_rate(environ.get("SENTRY_TRACES_SAMPLE_RATE", ""))
    import sentry_sdk
    from sentry_sdk.integrations.aiohttp import AioHttpIntegration

    sentry_sdk.init(
        dsn=dsn,
        release=f"interview-relay@{release}",
        environment=environ.get("SENTRY_ENVIRONMENT") or None,
        integrations=[AioHttpIntegration()],
        before_send=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
        # Stack-frame locals arrive as repr() strings (an SDP's line breaks escaped, objects
        # such as RTCSessionDescription under names no key filter knows): never send them.
        include_local_variables=False,
        # Errors only; performance tracing stays off unless asked for.
        traces_sample_rate=traces_sample_rate,
    )
    _enabled = True
    log.info("error tracking on (Sentry)")
    return True


def check_environment(environ: Mapping[str, str]) -> str:
    """The SENTRY_DSN to use (empty: none), after checking the variables as settings are
    checked: a bad one is a ``ConfigError`` naming it (``relay serve`` exits 2), found
    before any worker starts. The DSN is never echoed: it carries the project's key."""
    dsn = environ.get("SENTRY_DSN", "").strip()
    if not dsn:
        return ""
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        Dsn(dsn)
    except BadDsn:
        raise ConfigError("SENTRY_DSN: not a Sentry DSN") from None
    _sample_rate(environ.get("SENTRY_TRACES_SAMPLE_RATE", ""))
    return dsn


def _sample_rate(value: str) -> float:
    """SENTRY_TRACES_SAMPLE_RATE (empty: 0), refused as a setting would be."""
    if not value.strip():
        return 0.0
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not 0 <= rate <= 1:  # NaN included
        raise ConfigError("SENTRY_TRACES_SAMPLE_RATE: a number within 0..1")
    return rate


def enabled() -> bool:
    return _enabled


def tag_request(request_id: str, session_id: str | None = None) -> None:
    """Tag the current request's Sentry scope (a no-op when error tracking is off)."""
    if not _enabled:
        return
    import sentry_sdk

    sentry_sdk.set_tag("request_id", request_id)
    if session_id:
        sentry_sdk.set_tag("session_id", session_id)


def from_environment() -> bool:
    from relay import __version__

    return init_error_tracking(os.environ, release=__version__)


def shutdown(timeout_s: float = 2.0) -> None:
    """Flush and detach the Sentry client (blocking: call it off the event loop)."""
    global _enabled
    if not _enabled:
        return
    import sentry_sdk

    client = sentry_sdk.get_client()
    client.close(timeout=timeout_s)
    sentry_sdk.get_global_scope().set_client(None)
    _enabled = False
