"""Security headers on every response, set where no route can forget them.

Installed as an ``on_response_prepare`` signal, so file responses, JSON errors and any
page added later (an operator dashboard) get the same headers. The pages ship no inline
script or style, so the Content-Security-Policy can forbid both; ``connect-src 'self'``
covers the page's API calls (WebRTC media is not governed by CSP).

Also set here:

* ``Cache-Control: no-store`` on every JSON response and every response to a request
  carrying credentials, unless the route chose its own: a session carries a TURN
  credential, the exchange the relay's SDP, the operator's answers candidates' data, and
  none of it belongs in a browser's or a proxy's cache;
* ``Strict-Transport-Security`` when the request came over TLS: directly, or as a proxy
  listed in ``server.trusted_proxies`` says with ``X-Forwarded-Proto: https``
  (relay.web.forwarded). No ``includeSubDomains``: the relay's host says nothing about
  its siblings.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from aiohttp import web

from relay.services import SERVICES
from relay.web.forwarded import forwarded_over_tls

# No version: the product name only.
SERVER_NAME = "interview-relay"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # For browsers predating frame-ancestors.
    "X-Frame-Options": "DENY",
    "Server": SERVER_NAME,
}


def apply_security_headers(headers: MutableMapping[str, str]) -> None:
    for name, value in SECURITY_HEADERS.items():
        headers[name] = value


# One year, the usual value; browsers ignore it on responses received over plain HTTP.
STRICT_TRANSPORT_SECURITY = "max-age=31536000"


def _over_tls(request: web.Request) -> bool:
    if request.secure:  # TLS ends at the relay itself
        return True
    proxies = request.app[SERVICES].settings.server.trusted_proxies
    return forwarded_over_tls(
        request.remote, request.headers.getall("X-Forwarded-Proto", []), proxies
    )


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    apply_security_headers(headers)
    if "Cache-Control" not in headers and (
        response.content_type == "application/json" or "Authorization" in request.headers
    ):
        headers["Cache-Control"] = "no-store"
    if _over_tls(request):
        headers["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY


def install(app: web.Application) -> None:
    app.on_response_prepare.append(_on_prepare)
