"""Cross-origin calls: pages on the origins of ``server.cors_origins`` may call the candidate
API and the OpenAI-compatible routes from the browser; nothing else is cross-origin.

A product that embeds the interview in its own web app (its page on
``https://app.example.com``, the relay on ``https://relay.example.com``), typically with
OpenAI's Agents SDK pointed at the relay, calls these from its page. The routes are the
registry's operations tagged ``candidate`` (the session request, the exchange, the
session's state and end, the recording notice, and any candidate operation added later)
or ``openai`` (``/v1/realtime/…``).

* A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from a
  listed origin, for a method of the path, asking for headers these clients send, is
  answered 204 with exactly that origin (never ``*``), the path's methods and the headers
  asked for; anything else is refused (403 ``cors_not_allowed``, no CORS headers), which
  the browser reports as a failed preflight. An ``OPTIONS`` that is no preflight is
  answered 204 with ``Allow``.
* The answers to those routes for a listed ``Origin`` carry it in
  ``Access-Control-Allow-Origin`` and expose what a script needs beyond the CORS-safelisted
  headers: ``Location`` (the call id), ``X-Request-ID``, the retry hints.
  ``Vary: Origin`` on every answer of those routes.

No credentials mode: the candidate's credential travels in ``Authorization``, never in a
cookie, so ``Access-Control-Allow-Credentials`` is never sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from relay.errors import ApiError
from relay.web.api import Api

# The registry's tags whose operations pages on other origins may call.
CROSS_ORIGIN_TAGS = frozenset({"candidate", "openai"})
# Request headers a page may send (OpenAI's SDKs add their own).
ALLOWED_REQUEST_HEADERS = frozenset(
    {
        "authorization",
        "content-type",
        "idempotency-key",
        "x-request-id",
        # The Agents SDK's version header, and what OpenAI's JS client may add.
        "x-openai-agents-sdk",
        "openai-beta",
        "openai-organization",
        "openai-project",
    }
)
# The openai JS client's x-stainless-os, -lang, -retry-count, …
ALLOWED_REQUEST_HEADER_PREFIXES = ("x-stainless-",)
EXPOSED_HEADERS = ", ".join(
    (
        "Location",
        "X-Request-ID",
        "Retry-After",
        "x-should-retry",
        "Idempotent-Replayed",
        "Server-Timing",
    )
)
MAX_AGE_S = 600


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str]
    # Canonical path → the methods it answers.
    paths: dict[str, frozenset[str]]


CORS = web.AppKey("cors", CorsPolicy)


def cross_origin_paths(api: Api) -> dict[str, frozenset[str]]:
    methods: dict[str, set[str]] = {}
    for op in api.operations:
        if op.tag in CROSS_ORIGIN_TAGS:
            verbs = methods.setdefault(op.path, set())
            verbs.add(op.method)
            if op.method == "GET":
                verbs.add("HEAD")
    return {path: frozenset(verbs) for path, verbs in methods.items()}


def _header_allowed(name: str) -> bool:
    return name in ALLOWED_REQUEST_HEADERS or name.startswith(ALLOWED_REQUEST_HEADER_PREFIXES)


def _asked_headers(value: str) -> list[str]:
    return [h.strip().lower() for h in value.split(",") if h.strip()]


def _refused(message: str) -> ApiError:
    return ApiError(403, "cors_not_allowed", message)


def _preflight(
    policy: CorsPolicy, methods: frozenset[str]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    allow = ", ".join(sorted(methods | {"OPTIONS"}))

    async def preflight(request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        method = request.headers.get("Access-Control-Request-Method")
        if origin is None or method is None:
            return web.Response(status=204, headers={"Allow": allow})
        if origin not in policy.origins:
            raise _refused(
                f"Pages on {origin[:200]} may not call this relay (server.cors_origins)."
            )
        if method not in methods:
            raise _refused(f"{method[:20]} is not a method of {request.path}.")
        asked = _asked_headers(request.headers.get("Access-Control-Request-Headers", ""))
        refused = [h for h in asked if not _header_allowed(h)]
        if refused:
            raise _refused(f"Request header {refused[0][:64]!r} is not allowed.")
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(sorted(methods)),
            "Access-Control-Max-Age": str(MAX_AGE_S),
            "Vary": "Origin",
        }
        if asked:
            headers["Access-Control-Allow-Headers"] = ", ".join(asked)
        return web.Response(status=204, headers=headers)

    return preflight


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    policy = request.app[CORS]
    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in policy.paths:
        return
    if "Origin" not in response.headers.get("Vary", ""):
        response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if origin is None or origin not in policy.origins or request.method == "OPTIONS":
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS


def install(app: web.Application, api: Api, origins: Iterable[str]) -> None:
    """Preflight routes for the cross-origin operations of ``api``, and the CORS headers
    of their answers (after ``api.install``: the paths exist)."""
    policy = CorsPolicy(origins=frozenset(origins), paths=cross_origin_paths(api))
    app[CORS] = policy
    for path, methods in sorted(policy.paths.items()):
        app.router.add_route("OPTIONS", path, _preflight(policy, methods))
    app.on_response_prepare.append(_on_prepare)
