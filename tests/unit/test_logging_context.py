"""Every log line of a request carries its request id and, once known, the session id, in
the text format (stage lines unchanged) and in JSON; tasks started by the request too."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from relay.observability import request_context
from relay.observability.logging import (
    TEXT_FORMAT,
    JsonFormatter,
    RequestContextFilter,
    stage,
)
from relay.observability.masking import mask_email


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Two handlers on one logger, as configure_logging builds them: text and JSON."""
    text, js = io.StringIO(), io.StringIO()
    logger = logging.getLogger("relay.test_ctx")
    handlers = []
    for stream, formatter in ((text, logging.Formatter(TEXT_FORMAT)), (js, JsonFormatter())):
        handler = logging.StreamHandler(stream)
        handler.addFilter(RequestContextFilter())
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        handlers.append(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield text, js
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.propagate = True


async def test_request_and_session_ids_on_every_line(
    captured: tuple[io.StringIO, io.StringIO],
) -> None:
    text, js = captured
    log = logging.getLogger("relay.test_ctx")
    log.info("outside any request")
    token = request_context.begin("req_0123")
    try:
        stage(log, "DATABASE_QUERY_START", 150)
        log.info("before the session is known")
        request_context.bind_session("is_abcd")
        log.info("cache hit")
        # A task the request starts (e.g. the media bridge) logs with the same ids.
        await asyncio.create_task(_log_later(log))
    finally:
        request_context.end(token)
    log.info("after the request")

    lines = text.getvalue().splitlines()
    assert lines[0].endswith("outside any request")
    # The incident-style stage line is unchanged (its request id is in the message).
    assert lines[1].endswith("[req_0123] DATABASE_QUERY_START - 150ms")
    assert lines[2].endswith("before the session is known [request_id=req_0123]")
    assert lines[3].endswith("cache hit [request_id=req_0123 session_id=is_abcd]")
    assert lines[4].endswith("bridge line [request_id=req_0123 session_id=is_abcd]")
    assert lines[5].endswith("after the request")

    records = [json.loads(line) for line in js.getvalue().splitlines()]
    assert [(r["request_id"], r["session_id"]) for r in records] == [
        ("-", "-"),
        ("req_0123", "-"),
        ("req_0123", "-"),
        ("req_0123", "is_abcd"),
        ("req_0123", "is_abcd"),
        ("-", "-"),
    ]


async def _log_later(log: logging.Logger) -> None:
    await asyncio.sleep(0)
    log.info("bridge line")


async def test_a_session_task_logs_as_its_session_and_relabels_no_request(
    captured: tuple[io.StringIO, io.StringIO],
) -> None:
    text, _ = captured
    log = logging.getLogger("relay.test_ctx")
    # Started outside any request (a timer, a drain): the session only.
    await asyncio.create_task(_session_task(log, "is_gone", "teardown line"))
    # Started by a request about another session (one superseding it): the request's id
    # on its lines, its own session id, and the request's context left as it was.
    token = request_context.begin("req_0123")
    try:
        request_context.bind_session("is_new")
        await asyncio.create_task(_session_task(log, "is_old", "old teardown line"))
        log.info("new session line")
    finally:
        request_context.end(token)

    lines = text.getvalue().splitlines()
    assert lines[0].endswith("teardown line [session_id=is_gone]")
    assert lines[1].endswith("old teardown line [request_id=req_0123 session_id=is_old]")
    assert lines[2].endswith("new session line [request_id=req_0123 session_id=is_new]")


async def _session_task(log: logging.Logger, session_id: str, message: str) -> None:
    request_context.begin_session_task(session_id)
    await asyncio.sleep(0)
    log.info(message)


def test_mask_email_keeps_the_shape_not_the_address() -> None:
    assert mask_email("jane.doe@example.com") == "j***e@example.com"
    assert mask_email("ab@x.org") == "a***@x.org"
    assert mask_email("") == ""
    assert mask_email("no-at-sign") == "n***n"
