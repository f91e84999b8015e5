"""Simulator keys (standard and ephemeral with expiry) and session shapes per dialect."""

from __future__ import annotations

import pytest

from relay.upstream.simulator.errors import SimHttpError
from relay.upstream.simulator.keys import KeyStore, bearer_token
from relay.upstream.simulator.session_config import (
    beta_from_ga,
    beta_session,
    ga_from_beta,
    ga_session,
    merge_ga,
    turn_detection_of,
    voice_of,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(clock: Clock, *, accept_any: bool = False) -> KeyStore:
    return KeyStore({"sk-sim-local"}, accept_any_standard=accept_any, clock=clock)


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer sk-abc") == "sk-abc"
    assert bearer_token("bearer   ek_1 ") == "ek_1"
    assert bearer_token("Basic xyz") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_standard_keys() -> None:
    store = _store(Clock())
    store.require_standard("sk-sim-local")
    with pytest.raises(SimHttpError) as info:
        store.require_standard("sk-other-secret-value")
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    assert "sk-other-secret-value" not in info.value.message
    assert "sk-other-secret-value" not in repr(store)
    anyone = _store(Clock(), accept_any=True)
    anyone.require_standard("sk-other-secret-value")
    with pytest.raises(SimHttpError):
        anyone.require_standard("ek_not_standard")


@pytest.mark.parametrize(
    "token", ["sk-", "sk-x", "sk-short", "sk-has spaces in it!!", "sk-0123456789abcdef\u00e9x"]
)
def test_clearly_not_keys_are_refused_even_when_any_key_is_accepted(token: str) -> None:
    anyone = _store(Clock(), accept_any=True)
    with pytest.raises(SimHttpError) as info:
        anyone.require_standard(token)
    assert info.value.code == "invalid_api_key"
    anyone.require_standard("sk-proj-0123456789abcdefABCDEF")


def test_ephemeral_keys_are_forgotten_a_minute_after_expiry_and_bounded_in_number() -> None:
    clock = Clock()
    store = KeyStore({"sk-sim-local"}, accept_any_standard=False, clock=clock, max_keys=3)
    session = {"model": "gpt-realtime"}
    keys = [store.mint("ga", session, ttl_s=600) for _ in range(5)]
    assert len(store) == 3  # the two oldest were forgotten to make room
    with pytest.raises(SimHttpError) as info:
        store.require_call_credential(keys[0].value)
    assert "expired" not in info.value.message  # unknown now, not "expired"
    assert store.require_call_credential(keys[-1].value) is keys[-1]
    clock.now += 600 + 61
    store.mint("ga", session, ttl_s=600)
    assert len(store) == 1  # every expired key forgotten (it held a whole session config)


def test_eviction_takes_expired_keys_before_valid_ones() -> None:
    clock = Clock()
    store = KeyStore({"sk-sim-local"}, accept_any_standard=False, clock=clock, max_keys=3)
    session = {"model": "gpt-realtime"}
    oldest = store.mint("ga", session, ttl_s=600)
    short = store.mint("ga", session, ttl_s=10)
    store.mint("ga", session, ttl_s=600)
    clock.now += 11  # `short` expired, but is not yet forgotten by age
    store.mint("ga", session, ttl_s=600)
    assert len(store) == 3
    assert store.require_call_credential(oldest.value) is oldest  # still valid: kept
    with pytest.raises(SimHttpError) as info:
        store.require_call_credential(short.value)
    assert "expired" not in info.value.message  # forgotten, not merely expired


def test_eviction_takes_keys_used_for_a_call_before_unused_ones() -> None:
    clock = Clock()
    store = KeyStore({"sk-sim-local"}, accept_any_standard=False, clock=clock, max_keys=3)
    session = {"model": "gpt-realtime"}
    oldest, used, third = (store.mint("ga", session, ttl_s=600) for _ in range(3))
    assert store.require_call_credential(used.value) is used  # its call has started
    fourth = store.mint("ga", session, ttl_s=600)
    for key in (oldest, third, fourth):
        assert store.require_call_credential(key.value) is key
    with pytest.raises(SimHttpError):
        store.require_call_credential(used.value)


def test_eviction_takes_the_oldest_valid_key_only_as_a_last_resort() -> None:
    clock = Clock()
    store = KeyStore({"sk-sim-local"}, accept_any_standard=False, clock=clock, max_keys=2)
    session = {"model": "gpt-realtime"}
    first, second = (store.mint("ga", session, ttl_s=600) for _ in range(2))
    third = store.mint("ga", session, ttl_s=600)
    with pytest.raises(SimHttpError):
        store.require_call_credential(first.value)
    assert store.require_call_credential(second.value) is second
    assert store.require_call_credential(third.value) is third


def test_missing_key_is_401() -> None:
    with pytest.raises(SimHttpError) as info:
        _store(Clock()).require_call_credential(None)
    assert info.value.status == 401


def test_ephemeral_keys_expire() -> None:
    clock = Clock()
    store = _store(clock)
    session = ga_session({"type": "realtime"}, session_id="sess_1", default_model="gpt-realtime")
    key = store.mint("ga", session, 60)
    assert key.value.startswith("ek_") and key.expires_at == int(clock.now + 60)
    assert key.value not in repr(key)
    assert store.require_call_credential(key.value) == key
    assert store.require_call_credential("sk-sim-local") is None
    clock.now += 59
    store.require_call_credential(key.value)
    clock.now += 1
    with pytest.raises(SimHttpError) as info:
        store.require_call_credential(key.value)
    assert "expired" in info.value.message and key.value not in info.value.message
    with pytest.raises(SimHttpError) as unknown:
        store.require_call_credential("ek_" + "0" * 32)
    assert unknown.value.code == "invalid_api_key"
    with pytest.raises(SimHttpError):
        store.require_standard(key.value)  # an ek_ cannot mint


def test_ga_session_defaults() -> None:
    s = ga_session({"type": "realtime"}, session_id="sess_1", default_model="gpt-realtime")
    assert s["object"] == "realtime.session" and s["model"] == "gpt-realtime"
    assert s["output_modalities"] == ["audio"]
    assert s["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert s["audio"]["input"]["transcription"] is None
    disabled = ga_session(
        {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        session_id="sess_2",
        default_model="gpt-realtime",
    )
    assert turn_detection_of(disabled, "ga") is None


def test_merge_ga_keeps_model_and_merges_audio_sides() -> None:
    s = ga_session(
        {"type": "realtime", "audio": {"output": {"voice": "marin"}}},
        session_id="sess_1",
        default_model="gpt-realtime",
    )
    merged = merge_ga(
        s, {"type": "realtime", "audio": {"input": {"transcription": {"model": "x"}}}}
    )
    assert merged["audio"]["output"]["voice"] == "marin"
    assert merged["audio"]["input"]["transcription"] == {"model": "x"}
    assert s["audio"]["input"]["transcription"] is None  # the original is untouched


def test_dialect_conversion_keeps_what_matters() -> None:
    ga = ga_session(
        {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Interview.",
            "audio": {
                "input": {
                    "transcription": {"model": "whisper-1"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                },
                "output": {"voice": "cedar"},
            },
        },
        session_id="sess_1",
        default_model="gpt-realtime",
    )
    beta = beta_from_ga(ga)
    assert beta["voice"] == "cedar" and beta["instructions"] == "Interview."
    assert beta["turn_detection"]["silence_duration_ms"] == 700
    assert "idle_timeout_ms" not in beta["turn_detection"]
    assert beta["input_audio_transcription"] == {"model": "whisper-1"}
    back = ga_from_beta(beta)
    assert voice_of(back, "ga") == "cedar"
    turn = turn_detection_of(back, "ga")
    assert turn is not None and turn["silence_duration_ms"] == 700
    plain = beta_session({}, session_id="sess_3", default_model="gpt-4o-realtime-preview")
    assert plain["model"] == "gpt-4o-realtime-preview" and plain["voice"] == "alloy"
