"""What a finalised recording keeps: the rendered files checked against the manifest, and
the sources removed (real files in a temporary directory)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from relay.recording.sources import SOURCES, has_sources, mismatches, remove_sources


def rendered(directory: Path) -> dict[str, object]:
    files = []
    for name, data in (("recording.ogg", b"OggS audio"), ("transcript.jsonl", b"{}\n")):
        (directory / name).write_bytes(data)
        files.append({"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    for name in SOURCES:
        (directory / name).write_bytes(b"source")
    return {"files": files}


def test_files_that_match_their_manifest_pass_and_any_difference_is_named(tmp_path: Path) -> None:
    manifest = rendered(tmp_path)
    assert mismatches(tmp_path, manifest) == []
    (tmp_path / "transcript.jsonl").write_bytes(b"[]\n")  # same size, other content
    assert mismatches(tmp_path, manifest) == ["transcript.jsonl: SHA-256 differs from the manifest"]
    (tmp_path / "recording.ogg").write_bytes(b"short")
    (tmp_path / "transcript.jsonl").unlink()
    assert mismatches(tmp_path, manifest) == [
        "recording.ogg: 5 bytes, manifest 10",
        "transcript.jsonl: missing",
    ]
    assert mismatches(tmp_path, {"files": []}) == ["the manifest lists no files"]
    assert mismatches(tmp_path, {"files": [{"name": "../etc/passwd"}]}) == [
        "'../etc/passwd': not a file name"
    ]


def test_removing_the_sources_leaves_the_rendered_files(tmp_path: Path) -> None:
    rendered(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    assert has_sources(tmp_path)
    assert sorted(remove_sources(tmp_path)) == sorted(SOURCES)
    assert not has_sources(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "recording.ogg",
        "transcript.jsonl",
        "manifest.json",
    }
    assert remove_sources(tmp_path) == []
