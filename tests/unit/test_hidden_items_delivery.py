"""The page never learns the id of an item it was not shown (the relay's wrap-up system
message, a take-over's note, a tool call), through real aiortc peers: the upstream's next
item names the last item the page saw as its previous one, and the page's retrieve of the
hidden id is answered by the relay as OpenAI answers an unknown item, never forwarded."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.media_helpers import wait_until
from tests.unit.test_media_bridge import Rig, rig  # noqa: F401  (the fixture)


def _added(item_id: str, role: str, previous: str | None) -> str:
    item = {"id": item_id, "type": "message", "role": role, "content": []}
    return json.dumps(
        {"type": "conversation.item.added", "previous_item_id": previous, "item": item}
    )


def _retrieves(events: list[dict[str, Any]]) -> list[str]:
    return [e["item_id"] for e in events if e["type"] == "conversation.item.retrieve"]


async def test_the_page_never_learns_a_hidden_items_id(rig: Rig) -> None:  # noqa: F811
    bridge = rig.bridge()
    browser = rig.browser()
    await rig.connect(bridge, browser)
    await browser.wait_type("session.created")
    call = rig.upstream.calls[0]
    # The upstream's items as OpenAI announces them: the candidate's turn, the relay's
    # wrap-up system message (hidden), the interviewer's reply after it.
    call.channel.send(_added("msg_user", "user", None))
    call.channel.send(_added("sys_wrap", "system", "msg_user"))
    call.channel.send(_added("msg_reply", "assistant", "sys_wrap"))
    reply = await browser.wait_event(lambda e: e.get("item", {}).get("id") == "msg_reply")
    assert reply["previous_item_id"] == "msg_user"
    assert "sys_wrap" not in json.dumps(browser.events)

    # A page that names the hidden id anyway gets OpenAI's answer for an unknown item, with
    # its own event id; the retrieve sent after it (ordered on the channel) shows it was
    # never forwarded.
    browser.send_event(
        {"type": "conversation.item.retrieve", "event_id": "e1", "item_id": "sys_wrap"}
    )
    browser.send_event(
        {"type": "conversation.item.retrieve", "event_id": "e2", "item_id": "msg_reply"}
    )
    error = await browser.wait_type("error")
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "item_not_found",
        "message": "Item with item_id not found: sys_wrap",
        "param": "item_id",
        "event_id": "e1",
    }
    await wait_until(lambda: bool(_retrieves(call.events)), 5, "the visible item's retrieve")
    assert _retrieves(call.events) == ["msg_reply"]
    assert bridge.events.counts["hidden_item_requests_answered"] == 1
