"""``relay state-key generate | reseal``: a new state key, and every stored sealed value
sealed again under the current one (docs/operations.md, "Rotating the state key").

``reseal`` walks each table holding sealed values (relay.sealing) in primary-key order, a
batch at a time: values that open with a previous key (``cluster.previous_state_keys``) are
sealed again under the current key, each written back only if it is still the value that
was read (a compare-and-set per row: an endpoint's secret rotated meanwhile, or an answer
stored meanwhile, is left as its writer sealed it). No lock is held beyond one batch's
UPDATE, so relays keep running; a second run finds nothing left to do. Values that open
with no configured key are counted and, for webhook endpoints, named: never changed, never
deleted (the operator decides: a lost key's endpoint needs a new secret).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from relay.cluster.sealing import answer_context
from relay.config import Settings
from relay.db import Store
from relay.sealing import (
    KEY_FILE,
    SealError,
    SecretBox,
    StateKeys,
    load_state_keys,
    new_key_text,
)

DEFAULT_BATCH = 500
MAX_BATCH = 10_000
# Unreadable rows named in the report, per column (the count is always whole).
MAX_NAMED = 20


@dataclass(frozen=True)
class SealedColumn:
    """One column of sealed values: its table's primary key (text columns), what each
    value is bound to (relay.sealing's associated data), and which rows may still be read."""

    label: str
    table: str
    keys: tuple[str, ...]
    column: str
    bound_to: Callable[[asyncpg.Record], str]
    # Rows whose value the relay no longer reads are left alone (SQL, from this module only).
    where: str = "TRUE"
    # Whether the report names the unreadable rows (an endpoint's id is what the operator
    # acts on; a principal's idempotency key is not worth naming).
    named: bool = False


def _by_id(row: asyncpg.Record) -> str:
    return str(row["id"])


def _by_idempotency_key(row: asyncpg.Record) -> str:
    return answer_context(row["principal"], row["key"])


# Every sealed value the relay stores (relay.webhooks.endpoints, relay.sessions.shared_state,
# relay.web.idempotency), bound as each of them seals it.
COLUMNS = (
    SealedColumn(
        "webhook signing secrets",
        "webhook_endpoints",
        ("id",),
        "secret_sealed",
        _by_id,
        named=True,
    ),
    SealedColumn(
        "webhook previous signing secrets",
        "webhook_endpoints",
        ("id",),
        "previous_secret_sealed",
        _by_id,
        named=True,
    ),
    # Only a pending session's secret is ever read (by the exchange that claims it).
    SealedColumn(
        "pending sessions' upstream secrets",
        "interview_sessions",
        ("id",),
        "minted_sealed",
        _by_id,
        where="state = 'pending'",
    ),
    SealedColumn(
        "stored idempotent answers",
        "idempotency_keys",
        ("principal", "key"),
        "response_sealed",
        _by_idempotency_key,
    ),
)


@dataclass
class Tally:
    resealed: int = 0
    current: int = 0
    unreadable: int = 0
    # Rewritten by a relay between this command's read and its write (left as written).
    changed: int = 0
    unreadable_rows: list[str] = field(default_factory=list)


async def reseal_column(
    store: Store, box: SecretBox, spec: SealedColumn, batch: int = DEFAULT_BATCH
) -> Tally:
    """Seal every value of ``spec`` that opens with a previous key again under the current
    one, ``batch`` rows per statement."""
    tally = Tally()
    keys = ", ".join(spec.keys)
    after: tuple[str, ...] | None = None
    while True:
        rows = await _read_batch(store, spec, keys, after, batch)
        if not rows:
            return tally
        after = tuple(rows[-1][k] for k in spec.keys)
        # AES-GCM over a batch of short values: well under a millisecond per value.
        old: list[asyncpg.Record] = []
        new: list[bytes] = []
        for row in rows:
            sealed = bytes(row["sealed"])
            try:
                plaintext, index = box.open_with(spec.bound_to(row), sealed)
            except SealError:
                tally.unreadable += 1
                if spec.named and len(tally.unreadable_rows) < MAX_NAMED:
                    tally.unreadable_rows.append(", ".join(str(row[k]) for k in spec.keys))
                continue
            if index == 0:
                tally.current += 1
                continue
            old.append(row)
            new.append(box.seal(spec.bound_to(row), plaintext))
        if old:
            written = await _write_batch(store, spec, old, new)
            tally.resealed += written
            tally.changed += len(old) - written
        if len(rows) < batch:
            return tally


async def _read_batch(
    store: Store, spec: SealedColumn, keys: str, after: tuple[str, ...] | None, batch: int
) -> list[asyncpg.Record]:
    args: list[Any] = list(after or ())
    marks = ", ".join(f"${i + 1}" for i in range(len(args)))
    past = f"AND ({keys}) > ({marks})" if after else ""
    query = f"""SELECT {keys}, {spec.column} AS sealed FROM {spec.table}
                WHERE {spec.column} IS NOT NULL AND ({spec.where}) {past}
                ORDER BY {keys} LIMIT ${len(args) + 1}"""

    async def op(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args, batch)
        return rows

    return await store.run("state_key_reseal_read", op)


async def _write_batch(
    store: Store, spec: SealedColumn, rows: Sequence[asyncpg.Record], new: Sequence[bytes]
) -> int:
    """How many of ``rows`` took their new value: a row whose value changed since it was
    read (or that is gone) keeps what it has. Idempotent: a retry writes nothing twice."""
    n = len(spec.keys)
    columns = [[row[k] for row in rows] for k in spec.keys]
    arrays = ", ".join(f"${i + 1}::text[]" for i in range(n))
    names = ", ".join(f"k{i}" for i in range(n))
    matches = " AND ".join(f"t.{k} = v.k{i}" for i, k in enumerate(spec.keys))
    query = f"""UPDATE {spec.table} AS t SET {spec.column} = v.new
                FROM unnest({arrays}, ${n + 1}::bytea[], ${n + 2}::bytea[])
                     AS v({names}, old, new)
                WHERE {matches} AND t.{spec.column} = v.old
                RETURNING 1"""
    old = [bytes(row["sealed"]) for row in rows]

    async def op(conn: asyncpg.Connection) -> int:
        return len(await conn.fetch(query, *columns, old, list(new)))

    return await store.run("state_key_reseal_write", op)


# ---------------------------------------------------------------------- the command
def add_parser(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]  # argparse's own generic
    with_database: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    parser = sub.add_parser(
        "state-key", help="the key sealing stored secrets (docs/operations.md: rotating it)"
    )
    commands = parser.add_subparsers(dest="state_key_command", required=True)
    commands.add_parser(
        "generate", help="print a new state key (base64 of 32 random bytes) for cluster.state_key"
    )
    reseal = with_database(
        commands.add_parser(
            "reseal",
            help="seal every stored value that opens with one of cluster.previous_state_keys "
            "again under cluster.state_key; safe while relays run",
        )
    )
    reseal.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        metavar="ROWS",
        help=f"rows read and written per statement (1..{MAX_BATCH}; default {DEFAULT_BATCH})",
    )


