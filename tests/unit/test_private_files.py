"""Directories 0700 and files 0600 whatever the umask, on real files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.private_files import create_private, open_private, private_dir, write_private


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _permissive_umask() -> Iterator[None]:
    """The loosest common umask: nothing here may rely on it."""
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_directory_is_0700_and_an_existing_one_is_narrowed(tmp_path: Path) -> None:
    assert _mode(private_dir(tmp_path / "new")) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o775)
    (old / "inner").mkdir()
    old.chmod(0o775)
    assert _mode(private_dir(old)) == 0o700


def test_files_are_0600_new_or_existing(tmp_path: Path) -> None:
    with open_private(tmp_path / "a.log", "ab") as f:
        f.write(b"x")
    existing = tmp_path / "b.log"
    existing.write_text("old")
    existing.chmod(0o664)
    with open_private(existing, "ab") as f:
        f.write(b"y")
    assert existing.read_text() == "oldy"
    write_private(tmp_path / "c.json", "{}")
    create_private(tmp_path / "d.ogg")
    modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    assert modes == {"a.log": 0o600, "b.log": 0o600, "c.json": 0o600, "d.ogg": 0o600}


def test_the_enter_bit_is_put_back_if_anothers_directory_appeared_during_the_narrowing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's directory created (and its owner's check of the bit done) between
    private_dir's look and its chmod: private_dir looks again after narrowing."""
    import relay.private_files as private_files

    shared = tmp_path / "state"
    shared.mkdir()
    shared.chmod(0o701)
    looks = iter([False, True])  # not there at the first look; there after the chmod
    monkeypatch.setattr(private_files, "_holds_others_directory", lambda *_: next(looks))
    private_dir(shared)
    assert _mode(shared) == 0o701
