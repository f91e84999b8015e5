"""The management commands as an operator runs them (`python -m relay …` as a real
process) against a real PostgreSQL: keys, interviews, users (the lost-token recovery),
and the refusal to create a new embedded database where none exists."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import asyncpg
import pytest

from relay.admission.tokens import hash_token
from tests.support.relay_cli import foreign_free_environ, run_relay
from tests.support.silent_database import silent_database


def _env(database_url: str | None, data_dir: Path) -> dict[str, str]:
    env = foreign_free_environ()
    env["RELAY__SERVER__DATA_DIR"] = str(data_dir)
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


async def _relay(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    return await run_relay(*args, env=env, cwd=cwd)


async def test_a_command_in_a_folder_without_a_database_says_so_and_creates_none(
    tmp_path: Path,
) -> None:
    env = _env(None, tmp_path / ".relay")
    for args in (
        ("users", "add", "--email", "x@example.test"),
        ("users", "list"),
        ("keys", "create", "--name", "ci"),
        ("interviews", "list"),
        ("db", "migrate"),
    ):
        code, out, err = await _relay(env, tmp_path, *args)
        assert code == 2, (args, out, err)
        assert "no relay database in" in err and "--data-dir" in err and "--create" in err, err
        assert str((tmp_path / ".relay").resolve()) in err
        assert "Traceback" not in err
    assert not (tmp_path / ".relay").exists()


async def test_keys_create_list_revoke(database_url: str, tmp_path: Path) -> None:
    env = _env(database_url, tmp_path / "state")
    code, out, err = await _relay(env, tmp_path, "keys", "create", "--name", "backend")
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert key.startswith("rk_") and out.count(key) == 1
    code, out, err = await _relay(
        env, tmp_path, "keys", "create", "--name", "reports", "--scope", "read"
    )
    assert code == 0, err
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, scope, key_hash FROM api_keys ORDER BY created_at")
    finally:
        await conn.close()
    assert [r["scope"] for r in rows] == ["admin", "read"]
    assert rows[0]["key_hash"] == hash_token(key)
    code, out, _ = await _relay(env, tmp_path, "keys", "list")
    assert code == 0 and "backend" in out and "reports" in out and key not in out
    code, out, err = await _relay(env, tmp_path, "keys", "revoke", "--id", rows[0]["id"])
    assert code == 0 and "revoked" in out, err
    code, out, _ = await _relay(env, tmp_path, "keys", "list")
    assert "backend" not in out and "reports" in out
    code, out, _ = await _relay(env, tmp_path, "keys", "list", "--all")
    assert "backend" in out and "revoked" in out
    code, _, err = await _relay(env, tmp_path, "keys", "revoke", "--id", "key_0000000000000000")
    assert code == 1 and "no key" in err


async def test_interviews_create_list_show_cancel(database_url: str, tmp_path: Path) -> None:
    env = _env(database_url, tmp_path / "state")
    instructions = tmp_path / "role.txt"
    instructions.write_text("Ask about Rust lifetimes.\n")
    code, out, err = await _relay(
        env,
        tmp_path,
        "interviews",
        "create",
        "--email",
        "kim@example.test",
        "--instructions-file",
        str(instructions),
        "--language",
        "de",
        "--max-duration",
        "900",
        "--no-recording",
        "--metadata",
        '{"role": "rust"}',
        "--public-url",
        "https://interviews.example.test",
    )
    assert code == 0, err
    url = out.strip().splitlines()[-1]
    assert url.startswith("https://interviews.example.test/#invite=ri_"), out
    interview_id = out.split("created interview ", 1)[1].split()[0]
    code, out, err = await _relay(
        env, tmp_path, "interviews", "list", "--email", "kim@example.test"
    )
    assert code == 0 and interview_id in out and "scheduled" in out, err
    code, out, err = await _relay(env, tmp_path, "interviews", "show", "--id", interview_id)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["instructions"] == "Ask about Rust lifetimes.\n"
    assert (shown["language"], shown["max_duration_s"], shown["recording"]) == ("de", 900, False)
    assert shown["metadata"] == {"role": "rust"} and shown["created_by"] == "cli"
    assert shown["candidate_url"] is None  # the invite is shown once
    code, out, err = await _relay(env, tmp_path, "interviews", "cancel", "--id", interview_id)
    assert code == 0 and f"cancelled {interview_id}" in out, err
    code, _, err = await _relay(env, tmp_path, "interviews", "cancel", "--id", interview_id)
    assert code == 0, err  # cancelling a cancelled interview changes nothing
    # The same validation as the API, naming the field.
    code, _, err = await _relay(
        env,
        tmp_path,
        "interviews",
        "create",
        "--email",
        "kim@example.test",
        "--instructions",
        "x",
        "--language",
        "german",
    )
    assert code == 2 and err.startswith("language:"), err


async def test_the_lost_token_recovery_works(database_url: str, tmp_path: Path) -> None:
    env = _env(database_url, tmp_path / "state")
    email = "lost@example.test"
    code, out, err = await _relay(env, tmp_path, "users", "add", "--email", email)
    assert code == 0, err
    first = out.strip().splitlines()[-1]
    # Adding again refuses, and says how to replace a lost token.
    code, _, err = await _relay(env, tmp_path, "users", "add", "--email", email)
    assert code == 1 and f"relay users reissue --email {email}" in err
    code, out, err = await _relay(env, tmp_path, "users", "reissue", "--email", email)
    assert code == 0, err
    second = out.strip().splitlines()[-1]
    assert second.startswith("rt_") and second != first
    # The documented way after a revocation: revoke, then add again.
    code, _, err = await _relay(env, tmp_path, "users", "revoke", "--email", email)
    assert code == 0, err
    code, out, err = await _relay(
        env, tmp_path, "users", "add", "--email", email, "--seconds", "120"
    )
    assert code == 0 and "reactivated" in out, err
    third = out.strip().splitlines()[-1]
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT active, remaining_seconds, token_hash FROM users WHERE email = $1", email
        )
    finally:
        await conn.close()
    assert row is not None and row["active"] and row["remaining_seconds"] == 120
    assert row["token_hash"] == hash_token(third)
    code, out, err = await _relay(env, tmp_path, "users", "credit", "--email", email, "--add", "30")
    assert code == 0 and "150s" in out, err
    code, out, err = await _relay(env, tmp_path, "users", "show", "--email", email)
    assert code == 0 and json.loads(out)["remaining_seconds"] == 150, err
    code, _, _ = await _relay(env, tmp_path, "users", "revoke", "--email", email)
    code, out, err = await _relay(env, tmp_path, "users", "list", "--inactive")
    assert code == 0 and email in out and "revoked" in out, err
    code, out, err = await _relay(env, tmp_path, "users", "reactivate", "--email", email)
    assert code == 0 and "active" in out, err
    code, _, err = await _relay(env, tmp_path, "users", "reissue", "--email", "no@example.test")
    assert code == 1 and "no user" in err


async def test_users_add_checks_the_address_and_seconds_as_import_and_the_api_do(
    database_url: str, tmp_path: Path
) -> None:
    env = _env(database_url, tmp_path / "state")
    for email in ("", "notanemail", "a b@x.test", "a@b@x.test", "@x.test"):
        code, _, err = await _relay(env, tmp_path, "users", "add", "--email", email)
        assert code == 2 and err.startswith("--email: ") and "Traceback" not in err, err
        assert "is not an email address" in err, err
        # The same address in a file is refused by `users import` too: one rule.
        csv_file = tmp_path / "users.csv"
        csv_file.write_text(f'email\n"{email}"\n', encoding="utf-8")
        out_file = tmp_path / "tokens.csv"
        code, _, err = await _relay(
            env, tmp_path, "users", "import", "--file", str(csv_file), "--tokens-out", str(out_file)
        )
        assert code == 2 and ("is not an email address" in err or "no email" in err), err
    # Spaces around an address are dropped, as import drops them.
    code, out, err = await _relay(env, tmp_path, "users", "add", "--email", " spaced@x.test ")
    assert code == 0 and "<spaced@x.test>" in out, err
    for seconds in ("99999999999", "-1", "2147483648"):
        code, _, err = await _relay(
            env, tmp_path, "users", "add", "--email", "n@x.test", "--seconds", seconds
        )
        assert (code, err) == (2, "--seconds must be within 0..2147483647\n")
        code, _, err = await _relay(
            env, tmp_path, "users", "credit", "--email", "spaced@x.test", "--seconds", seconds
        )
        assert (code, err) == (2, "--seconds must be within 0..2147483647\n")
    code, _, err = await _relay(
        env, tmp_path, "users", "credit", "--email", "spaced@x.test", "--add", "99999999999"
    )
    assert (code, err) == (2, "--add must be within -2147483647..2147483647\n")
    conn = await asyncpg.connect(database_url)
    try:
        emails = await conn.fetch("SELECT email, remaining_seconds FROM users")
    finally:
        await conn.close()
    assert [tuple(r) for r in emails] == [("spaced@x.test", 1800)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ["db", "migrate"],
        ["users", "add", "--email", "a@example.test"],
        ["users", "list"],
        ["keys", "list"],
    ],
)
async def test_a_database_that_is_down_or_silent_exits_3_with_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    env = _env(None, tmp_path / "state")
    env["RELAY__DATABASE__CONNECT_TIMEOUT_S"] = "0.5"
    refused = f"postgresql://relay@127.0.0.1:{_closed_port()}/relay"
    code, _, err = await run_relay(*command, env={**env, "DATABASE_URL": refused}, cwd=tmp_path)
    assert code == 3, err
    assert err.startswith("database unavailable: ") and err.count("\n") == 1, err
    async with silent_database() as silent:
        code, _, err = await run_relay(*command, env={**env, "DATABASE_URL": silent}, cwd=tmp_path)
    assert code == 3, err
    assert err.count("\n") == 1, err
    assert "did not answer within database.connect_timeout_s = 0.5 s" in err, err


async def test_interviews_delete_and_users_delete_erase_through_the_relays(
    database_url: str, tmp_path: Path
) -> None:
    """The commands mark (one transaction, as the API does); a running relay's
    housekeeping removes the rest. Here no relay runs: the rows stay marked, gone for
    every command and the API, the candidate link and the user's token dead."""
    env = _env(database_url, tmp_path / "state")
    email = "erase@example.test"
    code, out, err = await _relay(
        env, tmp_path, "interviews", "create", "--email", email, "--instructions", "Hi."
    )
    assert code == 0, err
    first = out.split("created interview ", 1)[1].split()[0]
    code, out, err = await _relay(
        env, tmp_path, "interviews", "create", "--email", email, "--instructions", "Again."
    )
    assert code == 0, err
    second = out.split("created interview ", 1)[1].split()[0]

    code, out, err = await _relay(env, tmp_path, "interviews", "delete", "--id", first)
    assert code == 0 and f"deleting {first}" in out, err
    code, _, err = await _relay(env, tmp_path, "interviews", "delete", "--id", first)
    assert code == 1 and f"no interview {first}" in err
    code, _, err = await _relay(env, tmp_path, "interviews", "show", "--id", first)
    assert code == 1, err
    code, out, err = await _relay(env, tmp_path, "interviews", "list", "--email", email)
    assert code == 0 and first not in out and second in out, err

    code, out, err = await _relay(env, tmp_path, "users", "delete", "--email", email)
    assert code == 0 and "deleting user" in out, err
    code, _, err = await _relay(env, tmp_path, "users", "show", "--email", email)
    assert code == 1 and "no user" in err
    code, _, err = await _relay(env, tmp_path, "users", "delete", "--email", email)
    assert code == 1 and "no user" in err
    # Not brought back while it is erased.
    code, _, err = await _relay(env, tmp_path, "users", "add", "--email", email)
    assert code == 1 and "being erased" in err
    # Nor invited again (the API's 409 user_being_erased): one line, no traceback.
    code, _, err = await _relay(
        env, tmp_path, "interviews", "create", "--email", email, "--instructions", "Third."
    )
    assert code == 1 and "being erased" in err and "Traceback" not in err, err
    conn = await asyncpg.connect(database_url)
    try:
        marked = await conn.fetch(
            "SELECT id FROM interviews WHERE erase_requested_at IS NOT NULL ORDER BY id"
        )
        user = await conn.fetchrow(
            "SELECT active, erase_requested_at FROM users WHERE email = $1", email
        )
    finally:
        await conn.close()
    assert sorted(r["id"] for r in marked) == sorted([first, second])
    assert user is not None and not user["active"] and user["erase_requested_at"] is not None
