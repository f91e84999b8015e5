"""Sealing pending sessions' upstream secrets: what opens, what does not, the key file."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from relay.cluster.sealing import Sealer
from relay.config import ClusterConfig
from relay.observability.metrics import MetricsRegistry
from relay.sealing import (
    KEY_FILE,
    SealError,
    SecretBox,
    StateKeyError,
    StateKeys,
    decode_key,
    load_or_create_key,
    load_state_keys,
)
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


def test_after_a_rotation_values_open_with_a_previous_key_and_are_sealed_with_the_new() -> None:
    old = SecretBox(key(1)).seal("wh_a", b"whsec_x")
    opened: list[str] = []
    box = SecretBox(StateKeys(key(2), (key(3), key(1))), lambda: opened.append("previous"))
    assert box.open_with("wh_a", old) == (b"whsec_x", 2)  # the second previous key
    assert box.open("wh_a", old) == b"whsec_x"
    assert opened == ["previous"]
    new = box.seal("wh_a", b"whsec_x")
    assert box.open_with("wh_a", new) == (b"whsec_x", 0)
    box.open("wh_a", new)
    assert opened == ["previous"]  # the current key: not counted
    # The new key alone opens the new value, not the old; the binding holds under any key.
    assert SecretBox(key(2)).open("wh_a", new) == b"whsec_x"
    with pytest.raises(SealError):
        SecretBox(key(2)).open("wh_a", old)
    with pytest.raises(SealError):
        box.open("wh_b", old)


def test_the_sealer_counts_what_opens_with_a_previous_key_by_value() -> None:
    metrics = MetricsRegistry(process_metrics=False)
    name = "relay_state_key_previous_opens_total"
    before = Sealer(key(1))
    rotated = Sealer(StateKeys(key(2), (key(1),)), metrics)
    assert metrics.counter(name, "", ["kind"]).value(kind="session_secret") == 0
    assert rotated.open("is_a", before.seal("is_a", MINTED)) == MINTED
    assert rotated.open_bytes("ctx", before.seal_bytes("ctx", b"{}")) == b"{}"
    rotated.open("is_a", rotated.seal("is_a", MINTED))
    counter = metrics.counter(name, "", ["kind"])
    assert counter.value(kind="session_secret") == 1
    assert counter.value(kind="idempotent_answer") == 1


def test_a_previous_key_equal_to_the_current_one_is_left_out(tmp_path: Path) -> None:
    text = [base64.b64encode(key(n)).decode() for n in (1, 2)]
    cluster = ClusterConfig(state_key=text[0], previous_state_keys=(text[1], text[0], text[1]))
    assert load_state_keys(cluster, tmp_path) == StateKeys(key(1), (key(2),))
    # With the key in the data directory, the previous keys come from the settings alike.
    generated = load_state_keys(ClusterConfig(previous_state_keys=(text[1],)), tmp_path / "d")
    assert generated.current == load_or_create_key("", tmp_path / "d")
    assert generated.previous == (key(2),)
