"""Whether the relay runs against the built-in simulator, and when it may.

Without an OpenAI key the relay falls back to its simulator, which is right for a local
try-out and wrong for a public deployment whose key went missing: candidates would hold
interviews with a canned interviewer. So the fallback is automatic only on a loopback
``server.host`` that no proxy forwards to (``server.trusted_proxies`` empty: a relay behind
a reverse proxy serves candidates even when it listens on loopback, as in compose.yaml);
anywhere else simulation must be asked for (``upstream.simulate`` or
``relay serve --simulate``), and a simulated relay says so to candidates (the session
response's ``simulated``, shown as a banner by the page) and operators (``/api/stats``,
the start-up log).
"""

from __future__ import annotations

import ipaddress

from relay.config import ConfigError, Settings

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
# Every answer of the built-in simulator carries this header (relay.upstream.simulator), so
# that `relay doctor` pointed at one (`relay simulate`, a simulator service) says SIMULATED
# instead of passing checks OpenAI never saw.
SIMULATOR_HEADER = "X-Relay-Simulator"


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def uses_simulator(settings: Settings) -> bool:
    """True to run the simulator; ConfigError when it would be an unannounced fallback."""
    upstream = settings.upstream
    if upstream.simulate:
        return True
    if upstream.api_key:
        return False
    if not is_loopback(settings.server.host):
        why = f"server.host {settings.server.host!r} is not a loopback address"
    elif settings.server.trusted_proxies:
        why = "server.trusted_proxies is set (candidates reach this relay through a proxy)"
    else:
        return True
    raise ConfigError(
        f"upstream.api_key: no OpenAI key, and {why}; set OPENAI_API_KEY, or ask for the "
        "built-in simulator explicitly (relay serve --simulate, or upstream.simulate = true)"
    )
