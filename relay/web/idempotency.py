"""``Idempotency-Key`` on every POST (design.md §10), as Stripe's API does it.

A client that may retry a POST (a timeout, a dropped connection) sends a key of its
choosing, 1 to 255 printable ASCII characters. Keys belong to whoever sent them (an API
key, the operator, a candidate's credential): the same key from two principals are two
keys. Within ``RETENTION`` of the first use:

* the same key with the same request (method, path and body, compared as canonical JSON)
  answers the stored response, marked ``Idempotent-Replayed: true``; nothing runs again;
* the same key with another request answers 422 ``idempotency_key_reused``;
* while the first request still runs, a duplicate answers 409 ``idempotency_key_in_use``
  (retryable): the claim is one INSERT on the key's primary key, so two duplicates racing,
  on one relay or on two, never both run.

Only a successful (2xx) answer is stored, sealed with the cluster's state key
(relay.sealing): an answer can carry a credential shown once (an interview's
candidate link, a new API key), which must not sit readable in the database. After an
error the claim is given back, so the client may retry with the same key once it has
fixed what was wrong.

**The answer commits with the work** where the work is one transaction: the route passes
``within(build)`` (a ``relay.db.Within``) to the domain's write, which calls it last in its
transaction; it stores the sealed answer in the key's row there. A commit that landed, its
reply lost and the database unreachable through the store's retries (the request answers
503), has therefore always left its answer: a retry with the key, once the database is
back, replays it (after ``STALE_CLAIM`` as before it), and never runs the work again. The
write in the transaction matches this request's claim: when the claim is no longer this
request's (``ClaimGone``), the transaction rolls back, nothing is done, and the request
answers the answer its own earlier attempt stored (a store retry of a write whose first
attempt landed) or 409 ``idempotency_key_in_use`` (a later request took the claim over).
Routes whose work is not one transaction (an upstream call, a webhook delivery, a cluster
command) store their answer after it, as a separate write (``_complete``). A claim left by a
relay that died mid-request is taken over after ``STALE_CLAIM``. Housekeeping deletes keys
older than ``RETENTION`` (``purge``).

Every claim carries a token of its own request (migration 016), chosen before the claim's
first attempt: a claim whose commit landed with its reply lost is recognised as this
request's when the store retries it (not a duplicate's, 409); and the answer is stored, and
the claim released, only where the key still carries this request's token. A request that
ran past ``STALE_CLAIM`` and whose claim a later request took over can neither overwrite
that request's answer nor release its claim: its own answer goes to its own client only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

import asyncpg
from aiohttp import web

from relay.cluster.sealing import Sealer, answer_context
from relay.db import DatabaseUnavailable, Store, Within
from relay.errors import ApiError
from relay.sealing import SealError
from relay.services import SERVICES

log = logging.getLogger("relay.http")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
RETENTION = timedelta(hours=24)
# Longer than any request can run (the upstream's timeouts, retries included).
STALE_CLAIM = timedelta(minutes=5)
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# Claims of a key released under a duplicate each time it looks (requests failing one after
# the other): after this many, the duplicate is told the key is in use (retryable).
_CLAIM_TRIES = 3

T = TypeVar("T")
Answer = tuple[int, dict[str, Any] | None]
Execute = Callable[[], Awaitable[tuple[int, dict[str, Any] | None, Mapping[str, str]]]]
# How an answer (status, payload, headers) becomes the response: JSON unless the route
# answers in another content type (the OpenAI-compatible call answers SDP).
Render = Callable[[int, dict[str, Any] | None, Mapping[str, str]], web.Response]


@dataclass(frozen=True)
class _Claim:
    """One request's hold on (principal, key): ``token`` is written with the claim, and
    every later write of this request to the key matches it."""

    principal: str
    key: str
    token: str


class ClaimGone(Exception):
    """The key's claim is no longer this request's when its work's transaction would store
    the answer: raised inside that transaction, so the work rolls back."""


@dataclass
class _Running:
    """The request running under a claim, as its work's transaction sees it."""

    claim: _Claim
    sealer: Sealer
    # Its answer was written in its work's transaction (nothing to store after it).
    answered: bool = False


_RUNNING: ContextVar[_Running | None] = ContextVar("idempotency_running", default=None)


