"""`relay users import`: many users from a CSV in one transaction, tokens to a 0600 file;
a taken email or a bad line adds nobody and leaves no tokens file behind."""

from __future__ import annotations

import csv
import stat
from pathlib import Path

import asyncpg

from relay.admission.tokens import hash_token
from tests.support.relay_cli import foreign_free_environ, run_relay


def _env(database_url: str) -> dict[str, str]:
    env = foreign_free_environ()
    env["DATABASE_URL"] = database_url
    return env


def _tokens(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        return {row["email"]: row["token"] for row in csv.DictReader(f)}


async def _users(database_url: str) -> dict[str, tuple[str, int]]:
    """email → (token hash, remaining seconds), straight from the table."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT email, token_hash, remaining_seconds FROM users")
    finally:
        await conn.close()
    return {r["email"]: (r["token_hash"], r["remaining_seconds"]) for r in rows}


async def test_import_creates_every_user_with_a_working_token(
    database_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "users.csv"
    source.write_text("email,seconds\na@example.test,90\nb@example.test,\n c@example.test ,5\n")
    out = tmp_path / "tokens.csv"
    env = _env(database_url)
    code, stdout, err = await run_relay(
        "users", "import", "--file", str(source), "--tokens-out", str(out), "--seconds", "600",
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert "created 3 users" in stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    tokens = _tokens(out)
    assert set(tokens) == {"a@example.test", "b@example.test", "c@example.test"}
    assert not any(t in stdout for t in tokens.values())  # secrets only in the file
    users = await _users(database_url)
    assert users == {
        "a@example.test": (hash_token(tokens["a@example.test"]), 90),
        "b@example.test": (hash_token(tokens["b@example.test"]), 600),
        "c@example.test": (hash_token(tokens["c@example.test"]), 5),
    }

    # One email taken: nobody is added, no tokens file is left.
    again = tmp_path / "again.csv"
    again.write_text("email\nnew@example.test\nb@example.test\n")
    out2 = tmp_path / "tokens2.csv"
    code, _, err = await run_relay(
        "users", "import", "--file", str(again), "--tokens-out", str(out2), env=env, cwd=tmp_path
    )
    assert code == 1 and "b@example.test" in err and "nothing imported" in err
    assert not out2.exists()
    assert set(await _users(database_url)) == set(users)
    # In another case, it is the same address, taken all the same.
    again.write_text("email\nnew@example.test\nB@Example.TEST\n")
    code, _, err = await run_relay(
        "users", "import", "--file", str(again), "--tokens-out", str(out2), env=env, cwd=tmp_path
    )
    assert code == 1 and "B@Example.TEST" in err and "nothing imported" in err
    assert set(await _users(database_url)) == set(users)

    # An existing tokens file is never overwritten.
    code, _, err = await run_relay(
        "users", "import", "--file", str(again), "--tokens-out", str(out), env=env, cwd=tmp_path
    )
    assert code == 2 and _tokens(out) == tokens


async def test_a_bad_line_imports_nobody(database_url: str, tmp_path: Path) -> None:
    code, _, err = await run_relay("db", "migrate", env=_env(database_url), cwd=tmp_path)
    assert code == 0, err
    source = tmp_path / "users.csv"
    source.write_text("email,seconds\nok@example.test,10\nnot-an-email,10\nok@example.test,3\n")
    out = tmp_path / "tokens.csv"
    code, _, err = await run_relay(
        "users", "import", "--file", str(source), "--tokens-out", str(out),
        env=_env(database_url), cwd=tmp_path,
    )  # fmt: skip
    assert code == 2
    assert "line 3" in err and "line 4" in err
    assert not out.exists()
    assert await _users(database_url) == {}
