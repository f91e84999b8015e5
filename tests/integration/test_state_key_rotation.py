"""Rotating the state key (docs/operations.md, "Rotating the state key") against whole relays
on one real PostgreSQL: what key A sealed is read by a relay given key B with A as a previous
key; `relay state-key reseal` (a real process) seals it again under B, after which a relay
given B alone reads it. Webhook signatures are checked by the receiver with the Standard
Webhooks reference implementation, not with the relay's code."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from relay import state_key
from relay.cluster.sealing import Sealer
from relay.sealing import SecretBox, StateKeys
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import STATE_KEY, RelayHarness
from tests.integration.test_webhooks import LOOPBACK
from tests.integration.test_webhooks_rotation import call, probe, rotate, verifies
from tests.integration.webhook_receiver import OPERATOR, receiver, register
from tests.support.relay_cli import foreign_free_environ, run_relay

KEY_A = STATE_KEY  # what the harness's relays seal with
KEY_B = base64.b64encode(b"the-new-state-key-of-32-bytes..."[:32]).decode()
KEY_C = base64.b64encode(b"a-key-nobody-configured-32-bytes"[:32]).decode()
PREVIOUS_OPENS = "relay_state_key_previous_opens_total"


def with_keys(current: str, *previous: str) -> dict[str, dict[str, Any]]:
    return {
        "webhooks": LOOPBACK,
        "cluster": {"state_key": current, "previous_state_keys": previous},
    }


async def reseal(database_url: str, cwd: Path, current: str, *previous: str) -> tuple[int, str]:
    """`relay state-key reseal` with these keys: (exit code, stdout + stderr)."""
    env = foreign_free_environ() | {
        "DATABASE_URL": database_url,
        "RELAY__CLUSTER__STATE_KEY": current,
        "RELAY__CLUSTER__PREVIOUS_STATE_KEYS": json.dumps(previous),
    }
    code, out, err = await run_relay("state-key", "reseal", "--batch-size", "2", env=env, cwd=cwd)
    return code, out + err


def counts(output: str, label: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(label + ":")]
    return line.removeprefix(label + ": ")


async def test_webhook_secrets_sealed_under_the_old_key_sign_through_a_rotation_and_reseal(
    make_relay: MakeRelay, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiver() as rec:
        before = await make_relay(overrides=with_keys(KEY_A), instance_id="before")
        # Three endpoints (more than one batch of 2), one of them rotated with an overlap:
        # its previous secret, sealed under A too, still signs beside the new one.
        endpoints = [await register(before, rec) for _ in range(3)]
        first_secret = endpoints[2]["secret"]
        rotated = await rotate(before, endpoints[0]["id"], expire_previous_in_s=3600)

        with caplog.at_level(logging.INFO, logger="relay"):
            rotating = await make_relay(overrides=with_keys(KEY_B, KEY_A), instance_id="b+a")
        started = [r.getMessage() for r in caplog.records]
        assert any("state key: 1 previous key(s) configured" in m for m in started), started
        assert rotating.counter(PREVIOUS_OPENS, kind="webhook_secret") == 0
        rec.secret = first_secret
        delivered = await probe(rotating, rec, endpoints[2]["id"])
        assert verifies(delivered, first_secret)
        rec.secret = rotated["secret"]
        both = await probe(rotating, rec, endpoints[0]["id"])
        assert (
            verifies(both, rotated["secret"])
            and len(both.headers["webhook-signature"].split()) == 2
        )
        assert rotating.counter(PREVIOUS_OPENS, kind="webhook_secret") >= 2

        # Without A, B alone opens none of them yet: the previous key is what signed above.
        only_b = await make_relay(overrides=with_keys(KEY_B), instance_id="b")
        status, tested, _ = await call(only_b, "POST", f"/api/webhooks/{endpoints[2]['id']}/test")
        assert (status, tested["attempt_log"][0]["outcome"]) == (200, "error"), tested

        code, out = await reseal(database_url, tmp_path, KEY_B, KEY_A)
        assert code == 0, out
        assert counts(out, "webhook signing secrets") == (
            "3 resealed, 0 already under the current key, 0 unreadable"
        )
        assert counts(out, "webhook previous signing secrets").startswith("1 resealed, 0 already")

        # B alone now signs with each secret, the rotated endpoint's previous one included.
        rec.secret = first_secret
        assert verifies(await probe(only_b, rec, endpoints[2]["id"]), first_secret)
        rec.secret = rotated["secret"]
        both = await probe(only_b, rec, endpoints[0]["id"])
        assert len(both.headers["webhook-signature"].split()) == 2
        assert verifies(both, endpoints[0]["secret"])  # the previous secret's signature
        assert only_b.counter(PREVIOUS_OPENS) == 0

        # Again: nothing left to do.
        code, out = await reseal(database_url, tmp_path, KEY_B, KEY_A)
        assert code == 0, out
        assert counts(out, "webhook signing secrets") == (
            "0 resealed, 3 already under the current key, 0 unreadable"
        )


async def test_a_value_no_key_opens_is_reported_and_left_as_it_is(
    make_relay: MakeRelay, database_url: str, tmp_path: Path
) -> None:
    async with receiver() as rec:
        relay = await make_relay(overrides=with_keys(KEY_A))
        readable, lost = await register(relay, rec), await register(relay, rec)
        sealed_by_c = SecretBox(base64.b64decode(KEY_C)).seal(lost["id"], b"whsec_lost")
        await relay.sql(
            "UPDATE webhook_endpoints SET secret_sealed = $2 WHERE id = $1", lost["id"], sealed_by_c
        )

        code, out = await reseal(database_url, tmp_path, KEY_B, KEY_A)
        assert code == 1, out
        assert counts(out, "webhook signing secrets") == (
            "1 resealed, 0 already under the current key, 1 unreadable"
        )
        assert f"  unreadable: {lost['id']}" in out and readable["id"] not in out
        assert "relay webhooks rotate-secret" in out
        rows = await relay.sql(
            "SELECT secret_sealed FROM webhook_endpoints WHERE id = $1", lost["id"]
        )
        assert bytes(rows[0]["secret_sealed"]) == sealed_by_c  # untouched


async def test_an_idempotent_answer_sealed_under_the_old_key_replays_through_a_rotation(
    make_relay: MakeRelay, database_url: str, tmp_path: Path
) -> None:
    async with receiver() as rec:
        before = await make_relay(overrides=with_keys(KEY_A), instance_id="before")
        headers = {**OPERATOR, "Idempotency-Key": "register-hook-1"}
        body = {"url": rec.url, "events": ["*"]}
        async with before.client.post("/api/webhooks", json=body, headers=headers) as resp:
            assert resp.status == 201
            first = await resp.json()

        async def replay(relay: RelayHarness) -> tuple[int, Any, str | None]:
            async with relay.client.post("/api/webhooks", json=body, headers=headers) as resp:
                return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed")

        for other in ("register-hook-2", "register-hook-3"):  # more than one batch of 2
            async with before.client.post(
                "/api/webhooks", json=body, headers={**OPERATOR, "Idempotency-Key": other}
            ) as resp:
                assert resp.status == 201

        rotating = await make_relay(overrides=with_keys(KEY_B, KEY_A), instance_id="b+a")
        assert await replay(rotating) == (201, first, "true")  # the secret shown once, again
        assert rotating.counter(PREVIOUS_OPENS, kind="idempotent_answer") == 1
        only_b = await make_relay(overrides=with_keys(KEY_B), instance_id="b")
        status, refused, _ = await replay(only_b)
        assert (status, refused["error"]["code"]) == (409, "idempotency_key_unreadable")

        code, out = await reseal(database_url, tmp_path, KEY_B, KEY_A)
        assert code == 0, out
        assert counts(out, "stored idempotent answers").startswith("3 resealed")
        assert await replay(only_b) == (201, first, "true")
        # Replayed, never run again: the three requests made three endpoints, no more.
        assert len(await before.sql("SELECT id FROM webhook_endpoints")) == 3


async def test_a_pending_sessions_secret_is_resealed_and_opens_with_the_new_key(
    make_relay: MakeRelay, database_url: str, tmp_path: Path
) -> None:
    relay = await make_relay(overrides=with_keys(KEY_A))
    token = await relay.add_user()
    status, created, _ = await relay.create_session(token)
    assert status == 201, created
    session_id = created["session_id"]

    code, out = await reseal(database_url, tmp_path, KEY_B, KEY_A)
    assert code == 0, out
    assert counts(out, "pending sessions' upstream secrets").startswith("1 resealed")
    (row,) = await relay.sql(
        "SELECT minted_sealed FROM interview_sessions WHERE id = $1", session_id
    )
    minted = Sealer(base64.b64decode(KEY_B)).open(session_id, bytes(row["minted_sealed"]))
    assert minted.secret.startswith("ek_")


async def test_a_value_rewritten_between_the_read_and_the_write_keeps_its_writers_value(
    make_relay: MakeRelay,
) -> None:
    """The reseal writes a row back only if it still holds what was read (a compare-and-set
    per row): a rotation by a running relay meanwhile is never overwritten."""
    async with receiver() as rec:
        relay = await make_relay(overrides=with_keys(KEY_B, KEY_A))
        endpoints = [await register(relay, rec) for _ in range(2)]
        box_a = SecretBox(base64.b64decode(KEY_A))
        for endpoint in endpoints:  # both sealed under A, as before a rotation
            await relay.sql(
                "UPDATE webhook_endpoints SET secret_sealed = $2 WHERE id = $1",
                endpoint["id"],
                box_a.seal(endpoint["id"], endpoint["secret"].encode()),
            )
        spec = state_key.COLUMNS[0]
        read = await state_key._read_batch(relay.services.store, spec, "id", None, 10)
        rotated = await rotate(relay, endpoints[0]["id"], expire_previous_in_s=0)
        box = SecretBox(StateKeys(base64.b64decode(KEY_B), (base64.b64decode(KEY_A),)))
        new = [box.seal(row["id"], box.open(row["id"], bytes(row["sealed"]))) for row in read]

        written = await state_key._write_batch(relay.services.store, spec, read, new)
        assert written == 1
        rows = await relay.sql("SELECT id, secret_sealed FROM webhook_endpoints ORDER BY id")
        opened = {r["id"]: box.open_with(r["id"], bytes(r["secret_sealed"])) for r in rows}
        assert opened[endpoints[0]["id"]] == (rotated["secret"].encode(), 0)  # the rotation's
        assert opened[endpoints[1]["id"]] == (endpoints[1]["secret"].encode(), 0)  # resealed


async def test_reseal_without_a_current_key_refuses_instead_of_making_one(
    make_relay: MakeRelay, database_url: str, tmp_path: Path
) -> None:
    """`relay state-key reseal` run where no state key is configured and none is in the
    data directory (another folder, RELAY__CLUSTER__STATE_KEY forgotten) must not make up a
    key, as `serve` does: it would seal every value again under a key no relay has, and
    every webhook endpoint's secret would be lost."""
    async with receiver() as rec:
        relay = await make_relay(overrides=with_keys(KEY_A))
        endpoint = await register(relay, rec)
        (before,) = await relay.sql(
            "SELECT secret_sealed FROM webhook_endpoints WHERE id = $1", endpoint["id"]
        )
        env = foreign_free_environ() | {
            "DATABASE_URL": database_url,
            "RELAY__CLUSTER__PREVIOUS_STATE_KEYS": json.dumps([KEY_A]),
        }
        code, out, err = await run_relay("state-key", "reseal", env=env, cwd=tmp_path)
        assert code == 2, out + err
        assert "cluster.state_key" in err
        assert not (tmp_path / ".relay" / "state.key").exists()
        (after,) = await relay.sql(
            "SELECT secret_sealed FROM webhook_endpoints WHERE id = $1", endpoint["id"]
        )
        assert bytes(after["secret_sealed"]) == bytes(before["secret_sealed"])
