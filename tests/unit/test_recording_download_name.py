"""The file name a recording's audio and transcript download under (Content-Disposition)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from relay.web.routes_recordings import download_name

AT = datetime(2026, 7, 1, 9, 30, 12, tzinfo=UTC)


def test_the_name_says_whose_interview_and_when_in_utc() -> None:
    assert (
        download_name("ana@example.com", AT, "ogg")
        == "interview-ana-example.com-2026-07-01-093012.ogg"
    )
    madrid = AT.astimezone(timezone(timedelta(hours=2)))
    assert download_name("Ana@Example.com", madrid, "jsonl") == (
        "interview-ana-example.com-2026-07-01-093012.jsonl"
    )


def test_anything_a_file_system_or_a_header_would_mind_becomes_a_dash() -> None:
    name = download_name('a"b\\c/d;e\r\nf ü@x.org', AT, "ogg")
    assert name == "interview-a-b-c-d-e-f-x.org-2026-07-01-093012.ogg"
    assert name.isascii() and '"' not in name and "/" not in name
    # Nothing left of it, or nothing given: still a name.
    assert download_name("@@@", AT, "ogg") == "interview-candidate-2026-07-01-093012.ogg"
    assert download_name(None, AT, "wav") == "interview-candidate-2026-07-01-093012.wav"


def test_a_long_address_is_cut_without_a_dangling_separator() -> None:
    name = download_name("x" * 63 + ".y" + "z" * 300 + "@example.com", AT, "ogg")
    assert name == "interview-" + "x" * 63 + "-2026-07-01-093012.ogg"


def test_parts_of_a_session_taken_over_keep_apart() -> None:
    assert download_name("ana@example.com", AT, "ogg", part=1).endswith("-093012.ogg")
    assert download_name("ana@example.com", AT, "ogg", part=2) == (
        "interview-ana-example.com-2026-07-01-093012-part2.ogg"
    )
