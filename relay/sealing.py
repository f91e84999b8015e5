"""Secrets the relay must store and read back, sealed with the state key (AES-256-GCM).

Some secrets have to be recoverable, not only checked: a pending session's upstream secret
(the member that exchanges it needs it: relay.cluster.sealing), a webhook endpoint's
signing secret (every delivery is signed with it: relay.webhooks) and a stored idempotent
answer (it can carry a credential shown once: relay.web.idempotency). They are stored sealed,
each bound to the row it belongs to by the associated data (a sealed value copied onto
another row does not open), so a database dump or a replica exposes none of them.

The key comes from ``cluster.state_key`` (base64 of 32 bytes); when empty it is generated
once into ``<data_dir>/state.key`` (mode 0600, narrowed to it if it was copied in wider;
data_dir 0700), which every worker of one machine and every command run from the same
folder shares. Members on several machines must be given the same key.

Rotation (docs/operations.md, "Rotating the state key"): ``cluster.previous_state_keys``
are keys values were sealed with before. A value opens with the current key or any previous
one and is always sealed with the current one; ``relay state-key reseal``
(relay.state_key) seals the stored values again under the current key, after which the
previous keys can go. Each value opened with a previous key is counted
(``on_previous``: relay_state_key_previous_opens_total), so an operator sees when none is
left in use.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.config import ClusterConfig
from relay.observability.metrics import MetricsRegistry
from relay.private_files import FILE_MODE, private_dir

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_FILE = "state.key"


class SealError(ValueError):
    """A sealed value cannot be opened (other key, tampered, or not ours)."""


class StateKeyError(ValueError):
    """The configured state key is malformed."""


def decode_key(text: str, name: str = "cluster.state_key") -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StateKeyError(f"{name}: not base64") from exc
    if len(key) != KEY_BYTES:
        raise StateKeyError(f"{name}: must decode to {KEY_BYTES} bytes, got {len(key)}")
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
            out.write(new_key_text() + "\n")
    text = path.read_text().strip()
    if not text:
        # Another worker created the file a moment ago and has not written it yet.
        raise StateKeyError(f"{path}: empty; retry")
    return decode_key(text)


@dataclass(frozen=True)
class StateKeys:
    """The key values are sealed with, and the keys they may have been sealed with before."""

    current: bytes
    previous: tuple[bytes, ...] = ()


def load_state_keys(cluster: ClusterConfig, data_dir: Path) -> StateKeys:
    """The current key (``load_or_create_key``) and ``cluster.previous_state_keys``; a
    previous key equal to the current one is left out (it would be counted as previous).

    Blocking (file I/O): call it from a thread or before the event loop starts.
    """
    current = load_or_create_key(cluster.state_key, data_dir)
    previous = (
        decode_key(text, "cluster.previous_state_keys") for text in cluster.previous_state_keys
    )
    return StateKeys(current, tuple(dict.fromkeys(k for k in previous if k != current)))


def new_key_text() -> str:
    """A new state key, as ``cluster.state_key`` takes it (``relay state-key generate``)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


# What a sealed value is, as relay_state_key_previous_opens_total{kind} names it.
SEALED_KINDS = ("webhook_secret", "session_secret", "idempotent_answer")


def count_previous_opens(metrics: MetricsRegistry, kind: str) -> Callable[[], None]:
    """``on_previous`` for a box of ``kind`` (one of SEALED_KINDS): counts the values opened
    with a previous key, which ``relay state-key reseal`` has not sealed again yet."""
    counter = metrics.counter(
        "relay_state_key_previous_opens_total",
        "Sealed values opened with one of cluster.previous_state_keys (not yet resealed)",
        ["kind"],
    )
    # Every series exists from the start: "0 since start on every member" is the signal
    # that the previous keys can go.
    counter.declare(kind=SEALED_KINDS)
    return lambda: counter.inc(kind=kind)


class SecretBox:
    """Seals and opens bytes under the state keys, bound to ``bound_to`` (the owning row's
    id, as associated data): sealed with the current key, opened with it or a previous one.

    ``on_previous``: called each time a value opens with a previous key only (a metric)."""

    def __init__(
        self, keys: StateKeys | bytes, on_previous: Callable[[], None] | None = None
    ) -> None:
        keys = keys if isinstance(keys, StateKeys) else StateKeys(keys)
        # The current key first: once values are resealed, it is the only one tried.
        self._aeads = tuple(AESGCM(k) for k in (keys.current, *keys.previous))
        self._on_previous = on_previous

    def seal(self, bound_to: str, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aeads[0].encrypt(nonce, plaintext, bound_to.encode())

    def open(self, bound_to: str, sealed: bytes) -> bytes:
        plaintext, index = self.open_with(bound_to, sealed)
        if index and self._on_previous is not None:
            self._on_previous()
        return plaintext

    def open_with(self, bound_to: str, sealed: bytes) -> tuple[bytes, int]:
        """The plaintext and which key opened it: 0 the current one, ``n`` the n-th of the
        previous ones. Not counted in ``on_previous`` (``relay state-key reseal`` uses it)."""
        if len(sealed) <= NONCE_BYTES:
            raise SealError("sealed value too short")
        nonce, body, aad = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], bound_to.encode()
        for index, aead in enumerate(self._aeads):
            try:
                return aead.decrypt(nonce, body, aad), index
            except InvalidTag:
                continue
        raise SealError("sealed value does not open with this key (nor a previous one)")
