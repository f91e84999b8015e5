"""Start-up's database steps: migrate, warm the pool, recover rows a crash left live.

They run in the background (a database that is down must not stop the relay from
starting) and are tried ``database.bootstrap_attempts`` times on errors a retry can fix
(connection errors, timeouts: ``RETRYABLE_ERRORS``), with exponential backoff and full
jitter between attempts. Each failed attempt is logged with its step and kind and kept in
``StartupStatus`` for ``/readyz``; when the attempts run out, or on an error no retry can
fix, ``BootstrapFailed`` ends the task and ``/readyz`` turns red for good
(``checks.startup``): the relay needs an operator and a restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime

from relay.admission.store import RETRYABLE_ERRORS, Store
from relay.config import Settings
from relay.services import StartupStatus

log = logging.getLogger("relay.db")

# Backoff between attempts: 1, 2, 4, ... seconds, capped, each fully jittered (instances
# started together do not retry in step).
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 10.0
# Slack added to the longest possible session before a live row counts as abandoned.
STALE_GRACE_S = 600


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
    instance: str,
    settings: Settings,
    status: StartupStatus,
    *,
    started_at: datetime,
) -> None:
    """Migrate, warm and recover, retried a bounded number of times (module docstring)."""
    config = settings.database
    # No session can be live for longer than this; older live rows belong to dead relays.
    stale_after_s = settings.session.max_duration_s + settings.session.pending_ttl_s + STALE_GRACE_S
    status.database_max_attempts = config.bootstrap_attempts
    for attempt in range(1, config.bootstrap_attempts + 1):
        status.database_attempts = attempt
        step = "migrate"
        try:
            await store.migrate()
            step = "warm"
            warmed = await store.warm()
            step = "recover"
            recovered = await store.recover_abandoned_sessions(
                instance, started_before=started_at, stale_after_s=stale_after_s
            )
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
                _describe(exc, step, settings),
                delay,
            )
            await asyncio.sleep(delay)
            continue
        except Exception as exc:
            # A migration error, missing privileges: no retry fixes it.
            status.database_last_error = f"{step}: {error_kind(exc)}"
            raise BootstrapFailed(f"database_bootstrap: {error_kind(exc)}") from exc
        status.database_last_error = None
        log.info("database ready: %d warm connections", warmed)
        if recovered:
            log.warning("closed %d sessions left live by a previous run", recovered)
        return


def _describe(exc: BaseException, step: str, settings: Settings) -> str:
    if step == "migrate" and isinstance(exc, TimeoutError):
        return (
            f"not done within database.migration_timeout_s = "
            f"{settings.database.migration_timeout_s:g} s: another instance migrating, "
            "or a lock held on the schema"
        )
    return f"{type(exc).__name__}: {exc}"
