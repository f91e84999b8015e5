"""Opaque bearer tokens: generated here, shown once, stored only as a SHA-256."""

from __future__ import annotations

import hashlib
import re
import secrets

# 32 random bytes, url-safe: 256 bits, so a plain SHA-256 (no salt/stretching) is a
# sound at-rest form: there is nothing to brute-force.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def new_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def plausible_token(token: str) -> bool:
    """Cheap shape check before any lookup (rejects junk without touching a store)."""
    return bool(_TOKEN_RE.match(token))


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
