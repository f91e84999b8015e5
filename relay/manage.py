"""The management commands for one host: ``relay keys``, ``relay interviews`` and the
``relay users`` commands beyond add/import/revoke, the same operations as the HTTP API
(docs/api.md) run straight against the database; and the database they open.

Without ``DATABASE_URL`` a command uses the embedded PostgreSQL under ``server.data_dir``
(``./.relay`` by default), the one ``relay serve`` started in that folder. A command run
from another folder would silently start a new, empty database there, so it refuses
instead and says where it looked: ``--data-dir DIR`` names the server's folder, ``--create``
makes a new database on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import ValidationError

from relay.admission.api_keys import ApiKeyRows, new_key_id
from relay.admission.bulk_users import MAX_SECONDS
from relay.admission.tokens import hash_token, new_api_key, new_token
from relay.admission.users import UserAdmin, UserDetail
from relay.cluster.bus import notify
from relay.config import Settings
from relay.db import RETRYABLE_ERRORS, Store
from relay.db.migrate import MigrationTimeout
from relay.db.store import connection_failure
from relay.erasure.rows import ErasureRows
from relay.interviews.models import InterviewCreate
from relay.interviews.rows import CandidateErasing, CandidateInactive
from relay.interviews.service import InterviewService, effective_status, view
from relay.observability.metrics import MetricsRegistry

# A server that answers but refuses the connection: a wrong role or password, no such
# database. No retry fixes them, but they say no more than "not connected" either.
REFUSED_CONNECTION: tuple[type[Exception], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)

# Who a command acts as (an interview's created_by, a key's created_by).
CLI_PRINCIPAL = "cli"


class NoDatabase(Exception):
    """No embedded database where the command looked, and --create was not given."""


def embedded_exists(data_dir: Path) -> bool:
    return (data_dir / "pgdata" / "PG_VERSION").is_file()


def check_database(settings: Settings, *, create: bool) -> None:
    """Raise ``NoDatabase`` when the command would create an embedded database unasked."""
    if settings.database.url or create:
        return
    if not embedded_exists(settings.data_path):
        raise NoDatabase(
            f"no relay database in {settings.data_path.resolve()}/ (server.data_dir): this "
            "command would create a new, empty one there. Run it from the folder where "
            "`relay serve` runs, or give that folder with --data-dir DIR (or set "
            "DATABASE_URL); --create makes a new database here on purpose."
        )


@contextlib.asynccontextmanager
async def open_store(settings: Settings, *, create: bool = False) -> AsyncIterator[Store]:
    """A store on the configured (or the shared embedded) database, migrated."""
    await asyncio.to_thread(check_database, settings, create=create)
    async with contextlib.AsyncExitStack() as stack:
        dsn = settings.database.url
        if not dsn:
            from relay.db.embedded_pg import start_embedded_postgres

            embedded = await asyncio.to_thread(start_embedded_postgres, settings.data_path)
            stack.push_async_callback(asyncio.to_thread, embedded.stop)
            dsn = embedded.dsn
        store = Store(dsn, settings.database, MetricsRegistry())
        await store.open()
        stack.push_async_callback(store.close)
        try:
            await store.migrate()
        except MigrationTimeout:
            raise  # connected, but the migrations did not finish: its own message
        except (*RETRYABLE_ERRORS, *REFUSED_CONNECTION) as exc:
            # The first connection of the command: a database that is down, refuses us or
            # does not answer is one line and exit 3 (relay.cli), not a traceback.
            raise connection_failure(exc, settings.database) from exc
        yield store


def add_database_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--data-dir", help="the relay's data folder (server.data_dir) holding its database"
    )
    parser.add_argument(
        "--create",
        action="store_true",
        help="create a new embedded database if none exists (otherwise refused)",
    )
    return parser


def public_url_option(parser: argparse.ArgumentParser) -> None:
    """Where the printed candidate link points (``_base_url``)."""
    parser.add_argument(
        "--public-url",
        help="the relay's address for candidates (default: server.public_url, else "
        "http://server.host:server.port)",
    )


def add_parsers(sub: Any, with_config: Any) -> None:
    """``relay keys …`` and ``relay interviews …``."""

    def command(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, help=help_text)
        return add_database_options(with_config(parser))

    keys = sub.add_parser("keys", help="API keys of the management API")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = command(keys_sub, "create", "create a key; prints it alone on the last line")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", choices=["admin", "read"], default="admin")
    listing = command(keys_sub, "list", "list keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = command(keys_sub, "revoke", "revoke a key at once")
    revoke.add_argument("--id", required=True, help="the key's id (key_…)")

    interviews = sub.add_parser("interviews", help="candidates' interviews")
    iv_sub = interviews.add_subparsers(dest="interviews_command", required=True)
    make = command(
        iv_sub, "create", "create an interview; prints the candidate's link on the last line"
    )
    make.add_argument("--email", required=True, help="the candidate's e-mail")
    make.add_argument("--name", help="the candidate's name")
    text = make.add_mutually_exclusive_group(required=True)
    text.add_argument("--instructions", help="the interviewer's instructions")
    text.add_argument(
        "--instructions-file", type=Path, help="a file with the instructions ('-': stdin)"
    )
    make.add_argument("--voice")
    make.add_argument("--language", help="ISO 639-1 code, e.g. es")
    make.add_argument("--max-duration", type=int, help="seconds over all its sessions")
    make.add_argument("--no-recording", action="store_true", help="record none of its sessions")
    make.add_argument("--metadata", help="a JSON object of your own (≤ 8 KB)")
    make.add_argument("--expires-at", help="ISO 8601 time the link stops working")
    public_url_option(make)
    ls = command(iv_sub, "list", "list interviews, newest first")
    ls.add_argument("--status")
    ls.add_argument("--email")
    ls.add_argument("--limit", type=int, default=50)
    show = command(iv_sub, "show", "an interview with its sessions and recordings (JSON)")
    show.add_argument("--id", required=True)
    cancel = command(iv_sub, "cancel", "cancel an interview; its live sessions end")
    cancel.add_argument("--id", required=True)
    link = command(
        iv_sub,
        "new-link",
        "a new candidate link for an open interview (the old one stops working); prints it "
        "on the last line",
    )
    link.add_argument("--id", required=True)
    public_url_option(link)
    delete = command(
        iv_sub,
        "delete",
        "erase an interview and everything of it (sessions, transcripts, recordings, its "
        "webhook events); its live session ends",
    )
    delete.add_argument("--id", required=True)


def add_user_parsers(users_sub: Any, with_config: Any) -> None:
    """The ``relay users`` commands that mirror the users resource."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = users_sub.add_parser(name, help=help_text)
        return add_database_options(with_config(parser))

    ls = command("list", "list users, newest first")
    ls.add_argument("--email")
    ls.add_argument("--inactive", action="store_true", help="only deactivated users")
    ls.add_argument("--limit", type=int, default=50)
    command("show", "one user (JSON)").add_argument("--email", required=True)
    credit = command("credit", "set or change a user's seconds")
    credit.add_argument("--email", required=True)
    amount = credit.add_mutually_exclusive_group(required=True)
    amount.add_argument("--seconds", type=int, help="set the user's seconds")
    amount.add_argument("--add", type=int, help="add (negative: take) seconds")
    command("reactivate", "reactivate a revoked user").add_argument("--email", required=True)
    command(
        "reissue", "give a user a new token (the old one stops); prints it on the last line"
    ).add_argument("--email", required=True)
    command(
        "delete",
        "erase a user and everything of theirs (every interview, session, transcript and "
        "recording); their live sessions end",
    ).add_argument("--email", required=True)


