"""What a finalised recording keeps: the rendered files, once they are checked.

The packet logs (``*.rlog``: every packet received, still encoded), the event log
(``events.jsonl``) and ``meta.json`` are what the audio, the transcript and the manifest
were rendered from; kept, they would take more disk than the recording itself. Once
finalisation has written
the manifest, every rendered file is read back and compared with it (size and SHA-256):
only then are the sources removed. A recording whose files do not match keeps its sources,
so it can be rendered again.

Blocking (file reads, hashing, unlinks): run these off the event loop.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from relay.recording.recorder import EVENTS, LEGS, META, leg_file

SOURCES = (*(leg_file(leg) for leg in LEGS), EVENTS, META)
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def mismatches(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """How the rendered files in ``directory`` differ from ``manifest`` (empty: they match)."""
    problems = []
    files = manifest.get("files") or []
    if not files:
        problems.append("the manifest lists no files")
    for entry in files:
        name = str(entry.get("name", ""))
        path = directory / name
        if not name or Path(name).name != name:
            problems.append(f"{name!r}: not a file name")
        elif not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.get("bytes"):
            problems.append(f"{name}: {path.stat().st_size} bytes, manifest {entry.get('bytes')}")
        elif _sha256(path) != entry.get("sha256"):
            problems.append(f"{name}: SHA-256 differs from the manifest")
    return problems


def remove_sources(directory: Path) -> list[str]:
    """Remove what the rendered files were made from; the names removed."""
    removed = []
    for name in SOURCES:
        path = directory / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def has_sources(directory: Path) -> bool:
    return any((directory / name).exists() for name in SOURCES)