def within(build: Callable[[T], Answer | None]) -> Within[T] | None:
    """For the domain write that does the request's work: stores the answer ``build``
    makes of what the write returns (None, or a status that is no success: nothing) in the
    write's own transaction. None when the request has no key (nothing to store)."""
    running = _RUNNING.get()
    if running is None:
        return None
    holder = running

    async def store_answer(conn: asyncpg.Connection, value: T) -> None:
        answer = build(value)
        if answer is None or not 200 <= answer[0] < 300:
            return
        status, payload = answer
        sealed = holder.sealer.seal_bytes(
            answer_context(holder.claim.principal, holder.claim.key), json.dumps(payload).encode()
        )
        stored = await conn.fetchval(
            """UPDATE idempotency_keys
               SET status = 'done', response_status = $4, response_sealed = $5
               WHERE principal = $1 AND key = $2 AND claim_token = $3
                 AND status = 'in_progress'
               RETURNING true""",
            holder.claim.principal,
            holder.claim.key,
            holder.claim.token,
            status,
            sealed,
        )
        if not stored:
            raise ClaimGone(holder.claim.key)
        holder.answered = True

    return store_answer


def request_hash(method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same": method, path and the body's canonical JSON (or
    its bytes when it is not JSON)."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
    except (UnicodeDecodeError, ValueError, RecursionError):
        canonical = body
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


def key_of(request: web.Request) -> str | None:
    """The request's Idempotency-Key (400 ``invalid_idempotency_key`` when malformed)."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"{HEADER} must be 1 to 255 printable ASCII characters without spaces.",
        )
    return key


async def run(
    request: web.Request,
    principal: str,
    body: bytes,
    execute: Execute,
    render: Render | None = None,
) -> web.Response:
    """Run ``execute`` at most once per (principal, key); without a key, just run it.
    ``render``: how the answer (and a stored one) is written; JSON by default."""
    render = render or _json
    key = key_of(request)
    if key is None:
        return render(*await execute())
    services = request.app[SERVICES]
    store = services.store
    sealer = services.sealer
    fingerprint = request_hash(request.method, request.path, body)
    claim = _Claim(principal, key, secrets.token_hex(16))
    stored = await _claim(store, sealer, claim, fingerprint, render)
    if stored is not None:
        return stored
    running = _Running(claim, sealer)
    reset = _RUNNING.set(running)
    try:
        status, payload, headers = await execute()
    except ClaimGone:
        return await _claim_gone(store, sealer, claim, render)
    except BaseException:
        await _release(store, claim)
        raise
    finally:
        _RUNNING.reset(reset)
    if not 200 <= status < 300:
        await _release(store, claim)
    elif not running.answered:  # (else it was stored with the work, in its transaction)
        try:
            await _complete(store, sealer, claim, status, payload)
        except DatabaseUnavailable:
            # A route whose work is not one transaction: the work is done and answered; a
            # retry with this key waits for the claim to go stale, then runs again (at
            # worst once more, never concurrently).
            log.warning("idempotency key: answer not stored (database unavailable)")
    return render(status, payload, headers)


def _json(status: int, payload: dict[str, Any] | None, headers: Mapping[str, str]) -> web.Response:
    if payload is None:
        return web.Response(status=status, headers=dict(headers))
    return web.json_response(payload, status=status, headers=dict(headers))


async def _claim(
    store: Store, sealer: Sealer, claim: _Claim, fingerprint: str, render: Render
) -> web.Response | None:
    """Claim the key for this request (None), or the answer a duplicate gets."""
    principal, key = claim.principal, claim.key

    async def op(conn: asyncpg.Connection) -> asyncpg.Record | Literal["in_use"] | None:
        async with conn.transaction():
            # A claim released between the INSERT and the SELECT (its request failed) is
            # claimed again with the same INSERT: another duplicate that saw it go may be
            # claiming it too, and one of the two then finds the other's claim.
            for _ in range(_CLAIM_TRIES):
                claimed = await conn.fetchval(
                    """INSERT INTO idempotency_keys
                           (principal, key, request_hash, status, claim_token)
                       VALUES ($1, $2, $3, 'in_progress', $4)
                       ON CONFLICT DO NOTHING RETURNING 1""",
                    principal,
                    key,
                    fingerprint,
                    claim.token,
                )
                if claimed:
                    return None
                row: asyncpg.Record | None = await conn.fetchrow(
                    """SELECT request_hash, status, response_status, response_sealed,
                              claim_token, created_at < now() - $3::interval AS expired,
                              status = 'in_progress'
                                  AND created_at < now() - $4::interval AS stale
                       FROM idempotency_keys WHERE principal = $1 AND key = $2 FOR UPDATE""",
                    principal,
                    key,
                    RETENTION,
                    STALE_CLAIM,
                )
                if row is None:
                    continue
                if row["status"] == "in_progress" and row["claim_token"] == claim.token:
                    return None  # this request's own claim: an earlier attempt committed it
                if row["expired"] or row["stale"]:
                    # Taken over: from now on only this request's token matches, so the
                    # request that held the claim can no longer store or release it.
                    await conn.execute(
                        """UPDATE idempotency_keys
                           SET request_hash = $3, status = 'in_progress', response_status = NULL,
                               response_sealed = NULL, created_at = now(), claim_token = $4
                           WHERE principal = $1 AND key = $2""",
                        principal,
                        key,
                        fingerprint,
                        claim.token,
                    )
                    return None
                return row
            return "in_use"

    row = await store.run("idempotency_claim", op)
    if row is None:
        return None
    if isinstance(row, str):  # "in_use"
        raise _in_use()
    if row["request_hash"] != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"This {HEADER} was used for another request; use a new key for a new request.",
        )
    if row["status"] == "in_progress":
        raise _in_use()
    response = _stored(sealer, claim, row, render)
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _stored(sealer: Sealer, claim: _Claim, row: asyncpg.Record, render: Render) -> web.Response:
    """The answer stored in the key's ``row``, rendered."""
    try:
        payload = json.loads(
            sealer.open_bytes(answer_context(claim.principal, claim.key), row["response_sealed"])
        )
    except SealError:
        raise ApiError(
            409,
            "idempotency_key_unreadable",
            "The stored answer for this key was sealed by a member with another state key "
            "(cluster.state_key); use a new key.",
        ) from None
    return render(int(row["response_status"]), payload, {})


