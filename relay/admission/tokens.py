"""Opaque bearer tokens: generated here, shown once, stored only as a SHA-256."""

from __future__ import annotations

import hashlib
import re
import secrets

# 32 random bytes, url-safe: 256 bits, so a plain SHA-256 (no salt/stretching) is a
# sound at-rest form: there is nothing to brute-force.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


# Prefixes say what a credential is: a user's token, an interview's invite (the candidate
# link), an API key. Each has 32 random bytes after it.
USER_TOKEN_PREFIX = "rt_"
INVITE_PREFIX = "ri_"
API_KEY_PREFIX = "rk_"


def new_token() -> str:
    return USER_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_invite_token() -> str:
    return INVITE_PREFIX + secrets.token_urlsafe(32)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def unusable_token_hash() -> str:
    """The stored hash of a user created for an interview only: of a random value nobody
    is given, so no user token opens it until an admin reissues one."""
    return hash_token(secrets.token_urlsafe(32))


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
