"""The media range against the kernel's ephemeral ports (relay.media.ephemeral_ports),
read from a /proc/sys/net/ipv4 look-alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.media.ephemeral_ports import ephemeral_overlap


def proc(tmp_path: Path, ephemeral: str, reserved: str | None = "\n") -> Path:
    (tmp_path / "ip_local_port_range").write_text(ephemeral)
    if reserved is not None:
        (tmp_path / "ip_local_reserved_ports").write_text(reserved)
    return tmp_path


def test_a_range_inside_the_ephemeral_ports_is_named_with_the_fix(tmp_path: Path) -> None:
    message = ephemeral_overlap(40000, 40599, proc(tmp_path, "32768\t60999\n"))
    assert message is not None
    assert "40000-40599" in message and "32768-60999" in message
    assert "600 of its ports" in message and "below 32768" in message
    assert "ip_local_reserved_ports=40000-40599" in message


def test_a_partial_overlap_counts_only_the_shared_ports(tmp_path: Path) -> None:
    message = ephemeral_overlap(32000, 32999, proc(tmp_path, "32768 60999"))
    assert message is not None and "232 of its ports" in message


@pytest.mark.parametrize(("low", "high"), [(20000, 20599), (61000, 61999), (0, 0)])
def test_no_warning_outside_the_ephemeral_ports_or_without_a_range(
    tmp_path: Path, low: int, high: int
) -> None:
    assert ephemeral_overlap(low, high, proc(tmp_path, "32768 60999")) is None


def test_reserved_ports_are_not_handed_out_so_they_do_not_count(tmp_path: Path) -> None:
    reserved = proc(tmp_path, "32768 60999", "40000-40299,40300-40598\n")
    message = ephemeral_overlap(40000, 40599, reserved)
    assert message is not None and " 1 of its ports" in message
    proc(tmp_path, "32768 60999", "39000-41000\n")
    assert ephemeral_overlap(40000, 40599, tmp_path) is None


def test_nothing_to_read_is_no_warning(tmp_path: Path) -> None:
    assert ephemeral_overlap(40000, 40599, tmp_path / "missing") is None
    assert ephemeral_overlap(40000, 40599, proc(tmp_path, "garbage")) is None
    # No reservation file: the whole overlap counts.
    other = tmp_path / "other"
    other.mkdir()
    assert ephemeral_overlap(40000, 40009, proc(other, "32768 60999", None)) is not None