# What a delete command says: it marks (one transaction, as the API does); the relays'
# housekeeping removes the files and the rows (a command cannot reach a relay's disk).
_ERASING = (
    "gone for the API now; the running relays remove its recordings' files and its rows "
    "within seconds (the webhook event interview.deleted says when, for each interview)"
)


def settings_for(settings: Settings, args: argparse.Namespace) -> Settings:
    data_dir = getattr(args, "data_dir", None)
    return settings.replace("server", data_dir=data_dir) if data_dir else settings


def _fail(message: str, code: int = 1) -> int:
    print(message, file=sys.stderr)
    return code


def _iso(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


# ---------------------------------------------------------------------- keys
async def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    async with open_store(settings, create=args.create) as store:
        keys = ApiKeyRows(store)
        if args.keys_command == "create":
            name = args.name.strip()
            if not name or len(name) > 200 or "\x00" in name:
                return _fail("--name must be 1 to 200 characters", 2)
            key = new_api_key()
            record = await keys.create(
                key_id=new_key_id(),
                name=name,
                scope=args.scope,
                key_hash=hash_token(key),
                created_by=CLI_PRINCIPAL,
            )
            print(f"created {record.scope} key {record.id} ({record.name}); it is shown once:")
            print(key)
            return 0
        if args.keys_command == "list":
            records = await keys.page(limit=1000, after=None, include_revoked=args.all)
            for r in records:
                state = f"revoked {_iso(r.revoked_at)}" if r.revoked_at else "active"
                used = _iso(r.last_used_at)
                print(f"{r.id}  {r.scope:5}  {state:28}  last used {used:25}  {r.name}")
            return 0
        revoked = await keys.revoke(args.id)
        if revoked is None:
            return _fail(f"no key {args.id}")
        print(f"revoked {revoked.id} ({revoked.name})")
        return 0


# ---------------------------------------------------------------------- interviews
async def _instructions(args: argparse.Namespace) -> str:
    if args.instructions is not None:
        return str(args.instructions)
    path: Path = args.instructions_file
    if str(path) == "-":
        return await asyncio.to_thread(sys.stdin.read)
    return await asyncio.to_thread(path.read_text, encoding="utf-8")


def _base_url(settings: Settings, args: argparse.Namespace) -> str:
    if args.public_url:
        return str(args.public_url).rstrip("/")
    if settings.server.public_url:
        return settings.server.public_url
    return f"http://{settings.server.host}:{settings.server.port}"


async def _spec(args: argparse.Namespace) -> InterviewCreate:
    data: dict[str, Any] = {
        "candidate": {"email": args.email, **({"name": args.name} if args.name else {})},
        "instructions": await _instructions(args),
        "recording": not args.no_recording,
    }
    for field, value in (
        ("voice", args.voice),
        ("language", args.language),
        ("max_duration_s", args.max_duration),
        ("expires_at", args.expires_at),
    ):
        if value is not None:
            data[field] = value
    if args.metadata is not None:
        data["metadata"] = json.loads(args.metadata)
    return InterviewCreate.model_validate(data)


def _invalid(exc: ValidationError) -> int:
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "input"
        print(f"{where}: {error['msg']}", file=sys.stderr)
    return 2


async def _new_link(service: InterviewService, interview_id: str, base_url: str) -> int:
    result = await service.new_link(interview_id, base_url=base_url)
    if result is None:
        return _fail(f"no interview {interview_id}")
    record, url = result
    if url is None:
        return _fail(
            f"interview {interview_id} is {effective_status(record)}: only an open one "
            "gets a new link"
        )
    print(f"interview {record.id} for {record.email} has a new link; the old one no longer works:")
    print(url)
    return 0


async def interviews_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.interviews_command == "create":
        try:
            spec = await _spec(args)
        except ValidationError as exc:
            return _invalid(exc)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return _fail(f"{exc}", 2)
    async with open_store(settings, create=args.create) as store:
        service = InterviewService(settings.interviews, store, notify)
        if args.interviews_command == "create":
            try:
                record, url = await service.create(
                    spec, created_by=CLI_PRINCIPAL, base_url=_base_url(settings, args)
                )
            except CandidateErasing:
                return _fail(f"{args.email} is being erased; invite it again once it is gone")
            except CandidateInactive:
                return _fail(
                    f"{args.email} is deactivated: `relay users reactivate --email {args.email}`"
                )
            print(f"created interview {record.id} for {record.email}; the candidate's link:")
            print(url)
            return 0
        if args.interviews_command == "list":
            if not 1 <= args.limit <= 1000:
                return _fail("--limit must be within 1..1000", 2)
            records = await service.rows.page(
                limit=args.limit, status=args.status, email=args.email
            )
            for r in records:
                print(
                    f"{r.id}  {r.status:11}  {_iso(r.created_at):25}  "
                    f"{r.used_seconds:>5}/{r.max_duration_s}s  {r.email}"
                )
            return 0
        if args.interviews_command == "show":
            found = await service.detail(args.id)
            if found is None:
                return _fail(f"no interview {args.id}")
            print(found.model_dump_json(indent=2))
            return 0
        if args.interviews_command == "new-link":
            return await _new_link(service, args.id, _base_url(settings, args))
        if args.interviews_command == "delete":
            if not await ErasureRows(store).mark_interview(args.id, notify):
                return _fail(f"no interview {args.id}")
            print(f"deleting {args.id}: {_ERASING}")
            return 0
        result = await service.cancel(args.id)
        if result is None:
            return _fail(f"no interview {args.id}")
        record, _ = result
        if record.status != "cancelled":
            return _fail(f"interview {args.id} is {record.status}: it cannot be cancelled")
        print(f"cancelled {record.id}")
        print(view(record).model_dump_json(indent=2))
        return 0


# ---------------------------------------------------------------------- users
def _user_line(user: UserDetail) -> str:
    state = "active" if user.active else f"revoked {_iso(user.revoked_at)}"
    return (
        f"{user.id:>6}  {state:28}  {user.remaining_seconds:>7}s  "
        f"{user.interviews:>3} interviews  {user.email}"
    )


def _user_json(user: UserDetail) -> str:
    data = {
        "id": user.id,
        "email": user.email,
        "active": user.active,
        "remaining_seconds": user.remaining_seconds,
        "created_at": _iso(user.created_at),
        "revoked_at": _iso(user.revoked_at) if user.revoked_at else None,
        "interviews": user.interviews,
        "sessions": user.sessions,
    }
    return json.dumps(data, indent=2)


async def evict_shared_cache(settings: Settings, token_hash: str) -> None:
    """Drop a user from Redis at once (the database's notification reaches every relay
    listening to it too: relay.admission.invalidation)."""
    if not settings.cache.redis_url:
        return
    from relay.admission.cache import UserCache

    cache = UserCache(settings.cache, MetricsRegistry())
    try:
        await cache.invalidate(token_hash)
    finally:
        await cache.close()


async def reissue(settings: Settings, store: Store, email: str) -> tuple[UserDetail, str] | None:
    """A new token for the user of ``email`` (the old one stops everywhere); None: no user."""
    admin = UserAdmin(store)
    user = await admin.get_by_email(email)
    if user is None:
        return None
    token = new_token()
    change = await admin.update(user.id, notify, token_hash=hash_token(token))
    if change is None:
        return None
    await evict_shared_cache(settings, change.old_token_hash)
    return change.user, token


async def users_command(settings: Settings, args: argparse.Namespace) -> int:
    command = args.users_command
    # The API's bounds (PATCH /api/users/{id}): beyond them PostgreSQL's INTEGER column
    # would refuse the number with a DataError.
    if command == "credit" and args.seconds is not None and not 0 <= args.seconds <= MAX_SECONDS:
        return _fail(f"--seconds must be within 0..{MAX_SECONDS}", 2)
    if command == "credit" and args.add is not None and not abs(args.add) <= MAX_SECONDS:
        return _fail(f"--add must be within -{MAX_SECONDS}..{MAX_SECONDS}", 2)
    async with open_store(settings, create=args.create) as store:
        admin = UserAdmin(store)
        if command == "list":
            if not 1 <= args.limit <= 1000:
                return _fail("--limit must be within 1..1000", 2)
            active = False if args.inactive else None
            for user in await admin.page(limit=args.limit, email=args.email, active=active):
                print(_user_line(user))
            return 0
        if command == "reissue":
            issued = await reissue(settings, store, args.email)
            if issued is None:
                return _fail(f"no user with email {args.email}")
            user, token = issued
            note = "" if user.active else " (still revoked: `relay users reactivate`)"
            print(f"new token for {user.email}; the old one no longer works{note}:")
            print(token)
            return 0
        found = await admin.get_by_email(args.email)
        if found is None:
            return _fail(f"no user with email {args.email}")
        if command == "delete":
            old_token_hash = await ErasureRows(store).mark_user(found.id, notify)
            if old_token_hash is None:
                return _fail(f"no user with email {args.email}")
            await evict_shared_cache(settings, old_token_hash)
            print(f"deleting user {found.id} ({found.email}) and their interviews: {_ERASING}")
            return 0
        if command == "show":
            print(_user_json(found))
            return 0
        if command == "credit":
            change = await admin.update(
                found.id, notify, remaining_seconds=args.seconds, add_seconds=args.add
            )
        else:  # reactivate
            change = await admin.update(found.id, notify, active=True)
        assert change is not None
        await evict_shared_cache(settings, change.old_token_hash)
        print(_user_line(change.user))
        return 0
