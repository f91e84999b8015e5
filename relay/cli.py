"""Command line: ``relay serve | simulate | doctor | users | keys | interviews | db migrate |
webhooks | state-key`` (the management commands: relay.manage, relay.webhooks.commands,
relay.state_key)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from relay import state_key
from relay.admission.bulk_users import MAX_SECONDS
from relay.admission.tokens import hash_token, new_token
from relay.admission.users import UserAdmin, UserExists, UserRows, UsersExist
from relay.cluster.bus import notify
from relay.config import ConfigError, Settings, load_settings
from relay.db import DatabaseUnavailable, Store
from relay.db.embedded_pg import EmbeddedPostgresError
from relay.db.migrate import MigrationTimeout, UnsupportedServer
from relay.fields import email_problem
from relay.manage import (
    NoDatabase,
    add_database_options,
    add_parsers,
    add_user_parsers,
    evict_shared_cache,
    interviews_command,
    keys_command,
    open_store,
    settings_for,
    users_command,
)
from relay.observability.logging import configure_logging, json_entry
from relay.process_lifetime import StoppedDuringStartUp, StopSignals
from relay.upstream.simulator_process import (
    CONTROL_TOKEN_ENV,
    SIMULATOR_API_KEY,
    SimulatorStartError,
    simulator_spec,
    start_simulator_process,
)
from relay.webhooks import commands as webhook_commands

# What only `relay serve` needs (the application, aiohttp's server, the media stack with
# aiortc and PyAV) is imported by it: without them a management command such as
# `relay users add` starts in well under half the time (tests/unit/test_cli_imports.py).
if TYPE_CHECKING:
    from aiohttp import web

    from relay.services import Services

log = logging.getLogger("relay.cli")

DEMO_EMAIL = "demo@localhost"
# The simulator's control token (relay simulate); there is deliberately no option for it.
SIM_CONTROL_TOKEN_ENV = CONTROL_TOKEN_ENV
DEFAULT_USER_SECONDS = 1800
SIMULATED_LINE = "SIMULATED upstream: candidates talk to the built-in simulator, not OpenAI."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="TOML settings file (default: ./config.toml if present)")
        return p

    serve = with_config(sub.add_parser("serve", help="run the relay"))
    serve.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: server.port, 8080)")
    serve.add_argument(
        "--simulate",
        action="store_true",
        help="use the built-in simulator as the upstream (required without an OpenAI key "
        "on a non-loopback address; same as upstream.simulate = true)",
    )
    serve.add_argument(
        "--workers",
        default="1",
        help="worker processes on one port: a number or 'auto' (one per CPU); default 1",
    )

    simulate = sub.add_parser(
        "simulate",
        help="run the OpenAI Realtime simulator alone (control token: "
        f"${SIM_CONTROL_TOKEN_ENV}, else a random one, printed at start)",
    )
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=9000)
    simulate.add_argument("--dialect", choices=["ga", "beta"], default="ga")
    # The /_sim/* control token comes from $RELAY_SIM_CONTROL_TOKEN (else a random one,
    # printed at start), never from an option: argv is visible to every local user (ps).

    with_config(
        sub.add_parser(
            "doctor", help="check the configured upstream: key, model, minting (one line each)"
        )
    )

    users = sub.add_parser("users", help="manage candidate accounts")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = add_database_options(
        with_config(
            users_sub.add_parser(
                "add", help="create a user (or reactivate a revoked one) and print its token"
            )
        )
    )
    add.add_argument("--email", required=True)
    add.add_argument(
        "--seconds", type=int, default=DEFAULT_USER_SECONDS, help="interview seconds granted"
    )
    bulk = add_database_options(
        with_config(
            users_sub.add_parser(
                "import", help="create users from a CSV (email[,seconds]); tokens to a new file"
            )
        )
    )
    bulk.add_argument("--file", required=True, type=Path, help="CSV with an 'email' header")
    bulk.add_argument(
        "--tokens-out", required=True, type=Path, help="new file for email,token (mode 0600)"
    )
    bulk.add_argument(
        "--seconds", type=int, default=DEFAULT_USER_SECONDS, help="for rows without seconds"
    )
    revoke = add_database_options(
        with_config(users_sub.add_parser("revoke", help="deactivate a user"))
    )
    revoke.add_argument("--email", required=True)
    add_user_parsers(users_sub, with_config)
    add_parsers(sub, with_config)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    add_database_options(with_config(db_sub.add_parser("migrate", help="apply schema migrations")))

    webhook_commands.add_parser(sub, lambda p: add_database_options(with_config(p)))
    state_key.add_parser(sub, lambda p: add_database_options(with_config(p)))
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    settings = load_settings(path)
    if getattr(args, "host", None):
        settings = settings.replace("server", host=args.host)
    if getattr(args, "port", None) is not None:
        settings = settings.replace("server", port=args.port)
    if getattr(args, "simulate", False):
        settings = settings.replace("upstream", simulate=True)
    return settings_for(settings, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve" and _orphaned_worker():
        return 1
    try:
        if args.command == "simulate":
            configure_logging("INFO")
            from relay.upstream.simulator.server import run_simulator

            control_token = os.environ.get(SIM_CONTROL_TOKEN_ENV, "")
            run_simulator(args.host, args.port, args.dialect, control_token)
            return 0
        if args.command == "state-key" and args.state_key_command == "generate":
            # No settings: a key is generated to replace one, which may be the one wrong.
            return state_key.generate()
        settings = _settings(args)
        configure_logging(settings.server.log_level, settings.server.log_format)
        if args.command == "serve":
            from relay import event_loop
            from relay.observability import error_tracking
            from relay.workers import worker_count, worker_index

            try:
                workers = worker_count(args.workers)
            except ValueError:
                print("--workers must be a number within 1..256 or auto", file=sys.stderr)
                return 2
            # SENTRY_* checked here, before any worker starts (each would fail alike).
            error_tracking.check_environment(os.environ)
            event_loop.install(settings.server.event_loop)
            if workers > 1 and worker_index() is None:
                return asyncio.run(_supervise(settings, workers, _worker_argv(args)))
            # Sentry only when SENTRY_DSN is set (relay.observability.error_tracking).
            error_tracking.from_environment()
            return asyncio.run(_serve(settings))
        if args.command == "doctor":
            return asyncio.run(_doctor(settings))
        if args.command == "users":
            return asyncio.run(_users(settings, args))
        if args.command == "keys":
            return asyncio.run(keys_command(settings, args))
        if args.command == "interviews":
            return asyncio.run(interviews_command(settings, args))
        if args.command == "db":
            return asyncio.run(_migrate(settings, create=args.create))
        if args.command == "webhooks":
            return asyncio.run(_webhooks(settings, args))
        if args.command == "state-key":
            return asyncio.run(_reseal(settings, args))
    except StoppedDuringStartUp as exc:
        # SIGTERM or SIGHUP before `serve` was listening: as for Ctrl-C below, what had
        # started has been stopped; the shell's status for that signal (143, 129).
        print(f"stopped during start-up ({exc.name})", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        # Ctrl-C during a command, or before `serve` listens (afterwards it drains
        # instead): asyncio.run has cancelled the main task, whose clean-up stopped what
        # it had started (the embedded PostgreSQL too); say so, without a traceback, with
        # the shell's status for SIGINT.
        print("interrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except NoDatabase as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"database unavailable: {exc}", file=sys.stderr)
        return 3
    except EmbeddedPostgresError as exc:
        print(f"embedded PostgreSQL: {exc}", file=sys.stderr)
        return 3
    except SimulatorStartError as exc:
        print(f"built-in simulator: {exc}", file=sys.stderr)
        return 3
    except MigrationTimeout as exc:
        print(
            f"database migrations: {exc} (database.migration_timeout_s); another instance "
            "may be migrating, or a lock is held on the schema",
            file=sys.stderr,
        )
        return 3
    except UnsupportedServer as exc:
        print(f"database: {exc}", file=sys.stderr)
        return 2
    return 1


# ---------------------------------------------------------------------- serve
def _orphaned_worker() -> bool:
    """In a worker of ``--workers N``: arrange to die with the supervisor, before anything
    else; True when the supervisor is already gone (the worker must not start)."""
    from relay.workers import SupervisorGone, die_with_supervisor, worker_index

    if worker_index() is None:
        return False
    try:
        die_with_supervisor()
    except SupervisorGone as exc:
        print(f"worker not started: {exc}", file=sys.stderr)
        return True
    return False


def _worker_argv(args: argparse.Namespace) -> list[str]:
    argv = []
    if args.config:
        argv += ["--config", args.config]
    if args.host:
        argv += ["--host", args.host]
    if args.simulate:
        argv += ["--simulate"]
    return argv


async def _serve(settings: Settings) -> int:
    # First: a stop signal from here on ends the start-up cleanly (relay.process_lifetime).
    signals = StopSignals()
    try:
        return await _start_and_serve(settings, signals)
    except asyncio.CancelledError:
        signals.raise_if_stopped()
        raise


async def _start_and_serve(settings: Settings, signals: StopSignals) -> int:
    from aiohttp import web

    from relay.app import create_app
    from relay.services import SERVICES
    from relay.workers import READY_PREFIX, bind_listener, worker_index

    worker = worker_index()
    try:
        # Bound before the app starts: the member id and address need the real port.
        sock = bind_listener(
            settings.server.host, settings.server.port, reuse_port=worker is not None
        )
    except OSError as exc:
        print(
            f"cannot listen on {settings.server.host}:{settings.server.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 1
    port = int(sock.getsockname()[1])
    settings = settings.replace("server", port=port)
    instance_id = f"{socket.gethostname()}:{port}"
    if worker is not None:
        instance_id += f"/w{worker}"
    app = create_app(settings, instance_id=instance_id, worker=worker)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
    except BaseException:
        sock.close()
        raise
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        # Listening: a stop signal now drains (one during the banner too, right after it).
        signals.started()
        services = app[SERVICES]
        if worker is None:
            await _announce(services, runner)
        else:
            print(f"{READY_PREFIX} {instance_id}", flush=True)
        await signals.stop.wait()
        services.drain.start()
        log.info(
            "draining: no new sessions; waiting up to %.0fs for live ones",
            settings.server.drain_timeout_s,
        )
        await services.bridges.drain(settings.server.drain_timeout_s)
        return 0
    finally:
        await runner.cleanup()


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def listening_banner(host: str, port: int, suffix: str = "") -> tuple[str, str]:
    """The start-up line naming the address actually bound, and the URL to open on this
    machine (for a wildcard bind, its loopback address)."""
    bound = http_url(host, port)
    local = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host)
    if local is None:
        return f"Interview relay listening on {bound}{suffix}", bound
    here = http_url(local, port)
    every = "every IPv4 interface" if host == "0.0.0.0" else "every interface"
    line = f"Interview relay listening on {bound}{suffix} ({every}; from this machine: {here})"
    return line, here


def _say(settings: Settings, *lines: str) -> None:
    """Start-up lines on stdout: as they are, or with ``server.log_format = "json"`` one
    JSON log entry (logger ``relay.banner``) holding them, so that a log shipper reading
    the relay's output parses every line (stdout and stderr often end up in one journal)."""
    if settings.server.log_format == "json":
        print(json_entry("relay.banner", " ".join(lines)), flush=True)
        return
    for line in lines:
        print(line, flush=True)


