"""Operator endpoints over the whole cluster.

- ``GET /api/stats?scope=cluster``: ``{"instances": [...], "sessions": [...]}`` from
  every live member's heartbeat (this member's entry is refreshed first);
- ``POST /api/cluster/drain`` ``{"member": "<id>" | "*"}``: that member (or all) stops
  admitting sessions; live ones go on. 202: the command is on its way (within 2 s).
"""

from __future__ import annotations

from aiohttp import web

from relay.admission.service import database_error
from relay.cluster.runtime import ALL_MEMBERS
from relay.db import DatabaseUnavailable
from relay.errors import ApiError
from relay.observability.request_context import current_request_id
from relay.services import SERVICES
from relay.web.body import read_json_object
from relay.web.caller import require_operator


async def cluster_stats(request: web.Request) -> web.Response:
    await require_operator(request)
    services = request.app[SERVICES]
    try:
        instances = await services.cluster.cluster_view()
    except DatabaseUnavailable as exc:
        raise database_error(exc, services.settings.database.retry_after_s) from exc
    sessions = [s for member in instances for s in member.pop("sessions")]
    return web.json_response(
        {
            "scope": "cluster",
            "member": services.instance_id,
            "instances": instances,
            "sessions": sessions,
            "request_id": current_request_id(),
        }
    )


async def drain(request: web.Request) -> web.Response:
    await require_operator(request)
    services = request.app[SERVICES]
    body = await read_json_object(request)
    member = body.get("member")
    if not isinstance(member, str) or not 0 < len(member) <= 200:
        raise ApiError(400, "invalid_request", 'member must be a member id or "*".')
    try:
        await services.cluster.publish({"op": "drain", "member": member})
    except DatabaseUnavailable as exc:
        raise database_error(exc, services.settings.database.retry_after_s) from exc
    return web.json_response(
        {"member": member, "all": member == ALL_MEMBERS, "request_id": current_request_id()},
        status=202,
    )


def register(app: web.Application) -> None:
    app.router.add_post("/api/cluster/drain", drain)
