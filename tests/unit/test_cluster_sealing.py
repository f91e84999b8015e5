"""Sealing pending sessions' upstream secrets: what opens, what does not, the key file."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from relay.cluster.sealing import Sealer
from relay.sealing import KEY_FILE, SealError, StateKeyError, decode_key, load_or_create_key
from relay.upstream.base import MintedSession

MINTED = MintedSession(
    secret="ek_secret_value",
    expires_at=1_900_000_000,
    model="gpt-realtime",
    upstream_session_id="s",
)


def key(byte: int) -> bytes:
    return bytes([byte]) * 32


def test_a_sealed_secret_opens_with_the_key_and_the_session_id() -> None:
    sealer = Sealer(key(1))
    sealed = sealer.seal("is_a", MINTED)
    assert b"ek_secret_value" not in sealed
    assert sealer.open("is_a", sealed) == MINTED
    assert sealer.seal("is_a", MINTED) != sealed  # a fresh nonce each time


def test_it_does_not_open_with_another_key_another_session_or_tampered() -> None:
    sealed = Sealer(key(1)).seal("is_a", MINTED)
    with pytest.raises(SealError):
        Sealer(key(2)).open("is_a", sealed)
    with pytest.raises(SealError):
        Sealer(key(1)).open("is_b", sealed)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealError):
        Sealer(key(1)).open("is_a", tampered)
    with pytest.raises(SealError):
        Sealer(key(1)).open("is_a", b"short")


def test_configured_keys_are_checked() -> None:
    assert decode_key(base64.b64encode(key(3)).decode()) == key(3)
    with pytest.raises(StateKeyError, match="cluster.state_key"):
        decode_key("not base64!")
    with pytest.raises(StateKeyError, match="32 bytes"):
        decode_key(base64.b64encode(b"short").decode())


def test_a_missing_key_is_generated_once_private(tmp_path: Path) -> None:
    first = load_or_create_key("", tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key("", tmp_path / "data") == first
    assert len(first) == 32
    configured = base64.b64encode(key(4)).decode()
    assert load_or_create_key(configured, tmp_path / "other") == key(4)
    assert not (tmp_path / "other").exists()