async def _announce(services: Services, runner: web.AppRunner) -> None:
    """Print the page URL, the operator token if generated, and a fresh demo token."""
    settings = services.settings
    host, port = runner.addresses[0][:2]
    line, url = listening_banner(str(host), int(port))
    _say(settings, line)
    if services.simulated:
        _say(settings, SIMULATED_LINE)
    _say(settings, f"Operator dashboard: {url}stats")
    if services.generated_operator_token:
        _say(
            settings,
            f"Operator token (generated for this run): {services.generated_operator_token}",
        )
    if settings.server.demo_user_wanted(settings.database.url):
        token = new_token()
        try:
            await services.users.create_user(
                DEMO_EMAIL, hash_token(token), DEFAULT_USER_SECONDS, replace=True
            )
        except DatabaseUnavailable as exc:
            log.error("could not create the demo user: %s", exc)
            return
        _say(settings, f"Demo candidate {DEMO_EMAIL}; token (new for this run):", token)


# ---------------------------------------------------------------------- doctor
async def _doctor(settings: Settings) -> int:
    """``relay doctor``: the configured upstream, or (no key, or upstream.simulate) the
    simulator the relay would use, checked end to end: the shared one at
    upstream.simulator_url, else the built-in one."""
    from relay.upstream.doctor import doctor_main

    _doctor_media(settings)
    upstream = settings.upstream
    # As the relay chooses (relay.upstream.simulation): asked-for simulation wins over a key.
    if upstream.api_key and not upstream.simulate:
        return await doctor_main(upstream)
    if upstream.simulator_url:
        # The shared simulator every relay uses (`relay simulate`): checked there, as they
        # reach it; it names itself, so the verdict still says SIMULATED, and one that is
        # down fails (starting another here would say all is well).
        shared = upstream.model_copy(
            update={"api_key": SIMULATOR_API_KEY, "base_url": upstream.simulator_url}
        )
        return await doctor_main(shared)
    # The same simulator the relay would start, in a process of its own as the relay runs it.
    simulator = await start_simulator_process(simulator_spec(settings))
    try:
        config = upstream.model_copy(
            update={"api_key": SIMULATOR_API_KEY, "base_url": simulator.base_url}
        )
        return await doctor_main(config, simulated=True)
    finally:
        await simulator.close()