def generate() -> int:
    print(new_key_text())
    return 0


async def reseal(settings: Settings, store: Store, args: argparse.Namespace) -> int:
    """0 when every stored value is now sealed with the current key; 1 when some open with
    no configured key (reported, left as they are); 2 for a bad option, or no current key
    (never made up here, unlike ``serve``)."""
    if not 1 <= args.batch_size <= MAX_BATCH:
        print(f"--batch-size: from 1 to {MAX_BATCH}", file=sys.stderr)
        return 2
    key_file = settings.data_path / KEY_FILE
    if not settings.cluster.state_key and not await asyncio.to_thread(key_file.is_file):
        # `serve` makes a key where there is none; here that key would be one no relay
        # has, and every value would be sealed again under it (lost to the relays).
        print(
            f"no current state key: cluster.state_key is not set and {key_file} does not "
            "exist; run this with the relays' settings (RELAY__CLUSTER__STATE_KEY, or from "
            "their folder)",
            file=sys.stderr,
        )
        return 2
    keys: StateKeys = await asyncio.to_thread(load_state_keys, settings.cluster, settings.data_path)
    if not keys.previous:
        print(
            "no cluster.previous_state_keys configured: checking that every value opens with "
            "the current key"
        )
    box = SecretBox(keys)
    unreadable = 0
    for spec in COLUMNS:
        tally = await reseal_column(store, box, spec, args.batch_size)
        line = (
            f"{spec.label}: {tally.resealed} resealed, {tally.current} already under the "
            f"current key, {tally.unreadable} unreadable"
        )
        if tally.changed:
            line += f", {tally.changed} changed meanwhile (run again)"
        print(line)
        for named in tally.unreadable_rows:
            print(f"  unreadable: {named}")
        if tally.unreadable > len(tally.unreadable_rows) and tally.unreadable_rows:
            print(f"  … and {tally.unreadable - len(tally.unreadable_rows)} more")
        unreadable += tally.unreadable
    if unreadable:
        print(
            f"{unreadable} value(s) open with no configured key (sealed under a key this "
            "command was not given, or damaged): left as they are. A webhook endpoint among "
            "them needs a new secret (relay webhooks rotate-secret ID); the others expire.",
            file=sys.stderr,
        )
        return 1
    return 0
