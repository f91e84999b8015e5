"""The ``webhook_endpoints`` table (migration 008): who receives which events.

The signing secret is generated here, returned once (to the API's or the CLI's caller) and
stored sealed under the state key, bound to the endpoint's id (relay.sealing); deliveries
open it to sign.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from relay.db import Store, Within, landed_once
from relay.sealing import SecretBox
from relay.webhooks.outbox import EVENT_TYPES, notify_due
from relay.webhooks.signing import new_secret

# Subscribes an endpoint to every event type, those added in later versions too.
ALL_EVENTS = "*"
# How long a rotated-out secret keeps signing by default, and at most (7 days).
DEFAULT_PREVIOUS_SECRET_S = 24 * 3600
MAX_PREVIOUS_SECRET_S = 7 * 24 * 3600
_COLUMNS = """id, url, description, events, enabled, created_by, created_at, updated_at,
    secret_rotated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at"""


def new_endpoint_id() -> str:
    return "wh_" + secrets.token_hex(16)


def unknown_events(events: Sequence[str]) -> list[str]:
    return [e for e in events if e != ALL_EVENTS and e not in EVENT_TYPES]


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    description: str
    events: tuple[str, ...]
    enabled: bool
    created_by: str
    created_at: datetime
    updated_at: datetime
    # When the secret was last rotated (None: never), and until when the secret that
    # rotation replaced signs too (None: no overlap, or it is over).
    secret_rotated_at: datetime | None
    previous_secret_expires_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Endpoint:
        return cls(
            id=row["id"],
            url=row["url"],
            description=row["description"],
            events=tuple(row["events"]),
            enabled=row["enabled"],
            created_by=row["created_by"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            secret_rotated_at=row["secret_rotated_at"],
            previous_secret_expires_at=row["previous_secret_expires_at"],
        )


class EndpointRows:
    def __init__(self, store: Store, box: SecretBox) -> None:
        self._store = store
        self._box = box

    async def create(
        self,
        *,
        url: str,
        events: Sequence[str],
        description: str,
        enabled: bool,
        created_by: str,
        within: Within[tuple[Endpoint, str]] | None = None,
    ) -> tuple[Endpoint, str]:
        """A new endpoint and its secret (the only time the secret leaves the relay);
        ``within`` is given both in the endpoint's transaction (relay.db.within)."""
        endpoint_id = new_endpoint_id()
        secret = new_secret()
        sealed = self._box.seal(endpoint_id, secret.encode())

        async def op(conn: asyncpg.Connection) -> asyncpg.Record:
            async with conn.transaction():
                # ON CONFLICT: a retry after a lost connection finds what the first attempt
                # committed instead of failing on its own row (and calls no ``within``).
                inserted = await conn.fetchval(
                    """INSERT INTO webhook_endpoints
                           (id, url, description, events, secret_sealed, enabled, created_by)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)
                       ON CONFLICT (id) DO NOTHING RETURNING true""",
                    endpoint_id,
                    url,
                    description,
                    list(events),
                    sealed,
                    enabled,
                    created_by,
                )
                row: asyncpg.Record = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id
                )
                if inserted and within is not None:
                    await within(conn, (Endpoint.from_row(row), secret))
                return row

        return Endpoint.from_row(await self._store.run("webhook_endpoint_create", op)), secret

    async def get(self, endpoint_id: str) -> Endpoint | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM webhook_endpoints WHERE id = $1", endpoint_id
            )

        row = await self._store.run("webhook_endpoint_get", op)
        return None if row is None else Endpoint.from_row(row)

    async def secret(self, endpoint_id: str) -> str | None:
        """The endpoint's signing secret, opened (``relay.sealing.SealError`` when this
        relay's state key is not the one it was sealed with)."""

        async def op(conn: asyncpg.Connection) -> bytes | None:
            value: bytes | None = await conn.fetchval(
                "SELECT secret_sealed FROM webhook_endpoints WHERE id = $1", endpoint_id
            )
            return value

        sealed = await self._store.run("webhook_endpoint_secret", op)
        return None if sealed is None else self.open_secret(endpoint_id, sealed)

    def open_secret(self, endpoint_id: str, sealed: bytes) -> str:
        return self._box.open(endpoint_id, sealed).decode()

    async def page(
        self, *, limit: int, before: tuple[datetime, str] | None = None
    ) -> list[Endpoint]:
        """Newest first; ``before``: the (created_at, id) of the last item of the previous
        page."""

        async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            if before is None:
                return list(
                    await conn.fetch(
                        f"""SELECT {_COLUMNS} FROM webhook_endpoints
                            ORDER BY created_at DESC, id DESC LIMIT $1""",
                        limit,
                    )
                )
            return list(
                await conn.fetch(
                    f"""SELECT {_COLUMNS} FROM webhook_endpoints
                        WHERE (created_at, id) < ($2, $3)
                        ORDER BY created_at DESC, id DESC LIMIT $1""",
                    limit,
                    before[0],
                    before[1],
                )
            )

        return [Endpoint.from_row(r) for r in await self._store.run("webhook_endpoint_page", op)]

    async def update(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> Endpoint | None:
        async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
            async with conn.transaction():
                row: asyncpg.Record | None = await conn.fetchrow(
                    f"""UPDATE webhook_endpoints SET
                            url = COALESCE($2, url),
                            events = COALESCE($3, events),
                            description = COALESCE($4, description),
                            enabled = COALESCE($5, enabled),
                            updated_at = now()
                        WHERE id = $1
                        RETURNING {_COLUMNS}""",
                    endpoint_id,
                    url,
                    None if events is None else list(events),
                    description,
                    enabled,
                )
                if row is not None and enabled:
                    # Its backlog is due again, for whichever instance delivers.
                    await notify_due(conn)
                return row

        row = await self._store.run("webhook_endpoint_update", op)
        return None if row is None else Endpoint.from_row(row)

    async def rotate_secret(
        self,
        endpoint_id: str,
        *,
        expire_previous_in_s: int,
        within: Within[tuple[Endpoint, str]] | None = None,
    ) -> tuple[Endpoint, str] | None:
        """A new signing secret for the endpoint (None: no such endpoint), shown this once.
        The one it replaces keeps signing too for ``expire_previous_in_s`` seconds (0: it
        stops now); a previous secret still in its overlap is dropped (one is kept).
        ``within`` is given both in the rotation's transaction (relay.db.within)."""
        secret = new_secret()
        sealed = self._box.seal(endpoint_id, secret.encode())

        # A retry whose earlier attempt committed (its reply lost) must not rotate again:
        # the secret it made would become the "previous" one, and the real previous one,
        # which receivers still verify with, would be lost (relay.db.landed).
        async def work(conn: asyncpg.Connection) -> asyncpg.Record | None:
            # The current sealed value moves as it is: it is bound to the same id.
            row: asyncpg.Record | None = await conn.fetchrow(
                f"""UPDATE webhook_endpoints SET
                        previous_secret_sealed =
                            CASE WHEN $3::integer > 0 THEN secret_sealed END,
                        previous_secret_expires_at = CASE WHEN $3::integer > 0
                            THEN now() + make_interval(secs => $3::integer) END,
                        secret_sealed = $2,
                        secret_rotated_at = now(),
                        updated_at = now()
                    WHERE id = $1
                    RETURNING {_COLUMNS}""",
                endpoint_id,
                sealed,
                expire_previous_in_s,
            )
            if row is not None and within is not None:
                await within(conn, (Endpoint.from_row(row), secret))
            return row

        row = await self._store.run("webhook_endpoint_rotate_secret", landed_once(work))
        return None if row is None else (Endpoint.from_row(row), secret)

    async def forget_expired_secrets(self) -> int:
        """Drop the previous secrets whose overlap is over (they sign nothing any more);
        how many."""

        async def op(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(
                """UPDATE webhook_endpoints
                   SET previous_secret_sealed = NULL, previous_secret_expires_at = NULL
                   WHERE previous_secret_expires_at <= now()"""
            )
            return int(status.split()[-1])

        return await self._store.run("webhook_endpoint_forget_secrets", op)

    async def delete(self, endpoint_id: str) -> bool:
        """Remove the endpoint with its deliveries and their log; False: there was none.
        A retry whose earlier attempt committed (its reply lost) answers that attempt's
        True, not the False its own DELETE would find (relay.db.landed)."""

        async def work(conn: asyncpg.Connection) -> bool:
            status: str = await conn.execute(
                "DELETE FROM webhook_endpoints WHERE id = $1", endpoint_id
            )
            return status != "DELETE 0"

        return await self._store.run("webhook_endpoint_delete", landed_once(work))