def _doctor_media(settings: Settings) -> None:
    """The media forwarding line: which fast path this installation runs (never fails)."""
    from relay.media import fastloop
    from relay.media.capabilities import probe
    from relay.upstream.doctor import Check

    fastloop.configure(
        settings.media.compiled_fast_path, probe(), threaded=settings.media.forwarding_thread
    )
    outcome, detail, todo = fastloop.doctor_check()
    print(Check(outcome, "media forwarding", detail, todo).line(), flush=True)


async def _supervise(settings: Settings, workers: int, argv: list[str]) -> int:
    from relay.upstream.simulation import uses_simulator
    from relay.workers import Supervisor

    async def announce(
        settings: Settings, dsn: str, port: int, operator_token: str | None, count: int
    ) -> None:
        line, url = listening_banner(settings.server.host, port, f" ({count} workers)")
        _say(settings, line)
        # The same lines as a single relay's (_announce).
        if uses_simulator(settings):
            _say(settings, SIMULATED_LINE)
        _say(settings, f"Operator dashboard: {url}stats")
        if operator_token:
            _say(settings, f"Operator token (generated for this run): {operator_token}")
        if settings.server.demo_user_wanted(settings.database.url):
            await _demo_user(settings.replace("database", url=dsn))

    return await Supervisor(settings, workers, argv).run(announce)


