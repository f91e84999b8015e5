"""Security headers on every response, set where no route can forget them.

Installed as an ``on_response_prepare`` signal, so file responses, JSON errors and any
page added later (an operator dashboard) get the same headers. The pages ship no inline
script or style, so the Content-Security-Policy can forbid both; ``connect-src 'self'``
covers the page's API calls (WebRTC media is not governed by CSP).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from aiohttp import web

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


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    apply_security_headers(response.headers)


def install(app: web.Application) -> None:
    app.on_response_prepare.append(_on_prepare)
