"""The request id a resume is forwarded with, from member to member."""

from __future__ import annotations

from relay.cluster.resume import first_id
from relay.web.middleware import request_id_for


def test_a_forwarded_resume_passes_on_the_id_it_came_with() -> None:
    reached = request_id_for(None)  # the member the client reached
    hop = request_id_for(reached)  # a worker it was forwarded to
    assert first_id(hop) == reached
    # However many workers it goes through.
    assert first_id(request_id_for(first_id(hop))) == reached
    # A client's own id is part of the one it was given.
    given = request_id_for("client-42")
    assert first_id(request_id_for(given)) == given


def test_a_member_that_dropped_the_incoming_id_passes_on_its_own() -> None:
    alone = request_id_for("x" * 65)  # too long: not taken
    assert first_id(alone) == alone


def test_a_clients_longest_id_survives_every_hop() -> None:
    client = "c" * 64  # the longest a member takes from a client
    given = request_id_for(client)
    assert len(given) == 101
    # Forwarded (the members' header): the forwarding member's id with the client's.
    hop = request_id_for(given, forwarded=True)
    assert first_id(hop) == given
    assert first_id(request_id_for(first_id(hop), forwarded=True)) == given
    # From a client, an id that long is not taken.
    assert "." not in request_id_for(given)
