"""Start-up's database steps: migrate, warm the pool, then the caller's recovery step
(relay.app closes the session rows a crash left live: relay.sessions.rows).

They run in the background (a database that is down must not stop the relay from
starting) and are tried ``database.bootstrap_attempts`` times on errors a retry can fix
(connection errors, timeouts: ``RETRYABLE_ERRORS``), with exponential backoff and full
jitter between attempts. Each failed attempt is logged with its step and kind and kept in
``StartupStatus`` for ``/readyz``; when the attempts run out, or on an error no retry can
fix, ``BootstrapFailed`` ends the task and ``/readyz`` turns red for good
(``checks.startup``): the relay needs an operator and a restart.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay.config import DatabaseConfig
from relay.db.migrate import MigrationTimeout
from relay.db.store import RETRYABLE_ERRORS, Store, no_answer
from relay.tasks import idle

log = logging.getLogger("relay.db")

# Backoff between attempts: 1, 2, 4, ... seconds, capped, each fully jittered (instances
# started together do not retry in step).
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 10.0


@dataclass
class StartupStatus:
    """What start-up could not do and will not retry; /readyz reports it."""

    # The failed step and the error's kind, e.g. "database_bootstrap: InsufficientPrivilegeError".
    # (The full message goes to the log only: /readyz is public.)
    failure: str | None = None
    # The database bootstrap while it retries: attempts made, the most allowed, and the
    # last one's failure as "<step>: <kind>" ("migrate: timeout").
    database_attempts: int = 0
    database_max_attempts: int = 0
    database_last_error: str | None = None


class BootstrapFailed(Exception):
    """The bootstrap gave up; ``reason`` is public (``/readyz``), the cause is logged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def error_kind(exc: BaseException) -> str:
    """What went wrong, without the message (which can name hosts or roles)."""
    return "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__


def backoff_delay(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))


async def bootstrap_database(
    store: Store,
    config: DatabaseConfig,
    status: StartupStatus,
    *,
    recover: Callable[[], Awaitable[None]],
) -> None:
    """Migrate, warm and ``recover``, retried a bounded number of times (module docstring).

    ``recover`` runs once the schema is in place: it must be safe to run again (a retry
    of the whole bootstrap after it failed half-way)."""
    status.database_max_attempts = config.bootstrap_attempts
    for attempt in range(1, config.bootstrap_attempts + 1):
        status.database_attempts = attempt
        step = "migrate"
        try:
            await store.migrate()
            step = "warm"
            warmed = await store.warm()
            step = "recover"
            await recover()
        except RETRYABLE_ERRORS as exc:
            status.database_last_error = f"{step}: {error_kind(exc)}"
            if attempt == config.bootstrap_attempts:
                raise BootstrapFailed(
                    f"database_bootstrap: {status.database_last_error}"
                    f" (gave up after {attempt} attempts)"
                ) from exc
            delay = backoff_delay(attempt)
            log.warning(
                "database bootstrap attempt %d/%d failed at %s (%s); retrying in %.1f s",
                attempt,
                config.bootstrap_attempts,
                step,
                _describe(exc, step, config),
                delay,
            )
            await idle(delay)
            continue
        except Exception as exc:
            # A migration error, missing privileges: no retry fixes it.
            status.database_last_error = f"{step}: {error_kind(exc)}"
            raise BootstrapFailed(f"database_bootstrap: {error_kind(exc)}") from exc
        status.database_last_error = None
        log.info("database ready: %d warm connections", warmed)
        return


def _describe(exc: BaseException, step: str, config: DatabaseConfig) -> str:
    if isinstance(exc, MigrationTimeout):
        return (
            f"not done within database.migration_timeout_s = "
            f"{config.migration_timeout_s:g} s: another instance migrating, "
            "or a lock held on the schema"
        )
    if step == "migrate" and isinstance(exc, TimeoutError):
        # Any other timeout of this step is its connection's (Store.migrate): the server
        # is down, stopped (SIGSTOP) or unreachable, not busy migrating.
        return no_answer(config)
    return f"{type(exc).__name__}: {exc}"
