"""The names the docs promise, pinned to the code: every error code the relay raises is in
the OpenAPI document (docs/api.md: "Each operation's codes are listed in the OpenAPI
document") and every code there is raised; every Prometheus metric is documented with
its labels (docs/operations.md, "Metrics"; the media counters in docs/media.md); every
``section.key`` setting the docs name exists.

The code side is read from the source (``ast``): the relay raises its errors and makes
its metrics with literal names, so a new one cannot be missed by a run that does not
happen to reach it."""

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
from relay.media.bridge import RETRYABLE_RESUME_REFUSALS

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "relay"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Measurement records, not promises.
DOCS = [d for d in DOCS if not d.name.startswith("benchmarks")]

# Raised, but by no operation of the document: a client that left before its answer (never
# sent), a CORS preflight refused (OPTIONS, no operation), any route's unexpected error, and
# the liveness probe's answer once start-up gave up (/healthz, documented in
# docs/operations.md, is for orchestrators, not in the API's document).
NOT_AN_OPERATIONS_ERROR = {
    (499, "client_closed_request"),
    (403, "cors_not_allowed"),
    (500, "internal_error"),
    (503, "startup_failed"),
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
                # relay.media.manager: the retryable ones are 503, the others 409.
                retryable = args[0] in RETRYABLE_RESUME_REFUSALS
                raised.add((503 if retryable else 409, args[0]))
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


# ------------------------------------------------------------------------------ metrics
_METRIC_CALLS = ("counter", "gauge", "histogram")


def _labels(node: ast.expr | None, tree: ast.Module) -> tuple[str, ...] | None:
    if node is None:
        return ()
    value = _literal(node)
    if isinstance(node, ast.Name):  # e.g. ``labels = ["direction"]`` in the same module
        for assign in ast.walk(tree):
            if (
                isinstance(assign, ast.Assign)
                and [ast.unparse(t) for t in assign.targets] == [node.id]
                and isinstance(assign.value, ast.List | ast.Tuple)
            ):
                value = _literal(assign.value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _metrics_in_code() -> dict[str, tuple[str, ...] | None]:
    """Every relay_* metric the source makes, with its label names (None: not literal)."""
    found: dict[str, tuple[str, ...] | None] = {}
    for _, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _METRIC_CALLS
                and node.args
            ):
                name = _literal(node.args[0])
                if not (isinstance(name, str) and name.startswith("relay_")):
                    continue
                labels = node.args[2] if len(node.args) > 2 else None
                for keyword in node.keywords:
                    if keyword.arg == "labelnames":
                        labels = keyword.value
                found[name] = _labels(labels, tree)
    # relay.media.metrics publishes DirectionStats fields under these names.
    media = ast.parse((SOURCE / "media" / "metrics.py").read_text(encoding="utf-8"))
    for node in ast.walk(media):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "_COUNTED":
            counted = _literal(node.value)
            assert isinstance(counted, dict)
            for name in counted.values():
                found[name] = ("direction",)
    found["relay_build_info"] = ("version", "python", "dialect")
    return found


def _documented_metrics() -> dict[str, set[tuple[str, ...]]]:
    """Every ``relay_name`` or ``relay_name{a,b}`` in backquotes in the docs, with the label
    sets each mention gives (an empty tuple: named without labels)."""
    mentions: dict[str, set[tuple[str, ...]]] = {}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"`(relay_[a-z0-9_]+)(\{([a-z_,]*)[^}]*\})?`", text):
            labels = tuple(sorted(filter(None, (match[3] or "").split(","))))
            mentions.setdefault(match[1], set()).add(labels)
    return mentions


def test_every_metric_is_documented_with_its_labels() -> None:
    code = _metrics_in_code()
    assert len(code) > 60
    documented = _documented_metrics()
    undocumented = sorted(set(code) - set(documented))
    assert not undocumented, f"metrics no doc names: {undocumented}"
    for name, label_sets in documented.items():
        if name not in code:
            continue  # not a metric: an end reason, a channel, a table (relay_lost, ...)
        labels = code[name]
        assert labels is not None, f"{name}: labels not literal in the source"
        for given in label_sets:
            # A doc may name a metric without its labels, or with a label it filters on
            # (``{reason="overloaded"}``); every label it names must be one of the metric's.
            assert set(given) <= set(labels), f"{name}{{{','.join(given)}}}: labels {labels}"


def test_the_metrics_table_names_only_metrics_the_relay_makes() -> None:
    code = _metrics_in_code()
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `relay_")]
    assert len(rows) > 30
    named = {m for row in rows for m in re.findall(r"`(relay_[a-z0-9_]+)", row.split("|")[1])}
    assert named - set(code) == set(), sorted(named - set(code))


def test_every_owner_of_background_tasks_is_listed_with_their_failures_metric() -> None:
    owners = set()
    for _, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) == "TaskGroup"
                and any(k.arg == "metrics" for k in node.keywords)
            ):
                owner = _literal(node.args[0])
                assert isinstance(owner, str)
                owners.add(owner)
    assert len(owners) > 10
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    (row,) = [r for r in text.splitlines() if r.startswith("| `relay_background_task_failures")]
    listed = set(re.findall(r"`([a-z-]+)`", row))
    assert owners <= listed, sorted(owners - listed)


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
