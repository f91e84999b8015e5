"""Operator endpoints over the whole cluster.

- ``GET /api/stats?scope=cluster``: ``{"instances": [...], "sessions": [...]}`` from
  every live member's heartbeat (this member's entry is refreshed first);
- ``POST /api/cluster/drain`` ``{"member": "<id>" | "*"}``: that member (or all) stops
  admitting sessions; live ones go on. 202: the command is on its way (within 2 s).
"""

from __future__ import annotations

from aiohttp import web

from relay.cluster.runtime import ALL_MEMBERS
from relay.errors import ApiError
from relay.observability.request_context import current_request_id
from relay.services import SERVICES
from relay.web import idempotency
from relay.web.api import Api, Operation, Response
from relay.web.body import parse_json_object, read_body
from relay.web.caller import require_operator
from relay.web.schemas import DrainAccepted, DrainRequest

OPERATOR_ERRORS: dict[int, tuple[str, ...]] = {
    401: ("missing_token", "invalid_token"),
    429: ("too_many_failed_authentications",),
    503: ("database_unavailable", "database_timeout"),
}


async def cluster_stats(request: web.Request) -> web.Response:
    await require_operator(request)
    services = request.app[SERVICES]
    instances = await services.cluster.cluster_view()
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
    raw = await read_body(request)
    body = parse_json_object(raw)
    member = body.get("member")
    if not isinstance(member, str) or not 0 < len(member) <= 200:
        raise ApiError(400, "invalid_request", 'member must be a member id or "*".')
    if member != ALL_MEMBERS:
        # A command to nobody is no drain: a mistyped id must not pass for one right
        # before a machine is taken out.
        live = {m["id"] for m in await services.cluster.cluster_view()}
        if member not in live:
            raise ApiError(
                404,
                "member_not_found",
                f"No live member {member!r}; GET /api/stats?scope=cluster lists them.",
            )

    async def publish() -> tuple[int, dict[str, object], dict[str, str]]:
        await services.cluster.publish({"op": "drain", "member": member})
        body = {"member": member, "all": member == ALL_MEMBERS, "request_id": current_request_id()}
        return 202, body, {}

    return await idempotency.run(request, "operator", raw, publish)


def register(api: Api) -> None:
    api.add(
        Operation(
            "POST",
            "/api/cluster/drain",
            "drainMember",
            "Stop admitting sessions on a member (or every member); live ones go on",
            auth="operator",
            tag="operator",
            raw=drain,
            body=DrainRequest,
            idempotent=True,
            responses=(Response(202, "The command is on its way (within 2 s).", DrainAccepted),),
            errors={
                **OPERATOR_ERRORS,
                400: ("invalid_json", "invalid_request", "invalid_idempotency_key"),
                404: ("member_not_found",),
                409: ("idempotency_key_in_use",),
                413: ("body_too_large",),
                422: ("idempotency_key_reused",),
            },
        )
    )
