"""API keys: the standard ``sk-…`` keys from the options and minted ``ek_…`` keys with expiry.

Key values never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from relay.upstream.simulator.errors import invalid_api_key
from relay.upstream.simulator.session_config import Dialect

# What a standard key looks like (sk-…, sk-proj-…, sk-svcacct-…): anything shorter or with
# other characters is clearly not a key, even when any key is accepted.
_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")
# Expired keys are remembered this long (for a precise "expired" message), then forgotten.
# Each key holds its whole effective session (instructions, tools, audio settings: a few
# kB), so an hour of remembering made a long run of short interviews grow by that much per
# interview (docs/operations.md, "Memory per session").
_FORGET_AFTER_S = 60.0
# At most this many keys are remembered. Past it, to make room, the store forgets
# (1) expired keys, oldest first; then (2) still-valid keys already used for a call
# (a call needs its key only to start), oldest first; and only then (3) the oldest
# still-valid, unused key: that one's holder gets 401 invalid_api_key if it calls later.
DEFAULT_MAX_KEYS = 1000


@dataclass(frozen=True)
class EphemeralKey:
    value: str = field(repr=False)
    expires_at: int
    # The dialect that minted the key and the effective session in that dialect's shape.
    dialect: Dialect
    session: Mapping[str, Any] = field(repr=False)

    @property
    def model(self) -> str:
        return str(self.session.get("model", ""))


def kind_of(token: str) -> str:
    """A safe description of a token for messages: its kind, never its value."""
    for prefix in ("ek_", "sk-", "rk-"):
        if token.startswith(prefix):
            return f"{prefix}…"
    return "a token of unknown form"


class KeyStore:
    def __init__(
        self,
        standard_keys: AbstractSet[str],
        *,
        accept_any_standard: bool,
        clock: Callable[[], float],
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._standard = frozenset(standard_keys)
        self._accept_any = accept_any_standard
        self._clock = clock
        self._max_keys = max(1, max_keys)
        # Insertion order is minting order: the first entries are the oldest.
        self._ephemeral: dict[str, EphemeralKey] = {}
        # Values of the keys that have started a call (evicted before unused ones).
        self._used: set[str] = set()

    def __repr__(self) -> str:
        return f"KeyStore(standard={len(self._standard)}, ephemeral={len(self._ephemeral)})"

    def is_standard(self, token: str) -> bool:
        if token in self._standard:
            return True
        return self._accept_any and _KEY_SHAPE.fullmatch(token) is not None

    def mint(self, dialect: Dialect, session: Mapping[str, Any], ttl_s: int) -> EphemeralKey:
        now = self._clock()
        self._forget_old(now)
        key = EphemeralKey(
            value=f"ek_{secrets.token_hex(16)}",
            expires_at=int(now + ttl_s),
            dialect=dialect,
            session=session,
        )
        self._ephemeral[key.value] = key
        return key

    def require_standard(self, token: str | None) -> None:
        """Raise 401 unless ``token`` is a standard API key."""
        if token is None:
            raise _missing()
        if not self.is_standard(token):
            raise invalid_api_key(
                f"Incorrect API key provided ({kind_of(token)}). This endpoint needs a "
                "standard API key."
            )

    def require_call_credential(self, token: str | None) -> EphemeralKey | None:
        """A valid ephemeral key (returned) or a standard key (None); else 401."""
        if token is None:
            raise _missing()
        if self.is_standard(token):
            return None
        key = self._ephemeral.get(token)
        if key is None:
            raise invalid_api_key(f"Incorrect API key provided ({kind_of(token)}).")
        if self._clock() >= key.expires_at:
            raise invalid_api_key("The ephemeral key provided (ek_…) has expired.")
        self._used.add(token)
        return key

    def __len__(self) -> int:
        return len(self._ephemeral)

    def _forget_old(self, now: float) -> None:
        old = [v for v, k in self._ephemeral.items() if now - k.expires_at > _FORGET_AFTER_S]
        for value in old:
            self._forget(value)
        excess = len(self._ephemeral) - self._max_keys + 1  # room for the key being minted
        if excess <= 0:
            return
        expired = [v for v, k in self._ephemeral.items() if now >= k.expires_at]
        valid = [v for v, k in self._ephemeral.items() if now < k.expires_at]
        used = [v for v in valid if v in self._used]
        rest = [v for v in valid if v not in self._used]
        for value in (expired + used + rest)[:excess]:
            self._forget(value)

    def _forget(self, value: str) -> None:
        del self._ephemeral[value]
        self._used.discard(value)


def _missing() -> Exception:
    return invalid_api_key(
        "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
