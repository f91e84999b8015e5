"""Sealing the upstream secret of a pending session before it is stored.

A pending session must be exchangeable on any member, so what the exchange needs from
the upstream mint (the ephemeral ``ek_`` secret) is stored with the session's row, sealed
under the state key (relay.sealing: AES-256-GCM) with the session id as associated data.
A member that cannot open a sealed value (it was given another key) re-mints at exchange
time instead (relay.sessions.shared_state).
"""

from __future__ import annotations

import json

from relay.sealing import SecretBox
from relay.upstream.base import MintedSession


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._box = SecretBox(key)

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
        return self._box.seal(context, payload)

    def open_bytes(self, context: str, sealed: bytes) -> bytes:
        """``relay.sealing.SealError`` when it does not open (another key, another context)."""
        return self._box.open(context, sealed)

    def open(self, session_id: str, sealed: bytes) -> MintedSession:
        """The minted session; ``relay.sealing.SealError`` when it does not open."""
        data = json.loads(self._box.open(session_id, sealed))
        return MintedSession(
            secret=str(data["secret"]),
            expires_at=int(data["expires_at"]),
            model=str(data["model"]),
            upstream_session_id=data.get("upstream_session_id"),
        )
