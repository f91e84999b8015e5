"""Fixtures of the container tests: the stand-in images and the relay's own image, built
once per run against the private daemon (tests/container/docker.py says which)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.container import docker, images
from tests.container.docker import say

ROOT = Path(__file__).resolve().parents[2]
RELAY_IMAGE = "interview-relay:local"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    build_seconds: float


@pytest.fixture(scope="session")
def base_image() -> str:
    docker.run("version")  # fails here, with the reason, when the daemon is missing
    return images.ensure_base()


@pytest.fixture(scope="session")
def relay_image(base_image: str) -> BuiltImage:
    """The Dockerfile built as it is, on a local stand-in for the Python image it names."""
    images.build_standin(images.dockerfile_python_image(), base_image)
    started = time.monotonic()
    docker.run("build", "--network", "host", "-t", RELAY_IMAGE, str(ROOT), timeout=1200)
    built = BuiltImage(RELAY_IMAGE, time.monotonic() - started)
    say(f"built {RELAY_IMAGE} from the Dockerfile in {built.build_seconds:.0f}s")
    return built


def compose_images() -> list[str]:
    """Every image compose.yaml names that it does not build itself."""
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    named = {s["image"] for s in services.values() if "image" in s and "build" not in s}
    return sorted(named - {RELAY_IMAGE})


@pytest.fixture(scope="session")
def standin_images(base_image: str) -> list[str]:
    """compose.yaml's images, each replaced by a local build under the very same tag."""
    built = []
    for image in compose_images():
        images.build_standin(image, base_image)
        built.append(image)
    return built
