"""The webhooks' API and command line against a whole relay (real PostgreSQL, a real
receiver on loopback verifying signatures with `standardwebhooks`): endpoints, the secret
shown once, disable/enable, test events, the delivery log, redelivery, metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster_helpers import poll
from tests.integration.conftest import MakeRelay
from tests.integration.relay_harness import OPERATOR_TOKEN, STATE_KEY, RelayHarness
from tests.integration.test_webhooks import LOOPBACK, emit
from tests.integration.webhook_receiver import OPERATOR, deliveries, receiver, register
from tests.support.relay_cli import foreign_free_environ, run_relay


async def call(
    relay: RelayHarness, method: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    headers = kwargs.pop("headers", OPERATOR)
    async with relay.client.request(method, path, json=body, headers=headers, **kwargs) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def test_endpoints_are_managed_and_the_secret_is_shown_once(make_relay: MakeRelay) -> None:
    relay = await make_relay(overrides={"webhooks": {"allow_insecure_loopback": True}})
    hook = {"url": "http://127.0.0.1:9/a", "events": ["recording.ready", "interview.completed"]}

    status, body = await call(relay, "POST", "/api/webhooks", hook, headers={})
    assert status == 401 and body["error"]["code"] == "missing_token"
    status, body = await call(relay, "GET", "/api/webhooks", headers={"Authorization": "Bearer x"})
    assert status == 401 and body["error"]["code"] == "invalid_token"

    for bad, code in [
        ({**hook, "events": []}, "invalid_request"),
        ({**hook, "events": ["interview.exploded"]}, "invalid_events"),
        ({**hook, "colour": "blue"}, "invalid_request"),
        ({**hook, "enabled": "yes"}, "invalid_request"),
        ({"events": ["*"]}, "invalid_request"),
        # Text PostgreSQL refuses (NUL) and URLs urlsplit would read only in part.
        ({**hook, "description": "a\u0000b"}, "invalid_request"),
        ({**hook, "url": "http://127.0.0.1:9/\u0000"}, "invalid_url"),
        ({**hook, "url": "http://127.0.0.1:9/a\r\nX-Injected: 1"}, "invalid_url"),
        ({**hook, "url": "http://127.0.0.1:9/a b"}, "invalid_url"),
    ]:
        status, body = await call(relay, "POST", "/api/webhooks", bad)
        assert (status, body["error"]["code"]) == (400, code), (bad, body)
        assert body["request_id"].startswith("req_")
    async with relay.client.post(
        "/api/webhooks", data=b"{not json", headers=OPERATOR | {"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_json"

    status, created = await call(relay, "POST", "/api/webhooks", hook)
    assert status == 201, created
    assert re.fullmatch(r"wh_[0-9a-f]{32}", created["id"])
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{32}", created["secret"])
    assert created["events"] == hook["events"] and created["enabled"] is True
    [row] = await relay.sql("SELECT secret_sealed FROM webhook_endpoints")
    assert created["secret"].encode() not in row["secret_sealed"]
    assert created["secret"][6:].encode() not in row["secret_sealed"]

    status, got = await call(relay, "GET", f"/api/webhooks/{created['id']}")
    assert status == 200 and "secret" not in got and got["url"] == hook["url"]
    for _ in range(2):
        await call(relay, "POST", "/api/webhooks", {**hook, "events": ["*"]})
    status, page = await call(relay, "GET", "/api/webhooks?limit=2")
    assert status == 200 and len(page["items"]) == 2 and page["next_cursor"]
    assert all("secret" not in item for item in page["items"])
    status, rest = await call(relay, "GET", f"/api/webhooks?limit=2&cursor={page['next_cursor']}")
    assert [i["id"] for i in rest["items"]] == [created["id"]] and rest["next_cursor"] is None
    status, body = await call(relay, "GET", "/api/webhooks?cursor=bm9wZQ")
    assert status == 400 and body["error"]["code"] == "invalid_cursor"

    status, changed = await call(
        relay, "PATCH", f"/api/webhooks/{created['id']}", {"enabled": False, "events": ["*"]}
    )
    assert status == 200 and changed["enabled"] is False and changed["events"] == ["*"]
    status, body = await call(
        relay, "PATCH", f"/api/webhooks/{created['id']}", {"url": "http://10.0.0.1/x"}
    )
    assert status == 400 and body["error"]["code"] == "invalid_url"
    status, body = await call(
        relay, "PATCH", f"/api/webhooks/{created['id']}", {"description": "a\u0000b"}
    )
    assert status == 400 and body["error"]["code"] == "invalid_request", body

    status, _ = await call(relay, "DELETE", f"/api/webhooks/{created['id']}")
    assert status == 204
    for path in (f"/api/webhooks/{created['id']}", "/api/webhooks/wh_nope"):
        status, body = await call(relay, "GET", path)
        assert status == 404 and body["error"]["code"] == "webhook_not_found"


async def test_a_disabled_endpoint_queues_nothing_new_and_gets_its_backlog_when_enabled(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        up = False
        rec.answer = lambda _: 200 if up else 500
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        endpoint = await register(relay, rec)
        [backlog] = await emit(database_url, [("interview.started", "iv_d", {"n": 0})])
        await rec.wait_for(lambda got: len(got) >= 1, 10)
        status, _ = await call(
            relay, "PATCH", f"/api/webhooks/{endpoint['id']}", {"enabled": False}
        )
        assert status == 200
        [skipped] = await emit(database_url, [("interview.completed", "iv_d", {"n": 1})])

        async def dispatched() -> bool:
            rows = await relay.sql(
                "SELECT dispatched_at FROM webhook_events WHERE id = $1", skipped
            )
            return rows[0]["dispatched_at"] is not None

        await poll(dispatched, 10, "the event fanned out while the endpoint is disabled")
        up = True
        status, _ = await call(relay, "PATCH", f"/api/webhooks/{endpoint['id']}", {"enabled": True})
        await rec.wait_for(lambda got: any(r.status == 200 for r in got), 60)

        async def recorded() -> Any:
            # The receiver has it; the relay records the outcome once the answer is back.
            log = await deliveries(relay, endpoint["id"])
            return log if log and log[0]["last_status_code"] == 200 else None

        log = await poll(recorded, 10, "the backlog's delivery recorded")

    assert [d["event_id"] for d in log] == [backlog]
    assert log[0]["status"] == "delivered"
    assert {r.webhook_id for r in rec.verified()} == {backlog}


async def test_test_events_the_delivery_log_and_redelivery(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        endpoint = await register(relay, rec, ["recording.ready"])
        path = f"/api/webhooks/{endpoint['id']}"

        status, tested = await call(relay, "POST", f"{path}/test")
        assert status == 200, tested
        assert tested["event_type"] == "webhook.test" and tested["status"] == "delivered"
        assert [a["outcome"] for a in tested["attempt_log"]] == ["delivered"]
        [probe] = rec.verified()
        assert probe.type == "webhook.test" and probe.data == {"endpoint_id": endpoint["id"]}

        rec.answer = lambda _: 500
        status, failed = await call(relay, "POST", f"{path}/test")
        assert status == 200 and failed["status"] == "failed"  # a test is never retried
        assert failed["last_status_code"] == 500 and failed["last_error"] == "HTTP 500: nope"

        rec.answer = lambda _: 200
        [event_id] = await emit(database_url, [("recording.ready", "iv_l", {"recording_id": "r"})])
        await rec.wait_for(lambda got: got[-1].webhook_id == event_id, 10)

        async def delivered() -> Any:
            # The receiver has it; the relay records the outcome once the answer is back.
            log = await deliveries(relay, endpoint["id"])
            [delivery] = [d for d in log if d["event_id"] == event_id]
            return delivery if delivery["status"] == "delivered" else None

        delivery = await poll(delivered, 10, "the delivery recorded")
        assert delivery["interview_id"] == "iv_l"

        status, again = await call(relay, "POST", f"{path}/deliveries/{delivery['id']}/redeliver")
        # As the call left it: due again, not yet taken by the dispatcher it woke.
        assert status == 202 and (again["status"], again["in_flight"]) == ("pending", False)
        await rec.wait_for(lambda got: [r.webhook_id for r in got].count(event_id) == 2, 10)

        async def redelivered() -> Any:
            status, one = await call(relay, "GET", f"{path}/deliveries/{delivery['id']}")
            return one if one["status"] == "delivered" and one["attempts"] == 2 else None

        one = await poll(redelivered, 10, "the redelivery recorded")
        status, only = await call(relay, "GET", f"{path}/deliveries?status=failed")
        assert [d["event_type"] for d in only["items"]] == ["webhook.test"]
        for bad, code in [
            (f"{path}/deliveries?status=lost", "invalid_parameter"),
            (f"{path}/deliveries/whd_{'0' * 32}", "delivery_not_found"),
            ("/api/webhooks/wh_" + "0" * 32 + "/deliveries", "webhook_not_found"),
        ]:
            status, body = await call(relay, "GET", bad)
            assert body["error"]["code"] == code, body

    stamps = [r.headers["webhook-timestamp"] for r in rec.received if r.webhook_id == event_id]
    assert len(stamps) == 2  # each attempt signs its own time
    assert [a["outcome"] for a in one["attempt_log"]] == ["delivered", "delivered"]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = (
        rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? (\S+)$" if want else rf"^{name} (\S+)$"
    )
    match = re.search(pattern, text, re.MULTILINE)
    return float(match[1]) if match else 0.0


async def scrape(relay: RelayHarness) -> str:
    async with relay.client.get("/metrics", headers=OPERATOR) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_metrics_count_attempts_by_outcome_and_show_the_outbox_depth(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        up = False
        rec.answer = lambda _: 200 if up else 500
        relay = await make_relay(overrides={"webhooks": LOOPBACK | {"retry_base_s": 0.2}})
        await register(relay, rec)
        await emit(database_url, [("interview.failed", "iv_m", {"end_reason": "x"})])
        await rec.wait_for(lambda got: len(got) >= 2, 10)

        async def waiting(depth: float) -> bool:
            text = await scrape(relay)
            return metric(text, "relay_webhooks_outbox_depth", stage="delivery") == depth

        await poll(lambda: waiting(1), 10, "an outbox depth of 1")
        up = True
        await rec.wait_for(lambda got: got[-1].status == 200, 10)
        await poll(lambda: waiting(0), 10, "an empty outbox")
        text = await scrape(relay)

    rejected = len(rec.received) - 1
    assert metric(text, "relay_webhooks_attempts_total", outcome="rejected") == rejected
    assert metric(text, "relay_webhooks_attempts_total", outcome="delivered") == 1
    count = "relay_webhooks_attempt_duration_seconds_count"
    assert metric(text, count, outcome="delivered") == 1
    assert metric(text, count, outcome="rejected") == rejected
    assert metric(text, "relay_webhooks_outbox_depth", stage="event") == 0


async def test_a_delivery_is_given_up_after_retry_for_s(
    make_relay: MakeRelay, database_url: str
) -> None:
    async with receiver() as rec:
        rec.answer = lambda _: 503
        relay = await make_relay(
            overrides={"webhooks": LOOPBACK | {"retry_base_s": 0.1, "retry_for_s": 1.0}}
        )
        endpoint = await register(relay, rec)
        await emit(database_url, [("interview.expired", "iv_g", {"interview_id": "iv_g"})])

        async def given_up() -> list[dict[str, Any]]:
            log = await deliveries(relay, endpoint["id"])
            return log if log and log[0]["status"] == "failed" else []

        [delivery] = await poll(given_up, 15, "the delivery given up")
        attempts = len(rec.received)

    assert delivery["attempts"] == attempts >= 2
    assert delivery["last_error"] == "HTTP 503: nope"
    assert relay.counter("relay_webhooks_given_up_total") == 1


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    env = foreign_free_environ()
    return env | {
        "DATABASE_URL": database_url,
        # The relays of these tests seal with this key: an endpoint added by the command
        # line is one they can sign for.
        "RELAY__CLUSTER__STATE_KEY": STATE_KEY,
        "RELAY__WEBHOOKS__ALLOW_INSECURE_LOOPBACK": "true",
        "RELAY_OPERATOR_TOKEN": OPERATOR_TOKEN,
    }


async def test_the_command_line_adds_lists_tests_disables_and_removes(
    make_relay: MakeRelay, database_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    async with receiver() as rec:
        code, out, err = await run_relay(
            "webhooks",
            "add",
            "--url",
            rec.url,
            "--events",
            "recording.ready,recording.failed",
            env=cli_env,
            cwd=tmp_path,
        )
        assert code == 0, err
        lines = out.strip().splitlines()
        rec.secret = lines[-1]
        assert re.fullmatch(r"whsec_\S+", rec.secret)
        endpoint_id = re.search(r"wh_[0-9a-f]{32}", lines[0])[0]  # type: ignore[index]

        code, out, err = await run_relay("webhooks", "test", endpoint_id, env=cli_env, cwd=tmp_path)
        assert code == 0, err
        [probe] = rec.verified()  # signed with the secret the command printed
        assert probe.type == "webhook.test" and probe.webhook_id in out

        # A relay with the same state key signs this endpoint's deliveries too.
        relay = await make_relay(overrides={"webhooks": LOOPBACK})
        [event_id] = await emit(database_url, [("recording.failed", None, {"reason": "x"})])
        await rec.wait_for(lambda got: got[-1].webhook_id == event_id, 10)
        assert rec.verified()[-1].data == {"reason": "x"}

        code, out, _ = await run_relay(
            "webhooks", "disable", endpoint_id, env=cli_env, cwd=tmp_path
        )
        assert code == 0 and "disabled" in out
        code, out, _ = await run_relay("webhooks", "list", env=cli_env, cwd=tmp_path)
        assert code == 0 and endpoint_id in out and "disabled" in out and rec.url in out
        assert rec.secret not in out

        code, _, err = await run_relay(
            "webhooks",
            "add",
            "--url",
            "https://10.0.0.8/h",
            "--events",
            "*",
            env=cli_env,
            cwd=tmp_path,
        )
        assert code == 2 and "10.0.0.8 is private or reserved" in err
        code, _, err = await run_relay(
            "webhooks",
            "add",
            "--url",
            rec.url,
            "--events",
            "interview.exploded",
            env=cli_env,
            cwd=tmp_path,
        )
        assert code == 2 and "unknown interview.exploded" in err

        code, out, _ = await run_relay("webhooks", "remove", endpoint_id, env=cli_env, cwd=tmp_path)
        assert code == 0
        code, _, err = await run_relay("webhooks", "test", endpoint_id, env=cli_env, cwd=tmp_path)
        assert code == 1 and "No webhook endpoint" in err
        assert await relay.sql("SELECT id FROM webhook_endpoints") == []