async def _claim_gone(store: Store, sealer: Sealer, claim: _Claim, render: Render) -> web.Response:
    """The answer of a request whose work's transaction found the claim no longer its own
    (and rolled back): the answer its own earlier attempt stored with the work (the store
    retried a write whose commit landed, its reply lost), or 409 (a later request took the
    claim over; nothing of this one was done)."""

    async def op(conn: asyncpg.Connection) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await conn.fetchrow(
            """SELECT status, response_status, response_sealed FROM idempotency_keys
               WHERE principal = $1 AND key = $2 AND claim_token = $3""",
            claim.principal,
            claim.key,
            claim.token,
        )
        return row

    row = await store.run("idempotency_claim_gone", op)
    if row is not None and row["status"] == "done":
        return _stored(sealer, claim, row, render)
    log.warning("idempotency key: claim taken over while its request ran; nothing done")
    raise ApiError(
        409,
        "idempotency_key_in_use",
        f"This request ran so long that a later request with its {HEADER} took the key "
        "over; nothing of this one was done. Retry to get the other request's answer.",
        retryable=True,
        retry_after_s=1,
    )


def _in_use() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_use",
        f"A request with this {HEADER} is still running; retry shortly.",
        retryable=True,
        retry_after_s=1,
    )


async def _complete(
    store: Store,
    sealer: Sealer,
    claim: _Claim,
    status: int,
    payload: dict[str, Any] | None,
) -> None:
    sealed = sealer.seal_bytes(
        answer_context(claim.principal, claim.key), json.dumps(payload).encode()
    )

    async def op(conn: asyncpg.Connection) -> bool:
        # Not conditional on the status: a retry whose first attempt landed writes the
        # same answer again.
        stored: bool = await conn.fetchval(
            """UPDATE idempotency_keys
               SET status = 'done', response_status = $4, response_sealed = $5
               WHERE principal = $1 AND key = $2 AND claim_token = $3 RETURNING true""",
            claim.principal,
            claim.key,
            claim.token,
            status,
            sealed,
        )
        return bool(stored)

    if not await store.run("idempotency_complete", op):
        # This request outlived its claim and another took it over: that one's answer
        # (or its claim) stays; this answer goes to this request's client only.
        log.warning("idempotency key: answer not stored (the claim was taken over)")


async def _release(store: Store, claim: _Claim) -> None:
    async def op(conn: asyncpg.Connection) -> None:
        await conn.execute(
            """DELETE FROM idempotency_keys
               WHERE principal = $1 AND key = $2 AND claim_token = $3
                 AND status = 'in_progress'""",
            claim.principal,
            claim.key,
            claim.token,
        )

    try:
        await store.run("idempotency_release", op)
    except DatabaseUnavailable:
        log.warning("idempotency key: claim not released (database unavailable); it goes stale")


def candidate_key(token_hash: str) -> str:
    """The principal a candidate's idempotency keys belong to: its credential."""
    return "candidate:" + token_hash[:40]


async def purge(store: Store) -> int:
    """Delete keys older than ``RETENTION``; how many."""

    async def op(conn: asyncpg.Connection) -> str:
        status: str = await conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval", RETENTION
        )
        return status

    return int((await store.run("idempotency_purge", op)).split()[-1])
