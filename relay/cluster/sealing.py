"""Sealing the upstream secret of a pending session before it is stored.

A pending session must be exchangeable on any member, so what the exchange needs from
the upstream mint (the ephemeral ``ek_`` secret) is stored with the session's row, sealed
under the state key (relay.sealing: AES-256-GCM) with the session id as associated data.
A member that cannot open a sealed value (it was given another key) re-mints at exchange
time instead (relay.sessions.shared_state).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from relay.observability.metrics import MetricsRegistry
from relay.sealing import SecretBox, StateKeys, count_previous_opens
from relay.upstream.base import MintedSession


def answer_context(principal: str, key: str) -> str:
    """What an idempotent answer (relay.web.idempotency) is sealed bound to: its
    principal's Idempotency-Key (``relay state-key reseal`` binds it alike)."""
    return f"idempotency\n{principal}\n{key}"


class Sealer:
    """``metrics``: counts what opens with a previous state key (relay.sealing)."""

    def __init__(self, keys: StateKeys | bytes, metrics: MetricsRegistry | None = None) -> None:
        def counting(value: str) -> Callable[[], None] | None:
            return None if metrics is None else count_previous_opens(metrics, value)

        self._box = SecretBox(keys, counting("session_secret"))
        # seal_bytes' only user is the idempotent answers (relay.web.idempotency).
        self._bytes_box = SecretBox(keys, counting("idempotent_answer"))

    def seal(self, session_id: str, minted: MintedSession) -> bytes:
        payload = json.dumps(
            {
                "secret": minted.secret,
                "expires_at": minted.expires_at,
                "model": minted.model,
                "upstream_session_id": minted.upstream_session_id,
            }
        ).encode()
        return self._box.seal(session_id, payload)

    def seal_bytes(self, context: str, payload: bytes) -> bytes:
        """Any payload, bound to ``context`` (associated data: it opens under that one only)."""
        return self._bytes_box.seal(context, payload)

    def open_bytes(self, context: str, sealed: bytes) -> bytes:
        """``relay.sealing.SealError`` when it does not open (another key, another context)."""
        return self._bytes_box.open(context, sealed)

    def open(self, session_id: str, sealed: bytes) -> MintedSession:
        """The minted session; ``relay.sealing.SealError`` when it does not open."""
        data = json.loads(self._box.open(session_id, sealed))
        return MintedSession(
            secret=str(data["secret"]),
            expires_at=int(data["expires_at"]),
            model=str(data["model"]),
            upstream_session_id=data.get("upstream_session_id"),
        )
