"""The session shown to an OpenAI-shaped client: the one the interview defines, redacted.

The ``client_secrets`` answer carries a session in OpenAI's shape. It is the effective
session the upstream answered the mint with (what OpenAI would show), or, when the
upstream gave none in the GA shape (the beta dialect), the session the relay asked for;
either way only the paths of ``events.browser_session_fields`` are kept, as in the
``session.created`` / ``session.updated`` events the page receives (relay.media.
event_filter): never the instructions, tools, prompt or tracing. Pure logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.config import Settings
from relay.media.event_filter import redact_session
from relay.upstream.base import MintedSession, SessionOverrides
from relay.upstream.dialects import ga_mint_body


def effective_session(
    settings: Settings, minted: MintedSession, overrides: SessionOverrides | None
) -> dict[str, Any]:
    source: Mapping[str, Any]
    if minted.session is not None and minted.session.get("type") == "realtime":
        source = minted.session
    else:
        source = ga_mint_body(settings.upstream, minted.model, overrides)["session"]
    session = redact_session(source, settings.events.browser_session_fields)
    # What OpenAI's SDKs require of the object, whatever the configured fields say.
    session.update(
        type="realtime",
        object="realtime.session",
        id=minted.upstream_session_id or str(source.get("id") or "sess_relay"),
        model=minted.model,
    )
    return session
