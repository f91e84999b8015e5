"""Secrets the relay must store and read back, sealed with the state key (AES-256-GCM).

Some secrets have to be recoverable, not only checked: a pending session's upstream secret
(the member that exchanges it needs it: relay.cluster.sealing) and a webhook endpoint's
signing secret (every delivery is signed with it: relay.webhooks). They are stored sealed,
each bound to the row it belongs to by the associated data (a sealed value copied onto
another row does not open), so a database dump or a replica exposes none of them.

The key comes from ``cluster.state_key`` (base64 of 32 bytes); when empty it is generated
once into ``<data_dir>/state.key`` (mode 0600, narrowed to it if it was copied in wider;
data_dir 0700), which every worker of one machine and every command run from the same
folder shares. Members on several machines must be given the same key.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.private_files import FILE_MODE, private_dir

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE = "state.key"


class SealError(ValueError):
    """A sealed value cannot be opened (other key, tampered, or not ours)."""


class StateKeyError(ValueError):
    """The configured state key is malformed."""


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StateKeyError("cluster.state_key: not base64") from exc
    if len(key) != KEY_BYTES:
        raise StateKeyError(f"cluster.state_key: must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def load_or_create_key(configured: str, data_dir: Path) -> bytes:
    """The configured key, else the one in ``data_dir`` (created atomically if absent).

    Blocking (file I/O): call it from a thread or before the event loop starts.
    """
    if configured:
        return decode_key(configured)
    path = data_dir / KEY_FILE
    private_dir(data_dir)
    try:
        # O_EXCL: when several workers start at once, exactly one writes the key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # A key copied in by hand (cp, an editor) has the umask's mode: only the owner may
        # read it, whoever made it.
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(FILE_MODE)
    else:
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
    text = path.read_text().strip()
    if not text:
        # Another worker created the file a moment ago and has not written it yet.
        raise StateKeyError(f"{path}: empty; retry")
    return decode_key(text)


class SecretBox:
    """Seals and opens bytes under the state key, bound to ``bound_to`` (the owning row's
    id, as associated data)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, bound_to: str, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, bound_to.encode())

    def open(self, bound_to: str, sealed: bytes) -> bytes:
        if len(sealed) <= NONCE_BYTES:
            raise SealError("sealed value too short")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], bound_to.encode())
        except InvalidTag as exc:
            raise SealError("sealed value does not open with this key") from exc
