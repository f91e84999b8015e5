"""The names the docs promise, pinned to the code: every error code the relay raises is in
the OpenAPI document (docs/api.md: "Each operation's codes are listed in the OpenAPI
document") and every code there is raised; every ``section.key`` setting the docs name
exists.

The code side is read from the source (``ast``): the relay raises its errors with literal
codes, so a new one cannot be missed by a run that does not happen to reach it."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from relay.app import create_app
from relay.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "relay"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Measurement records, not promises.
DOCS = [d for d in DOCS if not d.name.startswith("benchmarks")]

# Raised, but by no operation of the document: a client that left before its answer (never
# sent), a CORS preflight refused (OPTIONS, no operation), and any route's unexpected error.
NOT_AN_OPERATIONS_ERROR = {
    (499, "client_closed_request"),
    (403, "cors_not_allowed"),
    (500, "internal_error"),
}


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(SOURCE.rglob("*.py")):
        # The simulator is OpenAI's side, with OpenAI's own errors (docs/upstream-fidelity.md).
        if "simulator" in path.parts:
            continue
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _constants(tree: ast.Module) -> dict[str, object]:
    """The module's ``NAME = <literal>`` assignments (``OVERLOADED = "overloaded"``)."""
    out: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                out[target.id] = _literal(node.value)
    return out


def _raised_errors() -> set[tuple[int, str]]:
    """(status, code) of every error the relay's source raises by name."""
    raised: set[tuple[int, str]] = set()
    for _, tree in _modules():
        constants = _constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            callee = ast.unparse(node.func).rsplit(".", 1)[-1]
            args = [
                constants.get(a.id) if isinstance(a, ast.Name) else _literal(a) for a in node.args
            ]
            if callee == "ApiError" and len(args) >= 2 and isinstance(args[1], str):
                if isinstance(args[0], int):
                    raised.add((args[0], args[1]))
            elif callee == "bad_request" and args and isinstance(args[0], str):
                raised.add((400, args[0]))
            elif callee == "DatabaseUnavailable" and args and isinstance(args[0], str):
                raised.add((503, args[0]))  # relay.web.middleware renders it as 503
            elif callee == "ResumeRefused" and args and isinstance(args[0], str):
                # relay.media.manager: resume_failed is 503 (retryable), the others 409.
                raised.add((503 if args[0] == "resume_failed" else 409, args[0]))
    return raised


def _openapi_document() -> dict[str, object]:
    async def fetch() -> dict[str, object]:
        app = create_app(Settings())
        request = make_mocked_request("GET", "/api/openapi.json", app=app)
        match = await app.router.resolve(request)
        response = await match.handler(request)
        assert isinstance(response, web.Response)
        body = response.body
        assert isinstance(body, bytes)
        document: dict[str, object] = json.loads(body)
        return document

    return asyncio.run(fetch())


def _declared_errors(document: dict[str, object]) -> set[tuple[int, str]]:
    declared: set[tuple[int, str]] = set()
    paths = document["paths"]
    assert isinstance(paths, dict)
    for operations in paths.values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                for code in re.findall(r"`([a-z_]+)`", response.get("description", "")):
                    declared.add((int(status), code))
    return declared


def test_every_error_the_relay_raises_is_in_the_openapi_document_and_back() -> None:
    raised = _raised_errors()
    assert len(raised) > 60  # the scan finds them (it read ApiError, ResumeRefused, ...)
    declared = _declared_errors(_openapi_document())
    undeclared = raised - declared - NOT_AN_OPERATIONS_ERROR
    assert not undeclared, f"raised, not in /api/openapi.json: {sorted(undeclared)}"
    never_raised = declared - raised
    assert not never_raised, f"in /api/openapi.json, raised nowhere: {sorted(never_raised)}"


# ----------------------------------------------------------------------------- settings
# Dotted names in the docs that look like ``section.key`` but name something else: event
# types, files, fields of /api/stats or GET /api/sessions/{id}, a function.
NOT_SETTINGS = {
    "events.dropped_backlog",
    "events.jsonl",
    "events.py",
    "ice.py",
    "media.state",
    "media.time_left_s",
    "recording.failed",
    "recording.ready",
    "session.created",
    "session.expires_at",
    "session.model",
    "session.update",
    "session.updated",
    "upstream.exchange_sdp",
    "upstream.model_currency",
    "upstream.simulated",
}


def test_every_setting_the_docs_name_exists() -> None:
    keys = {
        f"{section}.{key}"
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
    }
    sections = "|".join(Settings.model_fields)
    pattern = re.compile(rf"`((?:{sections})\.[a-z][a-z0-9_.]*)(?: = [^`]*)?`")
    unknown = []
    for doc in DOCS:
        for match in pattern.finditer(doc.read_text(encoding="utf-8")):
            name = match[1].split("..", 1)[0]  # ``ice.udp_port_min..udp_port_max``
            if name not in keys and name not in NOT_SETTINGS:
                unknown.append(f"{doc.name}: {name}")
    assert not unknown, unknown
    # RELAY__SECTION__KEY spellings name settings too.
    for doc in [*DOCS, ROOT / "config.toml"]:
        for env in re.findall(r"RELAY__([A-Z]+)__([A-Z0-9_]+)", doc.read_text(encoding="utf-8")):
            if env != ("SECTION", "KEY"):  # the pattern itself
                assert f"{env[0].lower()}.{env[1].lower()}" in keys, (doc.name, env)
