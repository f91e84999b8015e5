"""One address in front of several relays, as the deployment's proxy is (docs/deploy.md:
Caddy over ``relay-1`` and ``relay-2``), for a browser that must see one origin while the
members behind it drain, stop and start: a member is in the pool while its ``/readyz``
answers 200 (checked every ``check_interval_s``, as the proxy's active health checks do,
only faster), each request goes to the first member in the pool (in the order given: the
tests know where an interview starts), and a request whose connection a member refuses
(a process that is gone) is sent to the next one, as ``lb_try_duration`` does. A request
that reached a member is never sent twice. Media does not pass here: the page's WebRTC
goes to the member's own addresses, as in production."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

# Headers of one hop, not passed on (RFC 9110 7.6.1), and the ones aiohttp sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
    }
)


class FrontDoor:
    def __init__(self, members: Sequence[str], *, check_interval_s: float = 0.2) -> None:
        # Base URLs (``http://127.0.0.1:PORT/``), in the order of preference.
        self.members = list(members)
        self.ready: dict[str, bool] = dict.fromkeys(self.members, True)
        self.check_interval_s = check_interval_s
        self.url = ""
        # Which member served each request: (method, path, member).
        self.served: list[tuple[str, str, str]] = []
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._checks: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A fresh connection per request: none kept to a member that then goes away.
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False
        )
        await self._check_all()
        self._checks = asyncio.create_task(self._check_forever(), name="front-door-checks")
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/"

    async def close(self) -> None:
        if self._checks is not None:
            self._checks.cancel()
            await asyncio.gather(self._checks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            await self._check_all()

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(member) for member in self.members))

    async def _check(self, member: str) -> None:
        assert self._http is not None
        try:
            async with self._http.get(
                member + "readyz", timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                self.ready[member] = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            self.ready[member] = False

    def _order(self) -> list[str]:
        # The pool first; then the others, should every member look down (a request is
        # still tried rather than refused by the proxy itself).
        return [m for m in self.members if self.ready[m]] + [
            m for m in self.members if not self.ready[m]
        ]

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        for member in self._order():
            try:
                async with self._http.request(
                    request.method,
                    member + request.rel_url.raw_path_qs.lstrip("/"),
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as upstream:
                    payload = await upstream.read()
                    self.served.append((request.method, request.path, member))
                    out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                    return web.Response(status=upstream.status, headers=out, body=payload)
            except aiohttp.ClientConnectorError:
                continue  # refused: nobody took it, the next member may
            except aiohttp.ClientError as exc:
                # It reached a member that went away meanwhile: not sent again.
                return web.json_response(
                    {"error": {"code": "member_failed", "message": str(exc)}}, status=502
                )
        return web.json_response(
            {"error": {"code": "no_member", "message": "No relay took the connection."}},
            status=502,
        )


@contextlib.asynccontextmanager
async def front_door(members: Sequence[str]) -> AsyncIterator[FrontDoor]:
    door = FrontDoor(members)
    await door.start()
    try:
        yield door
    finally:
        await door.close()
