"""schemathesis against the running relay (real PostgreSQL, the simulator as upstream),
with an admin API key: every operation of GET /api/openapi.json, generated requests
valid and invalid, no 5xx, and every answer conforms to its documented status, content
type and schema. The candidate operations get an interview's invite instead (an API key
is no candidate credential), and path parameters are drawn now and then from real ids
(an interview, its candidate, a finished recording, a pending session, a key), so the
run reaches the handlers' work, not only their 404s. The OpenAI-compatible operations (tag
openai) get the invite too: a client secret is asked for with a candidate's credential.
Bounded: a fixed number of examples per operation and a fixed seed (a failure reproduces
with the same run)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

from tests.integration.conftest import MakeRelay
from tests.integration.interview_helpers import (
    bearer,
    call,
    create_interview,
    create_key,
    invite_of,
    join,
)
from tests.integration.recording_helpers import wait_recording
from tests.integration.relay_harness import NOTICE_CONFIRMED, RelayHarness

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)
MAX_EXAMPLES = 20
SEED = 21
RUN_TIMEOUT_S = 100


async def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    make_relay: MakeRelay, tmp_path: Path
) -> None:
    relay = await make_relay(
        overrides={
            # The generated requests send the admin key to candidate routes too: those are
            # failed authentications, which must not lock the run out.
            "limits": {"failed_auth_per_minute": 100_000, "per_user_requests_per_minute": 100_000}
        }
    )
    key = await create_key(relay)
    config = tmp_path / "schemathesis.toml"
    config.write_text(await _config(relay, key))
    schema_url = str(relay.client.make_url("/api/openapi.json"))
    program = Path(sys.executable).parent / "schemathesis"
    proc = await asyncio.create_subprocess_exec(
        str(program),
        "--config-file",
        str(config),
        "run",
        schema_url,
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--phases",
        "examples,coverage,fuzzing",
        # One worker: hypothesis parses lambdas' source with ast in each worker thread,
        # and CPython 3.11's parser is not safe across threads ("AST constructor recursion
        # depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-shrink",
        cwd=tmp_path,  # its .hypothesis database goes here
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report
    # Every generated case passed every check, and every operation was tested.
    counts = re.search(r"(\d+) generated, (\d+) passed", report)
    assert counts is not None and counts[1] == counts[2], report
    assert int(counts[1]) > 500, report
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected is not None and tested is not None, report
    assert selected[1] == selected[2] == tested[1], report


async def _config(relay: RelayHarness, key: str) -> str:
    """schemathesis.toml: the admin key, the invite for the candidate operations, and real
    ids to draw path parameters from."""
    interview = await create_interview(relay, key)
    invite = invite_of(interview)
    async with join(relay, invite) as joined:
        await call(relay, "DELETE", f"/api/sessions/{joined.session_id}", bearer(invite))
    recording = await wait_recording(relay, joined.session_id, "ready")
    status, pending, _ = await call(
        relay,
        "POST",
        "/api/realtime-session",
        bearer(invite_of(await create_interview(relay, key))),
        json=NOTICE_CONFIRMED,
    )
    assert status == 201, pending
    spare = await create_key(relay, "read", "revoked by the run, perhaps")
    # DELETE /api/keys/current revokes the key it is sent with: its own, not the run's.
    itself = await create_key(relay, "read", "its own revocation")
    status, keys, _ = await call(relay, "GET", "/api/keys")
    spare_id = next(k["id"] for k in keys["items"] if k["name"].startswith("revoked"))
    assert spare
    real = {
        "interview_id": [interview["id"]],
        "user_id": [str(interview["candidate"]["user_id"])],
        "id": [recording["id"]],
        "session_id": [joined.session_id, pending["session_id"]],
        "key_id": [spare_id],
    }
    lines = [f"headers = {{ Authorization = {json.dumps('Bearer ' + key)} }}", ""]
    for name, values in real.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(values)}", ""]
    lines.append("[parameters]")
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}' for name in real]
    # The candidate's operations, and the OpenAI-compatible ones (a client secret is asked
    # for with a candidate's credential), with the invite.
    for tag in ("candidate", "openai"):
        lines += [
            "",
            "[[operations]]",
            f'include-tag = "{tag}"',
            f"headers = {{ Authorization = {json.dumps('Bearer ' + invite)} }}",
        ]
    lines += [
        "",
        "[[operations]]",
        'include-operation-id = "revokeCurrentApiKey"',
        f"headers = {{ Authorization = {json.dumps('Bearer ' + itself)} }}",
    ]
    lines.append("")
    return "\n".join(lines)
