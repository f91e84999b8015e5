"""deploy/prometheus/alerts.yml against the relay and its docs: every rule is complete,
with a documented severity; every ``relay_*`` metric an expression uses is one the relay
makes (read from the source, as tests/unit/test_documented_names.py does), with the labels
the expression filters or groups on; every alert is in docs/operations.md ("Alerts") and
every alert listed there is in the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_documented_names import _metrics_in_code

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
SEVERITIES = {"page", "ticket"}  # docs/operations.md, "Alerts"
# Labels Prometheus or the relay's multiprocess mode add to every series.
TARGET_LABELS = {"instance", "job", "worker"}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
# What the process collector exports (not in the relay's source).
PROCESS_METRICS = {"process_resident_memory_bytes", "process_cpu_seconds_total", "up"}

_SELECTOR = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert len(rules) > 20
    return rules


def _metric(name: str, known: dict[str, tuple[str, ...] | None]) -> str:
    """The metric a series name belongs to (a histogram's ``_bucket`` is its histogram)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in known:
            return name.removesuffix(suffix)
    return name


def _documented_alerts() -> list[str]:
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- \*\*`(Relay[A-Za-z]+)`\*\*", section, flags=re.MULTILINE)


def test_every_rule_is_complete_with_a_documented_severity() -> None:
    names = []
    for rule in _rules():
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
        name = rule["alert"]
        names.append(name)
        assert re.fullmatch(r"Relay[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook"}, name
        assert all(isinstance(v, str) and v.strip() for v in notes.values()), name
        assert notes["runbook"] == f"docs/operations.md#alerts ({name})", name
    assert len(names) == len(set(names)), "an alert name is used twice"


def test_every_metric_and_label_the_rules_use_is_one_the_relay_makes() -> None:
    known = _metrics_in_code()
    for rule in _rules():
        expr: str = rule["expr"]
        used = {
            _metric(m, known)
            for m in re.findall(r"\b((?:relay|process)_[a-z0-9_]+|up)\b(?!\s*\()", expr)
        }
        assert used, rule["alert"]
        labels_of_used: set[str] = set(TARGET_LABELS)
        for metric in used:
            if metric in PROCESS_METRICS:
                continue
            assert metric in known, f"{rule['alert']}: {metric} is not a metric of the relay"
            labels = known[metric]
            assert labels is not None, metric
            labels_of_used |= set(labels)
        # Every label a selector filters on is one of that metric's own.
        for name, matchers in _SELECTOR.findall(expr):
            metric = _metric(name, known)
            allowed = set(TARGET_LABELS)
            if metric not in PROCESS_METRICS:
                allowed |= set(known[metric] or ())
            if name.endswith("_bucket"):
                allowed.add("le")
            for label in _MATCHER.findall(matchers):
                assert label in allowed, f"{rule['alert']}: {name} has no label {label}"
        # Every label an aggregation or a match groups on is one the series have.
        for grouping in _GROUPING.findall(expr):
            for label in filter(None, (g.strip() for g in grouping.split(","))):
                assert label in labels_of_used | {"le"}, f"{rule['alert']}: by {label}"
        # Templates name only labels the alert's series keep.
        for note in rule["annotations"].values():
            for label in re.findall(r"\$labels\.([a-z_]+)", note):
                assert label in labels_of_used, f"{rule['alert']}: $labels.{label}"


def test_every_alert_is_documented_and_every_documented_alert_exists() -> None:
    in_rules = [rule["alert"] for rule in _rules()]
    documented = _documented_alerts()
    assert len(documented) == len(set(documented)), "an alert is listed twice"
    assert sorted(documented) == sorted(in_rules)
    # Each entry says its severity as the rule does.
    text = OPERATIONS.read_text(encoding="utf-8")
    for rule in _rules():
        entry = f"- **`{rule['alert']}`** ({rule['labels']['severity']};"
        assert entry in text, entry
