"""Standard Webhooks signatures (https://www.standardwebhooks.com).

Each request carries ``webhook-id`` (the event's id, the same on every retry and
redelivery: the receiver's key for "seen it already"), ``webhook-timestamp`` (Unix seconds
of this attempt: receivers refuse old ones, which stops replays) and ``webhook-signature``
(``v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>``). The secret is
``whsec_<base64 of 24 random bytes>``, as the spec's libraries expect it.

While an endpoint's secret is being rotated, a request is signed with the new secret and
the previous one: ``webhook-signature`` carries one ``v1,<sig>`` per secret, separated by
spaces, as the spec allows, and a receiver accepts it when any of them verifies with its
secret (the spec's libraries do), so it may switch to the new secret at any time of the
overlap.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_…`` secret stands for."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("not a whsec_ secret")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a whsec_ secret") from exc
    if not key:
        raise ValueError("an empty whsec_ secret")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(
    secret: str, msg_id: str, timestamp: int, body: bytes, *, previous: str | None = None
) -> dict[str, str]:
    """The three headers, signed with ``secret`` and, while a rotation's overlap lasts,
    with the ``previous`` secret too (after the current one's signature)."""
    signatures = [signature(secret, msg_id, timestamp, body)]
    if previous is not None:
        signatures.append(signature(previous, msg_id, timestamp, body))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }
