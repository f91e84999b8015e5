"""The oldest PostgreSQL the relay runs on is refused by name before any migration, not met
later as an unknown function in the middle of a write (relay.db.landed needs 13)."""

from __future__ import annotations

from typing import cast

import asyncpg
import pytest
from asyncpg.types import ServerVersion

from relay.db.migrate import MIN_SERVER_MAJOR, UnsupportedServer, check_server_version


class _Connection:
    """What check_server_version reads of a connection: the version asyncpg parsed from
    the server's start-up parameters."""

    def __init__(self, major: int, minor: int) -> None:
        self._version = ServerVersion(major, minor, 0, "final", 0)

    def get_server_version(self) -> ServerVersion:
        return self._version


def test_older_server_refused_by_name() -> None:
    with pytest.raises(UnsupportedServer, match=r"PostgreSQL 12\.17 is older than 13"):
        check_server_version(cast(asyncpg.Connection, _Connection(12, 17)))


@pytest.mark.parametrize("major", [MIN_SERVER_MAJOR, 16, 17])
def test_supported_servers_pass(major: int) -> None:
    check_server_version(cast(asyncpg.Connection, _Connection(major, 0)))


def test_a_management_command_on_an_older_server_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay import cli

    async def refused(*args: object, **kwargs: object) -> int:
        check_server_version(cast(asyncpg.Connection, _Connection(12, 17)))
        return 0

    monkeypatch.setattr(cli, "_migrate", refused)
    assert cli.main(["db", "migrate"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (
        "database: PostgreSQL 12.17 is older than 13, the oldest the relay runs on (docs/deploy.md)"
    )
