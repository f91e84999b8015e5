"""The model-currency table and its levels (pure)."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import openai
import pytest

from relay.upstream import model_currency
from relay.upstream.model_currency import check_models, status, worst_level

SDK_TYPES = Path(openai.__file__).parent / "types" / "realtime"


@pytest.mark.parametrize(
    ("today", "level", "days"),
    [
        (datetime.date(2026, 9, 1), "notice", 141),
        (datetime.date(2026, 11, 21), "warning", 60),
        (datetime.date(2027, 1, 19), "warning", 1),
        (datetime.date(2027, 1, 20), "error", 0),
        (datetime.date(2027, 6, 1), "error", -132),
    ],
)
def test_levels_follow_the_shutdown_date(today: datetime.date, level: str, days: int) -> None:
    currency = status("gpt-realtime", today=today)
    assert currency is not None
    assert (currency.level, currency.days_left) == (level, days)
    assert currency.replacement == "gpt-realtime-2.1"
    assert "gpt-realtime-2.1" in currency.message and "2027-01-20" in currency.message


def test_current_models_have_no_status() -> None:
    for model in ("gpt-realtime-2.1", "gpt-realtime-2", "gpt-realtime-whisper", "gpt-transcribe"):
        assert status(model) is None


def test_check_models_orders_by_urgency() -> None:
    found = check_models("gpt-realtime", "whisper-1", today=datetime.date(2026, 12, 1))
    assert [(c.setting, c.level) for c in found] == [
        ("upstream.model", "warning"),
        ("upstream.transcription_model", "notice"),
    ]
    assert worst_level(found) == "warning"
    assert check_models("gpt-realtime-2.1", "") == [] and worst_level([]) is None


def _sdk_deprecated(path: Path) -> dict[str, str]:
    """The SDK docstring's "Deprecated values" list: model -> announced shutdown date."""
    text = path.read_text()
    block = text.split("Deprecated values:", 1)[1].split('"""', 1)[0]
    found: dict[str, str] = {}
    for entry in re.split(r"\n\s*- ", block):
        date = re.search(r"Announced shutdown date:\s*(\d{4}-\d{2}-\d{2})", entry)
        if date:
            for model in re.findall(r'"([^"]+)"', entry):
                found[model] = date.group(1)
    return found


def test_the_table_matches_the_installed_sdk() -> None:
    """The table is what the pinned SDK announces; a newer SDK that announces more fails
    here, which is the cue to update the table (and READ_ON, SOURCE)."""
    sdk = {
        **_sdk_deprecated(SDK_TYPES / "realtime_session_create_request.py"),
        **_sdk_deprecated(SDK_TYPES / "audio_transcription.py"),
    }
    ours = {model: d.shutdown.isoformat() for model, d in model_currency.TABLE.items()}
    assert ours == sdk
    assert openai.__version__ in model_currency.SOURCE
