"""One HTTP attempt of one delivery: the signed POST, and what came of it.

Outcomes (the ``outcome`` label of the metrics and the delivery log's): ``delivered`` (a
2xx answer), ``rejected`` (any other answer: its status and the start of its body are
logged), ``timeout`` (no answer within ``webhooks.timeout_s``), ``network`` (no
connection: refused, reset, TLS, no such name), ``refused`` (the URL or an address it
resolved to is one the SSRF guard refuses: relay.webhooks.ssrf), ``error`` (the relay
could not sign: its state key does not open the endpoint's secret).

Redirects are not followed (a 3xx is ``rejected``): a redirect could point anywhere,
the operator's network included. No proxy from the environment is used either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from relay import __version__
from relay.config import WebhooksConfig
from relay.fields import iso_utc
from relay.webhooks import signing
from relay.webhooks.ssrf import (
    AddressPolicy,
    AddressRefused,
    GuardedResolver,
    UrlRefused,
    check_literal,
    parse_url,
)

OUTCOMES = ("delivered", "rejected", "timeout", "network", "refused", "error")
# The start of a refusing answer's body, kept in the delivery log.
BODY_EXCERPT_BYTES = 256
USER_AGENT = f"interview-relay-webhooks/{__version__}"


@dataclass(frozen=True)
class Attempt:
    outcome: str
    status_code: int | None
    duration_s: float
    error: str | None


def payload(event_id: str, event_type: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    """The request body: the Standard Webhooks envelope (``type``, ``timestamp``,
    ``data``) and the event's id. The same bytes on every attempt."""
    envelope = {
        "id": event_id,
        "type": event_type,
        "timestamp": iso_utc(created_at),
        "data": data,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


class Sender:
    def __init__(
        self,
        config: WebhooksConfig,
        resolver: Callable[[], AbstractResolver] = aiohttp.ThreadedResolver,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self._policy = AddressPolicy.from_config(config)
        # Makes the resolver a delivery's addresses come from (the system's, through the
        # guard); a parameter so a test can play a DNS server whose answers change.
        self._resolver = resolver

    @property
    def policy(self) -> AddressPolicy:
        return self._policy

    def resolver(self) -> AbstractResolver:
        return self._resolver()

    async def send(
        self, url: str, secret: str, msg_id: str, body: bytes, *, previous: str | None = None
    ) -> Attempt:
        """POST ``body`` signed with ``secret`` (and ``previous``, during a rotation's
        overlap)."""
        started = time.monotonic()

        def done(outcome: str, status: int | None = None, error: str | None = None) -> Attempt:
            return Attempt(outcome, status, time.monotonic() - started, error)

        try:
            target = parse_url(url)
            check_literal(target, self._policy)
        except UrlRefused as exc:
            return done("refused", error=f"refused: {exc}")
        headers = signing.headers(secret, msg_id, int(time.time()), body, previous=previous)
        headers |= {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        # A connector per attempt: its resolver checks this URL's scheme, and nothing
        # (a cached address, a pooled connection) outlives the check it passed.
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._resolver(), self._policy, target.scheme),
            use_dns_cache=False,
            force_close=True,
        )
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector, timeout=self._timeout, trust_env=False
                ) as session,
                session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                if 200 <= resp.status < 300:
                    return done("delivered", resp.status)
                excerpt = await resp.content.read(BODY_EXCERPT_BYTES)
                text = excerpt.decode("utf-8", "replace").strip()
                return done(
                    "rejected", resp.status, f"HTTP {resp.status}" + (f": {text}" if text else "")
                )
        except aiohttp.ClientConnectorDNSError as exc:
            cause = exc.os_error
            if isinstance(cause, AddressRefused):
                return done("refused", error=f"refused: {cause.reason}")
            return done("network", error=f"{target.host} does not resolve ({cause})")
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            return done("timeout", error=f"no answer within {self._timeout.total:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return done("network", error=f"{type(exc).__name__}: {exc}"[:500])
