"""Rotating a webhook endpoint's signing secret (POST /api/webhooks/{id}/rotate-secret,
``relay webhooks rotate-secret``) against a whole relay: real PostgreSQL, a real receiver on
loopback verifying signatures with `standardwebhooks` (not the relay's code). During the
overlap every delivery verifies with the old secret and with the new; after it, or with no
overlap, with the new one only."""

from __future__ import annotations

import json
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.sealing import SecretBox
from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import bearer, create_key
from tests.integration.relay_harness import OPERATOR_TOKEN, STATE_KEY, RelayHarness
from tests.integration.test_webhooks import LOOPBACK, emit
from tests.integration.webhook_receiver import (
    OPERATOR,
    Received,
    Receiver,
    deliveries,
    receiver,
    register,
)
from tests.support.relay_cli import foreign_free_environ, run_relay

SECRET = re.compile(r"whsec_[A-Za-z0-9+/]{32}")


async def call(
    relay: RelayHarness,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    async with relay.client.request(
        method, path, json=body, headers=OPERATOR if headers is None else headers
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def rotate(relay: RelayHarness, endpoint_id: str, **body: Any) -> dict[str, Any]:
    status, rotated, _ = await call(
        relay, "POST", f"/api/webhooks/{endpoint_id}/rotate-secret", body or None
    )
    assert status == 200, rotated
    assert SECRET.fullmatch(rotated["secret"])
    return dict(rotated)


def verifies(request: Received, secret: str) -> bool:
    """Whether Standard Webhooks' reference verifier accepts the request with ``secret``."""
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


async def probe(relay: RelayHarness, rec: Receiver, endpoint_id: str) -> Received:
    """A webhook.test event, as the receiver got it (whether it verified or not)."""
    before = len(rec.received)
    status, tested, _ = await call(relay, "POST", f"/api/webhooks/{endpoint_id}/test")
    assert status == 200, tested
    assert len(rec.received) == before + 1
    return rec.received[-1]


async def test_the_old_secret_signs_beside_the_new_one_until_the_overlap_ends(
    make_relay: MakeRelay, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with receiver() as rec:
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        endpoint = await register(relay, rec)
        old = rec.secret
        path = f"/api/webhooks/{endpoint['id']}"
        status, before, _ = await call(relay, "GET", path)
        assert before["secret_rotated_at"] is None
        assert before["previous_secret_expires_at"] is None

        key = {"Idempotency-Key": "rotate-1"}
        status, rotated, _ = await call(
            relay,
            "POST",
            f"{path}/rotate-secret",
            {"expire_previous_in_s": 3600},
            OPERATOR | key,
        )
        assert status == 200, rotated
        new = rotated["secret"]
        assert SECRET.fullmatch(new) and new != old
        assert rotated["id"] == endpoint["id"] and rotated["url"] == rec.url
        expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
        assert abs(expires - datetime.now(UTC) - timedelta(hours=1)) < timedelta(minutes=1)
        assert rotated["secret_rotated_at"] is not None
        # A retry with the same key answers the same secret, and rotates nothing again.
        status, again, headers = await call(
            relay,
            "POST",
            f"{path}/rotate-secret",
            {"expire_previous_in_s": 3600},
            OPERATOR | key,
        )
        assert status == 200 and again["secret"] == new
        assert headers["Idempotent-Replayed"] == "true"

        # The receiver has not switched yet: an event written after the rotation reaches it,
        # verified with the old secret (the receiver's own check).
        [event_id] = await emit(database_url, [("interview.started", "iv_r", {"n": 1})])
        await rec.wait_for(lambda got: any(r.webhook_id == event_id for r in got), 10)
        [during] = [r for r in rec.verified() if r.webhook_id == event_id]
        assert verifies(during, old) and verifies(during, new)
        assert len(during.headers["webhook-signature"].split(" ")) == 2

        # It switches when it likes, within the overlap.
        rec.secret = new
        tested = await probe(relay, rec, endpoint["id"])
        assert verifies(tested, new) and verifies(tested, old)

        # The overlap over (set in the past, by the database's clock the claim reads).
        await relay.sql(
            "UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 s'"
        )
        after = await probe(relay, rec, endpoint["id"])
        assert verifies(after, new) and not verifies(after, old)
        assert " " not in after.headers["webhook-signature"]
        status, got, _ = await call(relay, "GET", path)
        assert status == 200 and got["previous_secret_expires_at"] is None
        assert got["secret_rotated_at"] == rotated["secret_rotated_at"]
        # The expired one is dropped from the row by the dispatcher's hourly housekeeping.
        assert await relay.services.webhooks.endpoints.forget_expired_secrets() == 1
        [row] = await relay.sql("SELECT previous_secret_sealed FROM webhook_endpoints")
        assert row["previous_secret_sealed"] is None

        # Rotating during an overlap keeps only the secret just replaced.
        second = (await rotate(relay, endpoint["id"], expire_previous_in_s=600))["secret"]
        third = (await rotate(relay, endpoint["id"]))["secret"]  # the default overlap: a day
        rec.secret = third
        tested = await probe(relay, rec, endpoint["id"])
        assert verifies(tested, third) and verifies(tested, second)
        assert not verifies(tested, new) and not verifies(tested, old)

        # No overlap: the replaced secret stops at once.
        fourth_rotation = await rotate(relay, endpoint["id"], expire_previous_in_s=0)
        assert fourth_rotation["previous_secret_expires_at"] is None
        fourth = fourth_rotation["secret"]
        rec.secret = fourth
        tested = await probe(relay, rec, endpoint["id"])
        assert verifies(tested, fourth) and not verifies(tested, third)

        # Deliveries were never lost: every request the receiver got verified with the
        # secret it held then, and the log kept them all (nothing deleted by a rotation).
        assert all(r.status == 200 for r in rec.verified())
        log = await deliveries(relay, endpoint["id"])
        assert len(log) == len(rec.received) == 5

        # The secrets are in no answer but the rotation's, in no column in the clear, in no
        # log line.
        shown = [old, new, second, third, fourth]
        status, listed, _ = await call(relay, "GET", "/api/webhooks")
        status, one, _ = await call(relay, "GET", path)
        text = json.dumps([listed, one, log])
        rows = await relay.sql(
            "SELECT secret_sealed, previous_secret_sealed FROM webhook_endpoints"
        )
        stored = b"".join(v or b"" for v in rows[0].values())
        for secret in shown:
            assert secret not in text and secret[6:] not in text
            assert secret.encode() not in stored and secret[6:].encode() not in stored
            assert secret not in caplog.text and secret[6:] not in caplog.text


async def test_rotation_is_for_admins_on_known_endpoints_with_a_valid_body(
    make_relay: MakeRelay,
) -> None:
    relay = await make_relay(overrides={"webhooks": LOOPBACK})
    created = await register(relay, Receiver(url="http://127.0.0.1:9/hook"))
    path = f"/api/webhooks/{created['id']}/rotate-secret"
    reader = await create_key(relay, "read", "dashboard")
    status, body, _ = await call(relay, "POST", path, {}, bearer(reader))
    assert status == 403 and body["error"]["code"] == "insufficient_scope", body
    status, body, _ = await call(relay, "POST", path, {}, {})
    assert status == 401 and body["error"]["code"] == "missing_token", body
    for unknown in (f"wh_{'0' * 32}", "wh_nope"):
        status, body, _ = await call(relay, "POST", f"/api/webhooks/{unknown}/rotate-secret")
        assert status == 404 and body["error"]["code"] == "webhook_not_found", body
        assert body["request_id"].startswith("req_")
    for bad in (
        {"expire_previous_in_s": -1},
        {"expire_previous_in_s": 7 * 24 * 3600 + 1},
        {"expire_previous_in_s": "60"},
        {"expire_previous_in_s": 1.5},
        {"expire_previous_in_s": True},
        {"expire_previous_in_s": None},
        {"expire_previous": 60},
    ):
        status, body, _ = await call(relay, "POST", path, bad)
        assert (status, body["error"]["code"]) == (400, "invalid_request"), (bad, body)
        assert body["request_id"].startswith("req_")
    status, body, _ = await call(relay, "POST", path, [60])
    assert (status, body["error"]["code"]) == (400, "invalid_json"), body
    async with relay.client.post(
        path, data=b"{not json", headers=OPERATOR | {"Content-Type": "application/json"}
    ) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["error"]["code"] == "invalid_json", body
        assert body["request_id"].startswith("req_")
    # None of those changed the secret.
    [row] = await relay.sql("SELECT secret_rotated_at FROM webhook_endpoints")
    assert row["secret_rotated_at"] is None
    # The longest overlap is allowed; an empty body takes the default (a day).
    status, body, _ = await call(relay, "POST", path, {"expire_previous_in_s": 7 * 24 * 3600})
    assert status == 200, body
    rotated = await rotate(relay, created["id"])
    expires = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert abs(expires - datetime.now(UTC) - timedelta(days=1)) < timedelta(minutes=1)


async def test_the_command_line_rotates_and_prints_the_new_secret_once(
    make_relay: MakeRelay, database_url: str, tmp_path: Path
) -> None:
    env = foreign_free_environ() | {
        "DATABASE_URL": database_url,
        # The relay of this test seals with this key: the secret the command seals is one
        # it can sign with.
        "RELAY__CLUSTER__STATE_KEY": STATE_KEY,
        "RELAY__WEBHOOKS__ALLOW_INSECURE_LOOPBACK": "true",
        "RELAY_OPERATOR_TOKEN": OPERATOR_TOKEN,
    }
    async with receiver() as rec:
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        endpoint = await register(relay, rec)
        old = rec.secret
        code, out, err = await run_relay(
            "webhooks",
            "rotate-secret",
            endpoint["id"],
            "--expire-previous-in",
            "120",
            env=env,
            cwd=tmp_path,
        )
        assert code == 0, err
        lines = out.strip().splitlines()
        new = lines[-1]
        assert SECRET.fullmatch(new) and new != old and out.count(new) == 1
        assert endpoint["id"] in lines[0] and "until" in out and old not in out + err
        rec.secret = new
        tested = await probe(relay, rec, endpoint["id"])
        assert verifies(tested, new) and verifies(tested, old)

        code, _, err = await run_relay(
            "webhooks",
            "rotate-secret",
            endpoint["id"],
            "--expire-previous-in",
            "-5",
            env=env,
            cwd=tmp_path,
        )
        assert code == 2 and "expire_previous_in_s" in err
        code, _, err = await run_relay(
            "webhooks", "rotate-secret", f"wh_{'0' * 32}", env=env, cwd=tmp_path
        )
        assert code == 1 and "No webhook endpoint" in err


async def test_a_rotation_mends_an_endpoint_whose_secret_no_longer_opens(
    make_relay: MakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """The state key that sealed an endpoint's secret is lost (docs/operations.md,
    "Backups"): every attempt fails ``error``. Rotating gives it a secret sealed with this
    relay's key, and deliveries go out at once, signed with it, whatever the overlap: the
    replaced secret, which does not open, cannot sign beside it anyway."""
    async with receiver() as rec:
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        endpoint = await register(relay, rec)
        lost_key = SecretBox(secrets.token_bytes(32))
        await relay.sql(
            "UPDATE webhook_endpoints SET secret_sealed = $2 WHERE id = $1",
            endpoint["id"],
            lost_key.seal(endpoint["id"], rec.secret.encode()),
        )
        status, tested, _ = await call(relay, "POST", f"/api/webhooks/{endpoint['id']}/test")
        assert (status, tested["attempt_log"][0]["outcome"]) == (200, "error"), tested
        assert rec.received == []

        rotated = await rotate(relay, endpoint["id"])  # the default overlap: a day
        assert rotated["previous_secret_expires_at"] is not None
        rec.secret = rotated["secret"]
        with caplog.at_level(logging.WARNING, logger="relay.webhooks"):
            tested_after = await probe(relay, rec, endpoint["id"])
        assert verifies(tested_after, rotated["secret"])
        assert " " not in tested_after.headers["webhook-signature"]
        warned = [r.getMessage() for r in caplog.records]
        assert any("previous signing secret does not open" in m for m in warned), warned
