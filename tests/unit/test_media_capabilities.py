"""The start-up check of the private aiortc/aioice names (relay.media.capabilities).

Each declared name is made to disappear in turn, as a release that renamed it would: a
module or class attribute is deleted, an instance attribute is deleted by the owner's
constructor. The check must then report exactly the features that use the name (and the
features built on them) as unavailable, naming what is missing. The same tests run
against the newest aiortc and aioice with tests/latest_deps.sh.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from relay.media import capabilities
from relay.media.capabilities import FEATURES, PrivateName, probe


def _declared() -> list[PrivateName]:
    seen: dict[str, PrivateName] = {}
    for feature in FEATURES:
        for name in feature.names:
            seen.setdefault(str(name), name)
    return list(seen.values())


def _using(name: PrivateName) -> set[str]:
    """The features that list ``name``, and those that require one of them."""
    direct = {f.name for f in FEATURES if any(str(n) == str(name) for n in f.names)}
    return direct | {f.name for f in FEATURES if direct & set(f.requires)}


# Names the library itself needs to make the throwaway objects (aioice's Connection makes
# an asyncio.Queue, aiortc's RTCRtpReceiver a threading.Event): without them every
# feature on those objects is down too.
_NEEDED_BY_THE_LIBRARY = {"aioice.ice.asyncio", "aiortc.rtcrtpreceiver.threading"}


class _Without:
    """``target`` minus one attribute (for objects whose attributes cannot be deleted,
    such as a cffi library)."""

    def __init__(self, target: Any, hidden: str) -> None:
        self._target = target
        self._hidden = hidden

    def __getattr__(self, attr: str) -> Any:
        if attr == self._hidden:
            raise AttributeError(attr)
        return getattr(self._target, attr)


def _hide(monkeypatch: pytest.MonkeyPatch, name: PrivateName) -> None:
    owner = capabilities._resolve(name.owner)
    if name.where != "instance":
        if isinstance(owner, type) and name.attr not in vars(owner):
            pytest.fail(f"{name} is not defined by {name.owner} itself")
        try:
            monkeypatch.delattr(owner, name.attr)
        except AttributeError:  # not deletable: the owner's parent gets a stand-in
            parent, _, attr = name.owner.rpartition(".")
            monkeypatch.setattr(capabilities._resolve(parent), attr, _Without(owner, name.attr))
        return
    original: Callable[..., None] = owner.__init__

    def init_without(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        delattr(self, name.attr)

    monkeypatch.setattr(owner, "__init__", init_without)


async def test_with_the_pinned_versions_every_feature_is_available() -> None:
    threads = threading.active_count()
    tasks = len(asyncio.all_tasks())
    found = probe()
    assert found.unavailable() == []
    assert [s.feature.name for s in found.features] == list(capabilities.FEATURE_NAMES)
    body = found.to_json()
    assert body["fallbacks"] == []
    assert body["aiortc"] == {"version": found.aiortc_version, "pinned": "1.16.0"}
    assert body["aioice"] == {"version": found.aioice_version, "pinned": "0.13.0"}
    assert all(f == {"feature": f["feature"], "available": True} for f in body["features"])
    # The throwaway objects start nothing.
    assert threading.active_count() == threads and len(asyncio.all_tasks()) == tasks


@pytest.mark.parametrize("name", _declared(), ids=str)
async def test_a_missing_name_disables_exactly_the_features_that_use_it(
    monkeypatch: pytest.MonkeyPatch, name: PrivateName
) -> None:
    _hide(monkeypatch, name)
    found = probe()
    down = {s.feature.name for s in found.unavailable()}
    if str(name) in _NEEDED_BY_THE_LIBRARY:
        assert down >= _using(name)
    else:
        assert down == _using(name)
    for state in found.unavailable():
        if state.feature.name not in _using(name):
            continue  # the library's own objects could not be made (_NEEDED_BY_THE_LIBRARY)
        if any(str(n) == str(name) for n in state.feature.names):
            assert str(name) in state.missing
        else:  # down because a feature it builds on is
            assert any(m.startswith("needs ") for m in state.missing)
        body = state.to_json()
        assert body["available"] is False and body["fallback"] == state.feature.fallback
    assert set(found.to_json()["fallbacks"]) == down


async def test_a_changed_constructor_counts_its_instance_names_as_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pylibsrtp

    def refuses(self: Any, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a new required argument")

    monkeypatch.setattr(pylibsrtp.Session, "__init__", refuses)
    found = probe()
    assert [s.feature.name for s in found.unavailable()] == ["fast_path", "compiled_loop"]
    assert found.state("fast_path").missing == ("pylibsrtp.Session._srtp",)
    assert found.state("compiled_loop").missing == ("needs fast_path",)


def test_the_relay_imports_and_checks_when_names_read_at_import_are_gone() -> None:
    """The names aiortc_private used to read when imported: without them the import
    failed, and with it every relay start."""
    script = """
import asyncio, json
import aioice.ice, aiortc.rtcrtpreceiver, aiortc.rtp, pylibsrtp
del aioice.ice.get_host_addresses
del aioice.ice.Connection._check_periodic
del aiortc.rtp.compute_audio_level_dbov
del aiortc.rtcrtpreceiver.StreamStatistics
del pylibsrtp._binding
from relay.media import capabilities, peers  # noqa: F401
async def main():
    print(json.dumps(capabilities.probe().to_json()["fallbacks"]))
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {
        "host_addresses",
        "prompt_ice_completion",
        "audio_level",
        "receiver_reports",
        "fast_path",
        "compiled_loop",
    }