async def _demo_user(settings: Settings) -> None:
    token = new_token()
    try:
        async with open_store(settings, create=True) as store:
            await UserRows(store).create_user(
                DEMO_EMAIL, hash_token(token), DEFAULT_USER_SECONDS, replace=True
            )
    except DatabaseUnavailable as exc:
        log.error("could not create the demo user: %s", exc)
        return
    _say(settings, f"Demo candidate {DEMO_EMAIL}; token (new for this run):", token)


# ---------------------------------------------------------------------- users, db
async def _migrate(settings: Settings, *, create: bool) -> int:
    async with open_store(settings, create=create):
        print("database schema is up to date")
    return 0


async def _import_users(settings: Settings, args: argparse.Namespace) -> int:
    """All or nothing: a bad line or a taken email adds nobody and leaves no tokens file."""
    from relay.admission.bulk_users import ImportFileError, parse_users_csv, write_tokens

    if not 0 <= args.seconds <= MAX_SECONDS:
        print(f"--seconds must be within 0..{MAX_SECONDS}", file=sys.stderr)
        return 2
    try:
        text = await asyncio.to_thread(args.file.read_text, encoding="utf-8")
        users = parse_users_csv(text, args.seconds)
    except (OSError, UnicodeDecodeError, ImportFileError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    tokens = [new_token() for _ in users]
    rows = [(u.email, t) for u, t in zip(users, tokens, strict=True)]
    try:
        await asyncio.to_thread(write_tokens, args.tokens_out, rows)
    except OSError as exc:  # exists already, or not writable: nothing added yet
        print(f"{args.tokens_out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        async with open_store(settings, create=args.create) as store:
            count = await UserRows(store).create_users(
                [(u.email, hash_token(t), u.seconds) for u, t in zip(users, tokens, strict=True)]
            )
    except BaseException as exc:
        args.tokens_out.unlink(missing_ok=True)  # those tokens open nothing
        if isinstance(exc, UsersExist):
            shown = ", ".join(exc.emails[:10]) + (" ..." if len(exc.emails) > 10 else "")
            print(f"nothing imported: {len(exc.emails)} already exist: {shown}", file=sys.stderr)
            return 1
        raise
    print(f"created {count} users; their tokens are in {args.tokens_out}")
    return 0


async def _users(settings: Settings, args: argparse.Namespace) -> int:
    if args.users_command == "import":
        return await _import_users(settings, args)
    if args.users_command not in ("add", "revoke"):
        return await users_command(settings, args)
    if args.users_command == "add":
        # Checked as `users import` and the API check them, before the database is opened
        # (an out-of-range number would only fail there, as a DataError).
        args.email = args.email.strip()
        if (problem := email_problem(args.email)) is not None:
            print(f"--email: {problem}", file=sys.stderr)
            return 2
        if not 0 <= args.seconds <= MAX_SECONDS:
            print(f"--seconds must be within 0..{MAX_SECONDS}", file=sys.stderr)
            return 2
    async with open_store(settings, create=args.create) as store:
        users = UserRows(store)
        if args.users_command == "add":
            existing = await users.find_user_by_email(args.email)
            if existing is not None and not existing.active:
                return await _reactivate_with_token(settings, store, existing.id, args)
            if existing is not None:
                print(
                    f"a user with email {args.email} already exists; a lost token is "
                    f"replaced with `relay users reissue --email {args.email}`",
                    file=sys.stderr,
                )
                return 1
            token = new_token()
            try:
                user = await users.create_user(args.email, hash_token(token), args.seconds)
            except UserExists:  # added by someone else since the check above
                print(f"a user with email {args.email} already exists", file=sys.stderr)
                return 1
            print(f"created user {user.id} <{user.email}> with {user.remaining_seconds} seconds")
            print(token)
            return 0
        from relay.cluster.revoke import revoke_user

        token_hash = await revoke_user(store, args.email)
        if token_hash is None:
            print(f"no user with email {args.email}", file=sys.stderr)
            return 1
        await evict_shared_cache(settings, token_hash)
        print(f"revoked {args.email}")
        return 0


async def _reactivate_with_token(
    settings: Settings, store: Store, user_id: int, args: argparse.Namespace
) -> int:
    """``users add`` for a revoked user: active again, with a new token and the given
    seconds (the documented way back after `relay users revoke`)."""
    token = new_token()
    change = await UserAdmin(store).update(
        user_id,
        notify,
        remaining_seconds=args.seconds,
        active=True,
        token_hash=hash_token(token),
    )
    if change is None:  # being erased (`relay users delete`): its address is not free yet
        print(
            f"the user with email {args.email} is being erased; add it again once it is gone",
            file=sys.stderr,
        )
        return 1
    await evict_shared_cache(settings, change.old_token_hash)
    user = change.user
    print(f"reactivated user {user.id} <{user.email}> with {user.remaining_seconds} seconds")
    print(token)
    return 0


async def _webhooks(settings: Settings, args: argparse.Namespace) -> int:
    async with open_store(settings, create=args.create) as store:
        return await webhook_commands.run(settings, store, args)


async def _reseal(settings: Settings, args: argparse.Namespace) -> int:
    async with open_store(settings, create=args.create) as store:
        return await state_key.reseal(settings, store, args)
