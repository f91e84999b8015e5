"""Static checks of Dockerfile, .dockerignore and compose.yaml (hadolint-style rules written
as tests, plus what the relay needs from them), and ``docker compose config`` when the
compose plugin is installed; without it, the same interpolation compose does is checked
here (every variable resolved, a missing required one refused by name)."""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import ConfigError, Settings, load_settings
from relay.media.manager import check_port_range_size, ports_per_exchange
from relay.upstream.simulation import uses_simulator

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
# Linux's default net.ipv4.ip_local_port_range starts here: media ranges stay below it.
EPHEMERAL_START = 32768

# What an operator sets (compose.yaml's header): test values only.
COMPOSE_ENV = {
    "POSTGRES_PASSWORD": "pg-test-password",
    "RELAY_OPERATOR_TOKEN": "op-test-token-0123456789abcdefghij",
    "TURN_SECRET": "turn-test-secret",
    "S3_ACCESS_KEY": "s3-access",
    "S3_SECRET_KEY": "s3-secret",
    "RELAY_STATE_KEY": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "PUBLIC_IP": "203.0.113.10",
}


# ---------------------------------------------------------------------- Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for item in instructions(text):
        if item[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(item)
    return result


def global_args(text: str) -> dict[str, str]:
    args = {}
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
    return args


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", rest):
                env[name] = value
    return env


def pinned(image: str) -> bool:
    """A tag with a version number (not latest), or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and bool(re.search(r"\d", tag))


def test_dockerfile_is_multi_stage_from_pinned_images() -> None:
    text = DOCKERFILE.read_text()
    args = global_args(text)
    froms = [rest for keyword, rest in instructions(text) if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for line in froms:
        image = line.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert pinned(image), image
        assert "slim" in image or "alpine" in image or "distroless" in image, image
    final = stages(text)[-1]
    assert any(k == "COPY" and "--from=" in rest for k, rest in final), "runtime copies"
    # The compiler stays in the build stage, which builds the compiled fast path in place
    # (and fails if it did not build); the runtime takes relay/ from there.
    assert not any("build-essential" in rest for k, rest in final if k == "RUN")
    build = stages(text)[0]
    assert any(
        "build_ext --inplace" in rest and "relay.media._fastloop" in rest for k, rest in build
    )
    assert ("COPY", "--from=build /src/relay ./relay") in final


def test_dockerfile_runtime_runs_as_a_non_root_user_with_a_healthcheck() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    users = [rest for k, rest in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    keywords = [k for k, _ in final]
    assert keywords.index("USER") < keywords.index("CMD")
    (health,) = [rest for k, rest in final if k == "HEALTHCHECK"]
    assert "/healthz" in health and "--interval=" in health and "--timeout=" in health
    cmd = [rest for k, rest in final if k == "CMD"][-1]
    assert isinstance(json.loads(cmd), list), "CMD in exec form (signals reach the relay)"
    assert [rest for k, rest in final if k == "STOPSIGNAL"] == ["SIGTERM"]


def test_dockerfile_has_no_remote_add_and_cleans_apt_lists() -> None:
    # A syntax directive makes BuildKit fetch a frontend image from a registry.
    assert not re.search(r"^#\s*syntax=", DOCKERFILE.read_text(), re.M | re.I)
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "ADD":
            assert not re.search(r"https?://", rest), f"ADD of a URL: {rest}"
        if keyword == "RUN" and "apt-get install" in rest:
            assert "apt-get update" in rest, "update and install in one layer"
            assert "--no-install-recommends" in rest
            assert "rm -rf /var/lib/apt/lists/*" in rest, "apt lists cleaned in the same RUN"
            assert " -y " in rest or "--yes" in rest
        if keyword == "RUN" and "pip install" in rest:
            env = env_of([(k, r) for k, r in instructions(DOCKERFILE.read_text())])
            assert "--no-cache-dir" in rest or env.get("PIP_NO_CACHE_DIR") == "1"


def dockerfile_env() -> dict[str, str]:
    """The RELAY settings the image's runtime stage sets."""
    final = stages(DOCKERFILE.read_text())[-1]
    return {k: v for k, v in env_of(final).items() if k.startswith("RELAY")}


def test_dockerfile_environment_is_valid_configuration_and_exposes_the_udp_range() -> None:
    final = stages(DOCKERFILE.read_text())[-1]
    env = {k: v for k, v in env_of(final).items() if k.startswith("RELAY")}
    settings = load_settings(environ=env)  # raises ConfigError naming a bad key
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080
    low, high = settings.ice.udp_port_min, settings.ice.udp_port_max
    assert 1024 <= low < high
    exposed = " ".join(rest for k, rest in final if k == "EXPOSE").split()
    assert f"{low}-{high}/udp" in exposed
    # The sizing rule (docs/deploy.md): every admitted session at its peak fits the range
    # (a container has one address: host_addresses [] gathers it).
    per = ports_per_exchange(settings.ice, addresses=1)
    assert high - low + 1 >= settings.limits.global_max_sessions * per
    assert (
        check_port_range_size(
            settings.ice.model_copy(update={"host_addresses": ("10.0.0.2",)}),
            settings.limits.global_max_sessions,
        )
        is None
    )
    assert f"{settings.server.port}/tcp" in exposed or str(settings.server.port) in exposed
    assert high < EPHEMERAL_START, "below the kernel's ephemeral ports"
    volumes = [rest for k, rest in final if k == "VOLUME"]
    assert volumes and settings.server.data_dir.startswith(json.loads(volumes[0])[0])
    # Secrets never baked in.
    for name in env_of(final):
        assert not re.search(r"SECRET|TOKEN|PASSWORD|API_KEY", name), name


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins ('!' re-includes)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, body) for p in prefixes) or (
            body.startswith("**/") and any(fnmatch.fnmatch(x, body[3:]) for x in parts)
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_context_to_what_the_image_copies() -> None:
    patterns = _dockerignore_patterns()
    for excluded in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "bench/run.py"):
        assert dockerignored(excluded, patterns), excluded
    assert dockerignored("relay/__pycache__/app.cpython-311.pyc", patterns)
    for keyword, rest in instructions(DOCKERFILE.read_text()):
        if keyword == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                probe = source if (ROOT / source).is_file() else f"{source.rstrip('/')}/x.py"
                assert not dockerignored(probe.removeprefix("./"), patterns), source


def test_the_schema_migrations_ship_with_the_package_and_the_image() -> None:
    """relay.db.migrate reads its SQL files as package data: an installed relay (pip) has
    them only if pyproject.toml lists them, the image only if it copies them."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["relay"]
    migrations = sorted((ROOT / "relay/db/migrations").glob("*.sql"))
    assert migrations
    for path in migrations:
        inside = path.relative_to(ROOT / "relay").as_posix()
        assert any(fnmatch.fnmatch(inside, g) for g in globs), inside
        assert not dockerignored(path.relative_to(ROOT).as_posix(), _dockerignore_patterns())
    copied = [rest.split()[0] for k, rest in instructions(DOCKERFILE.read_text()) if k == "COPY"]
    assert "relay" in copied


def _dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


# ---------------------------------------------------------------------- compose.yaml

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")


class MissingVariable(ValueError):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` (nested defaults
    allowed) and ``$$`` for a literal dollar."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return interpolate(arg, env)
            return value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return value
        return value or ""

    parts = text.split("$$")
    return "$".join(_VARIABLE.sub(one, part) for part in parts)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env or COMPOSE_ENV))
    return data


def relay_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run `relay serve` (the image's own command)."""
    return {n: s for n, s in data["services"].items() if "build" in s and "command" not in s}


def relay_settings(service: dict[str, Any]) -> Settings:
    """A relay service's settings: the image's environment under compose's."""
    env = {k: str(v) for k, v in service["environment"].items()}
    return load_settings(environ={**dockerfile_env(), **env})


def config_file(data: dict[str, Any], name: str) -> Path:
    path = ROOT / str(data["configs"][name]["file"])
    assert path.is_file(), path
    return path


def rendered(data: dict[str, Any], service: str, tmp_path: Path) -> str:
    """What a service's ``sh -c`` entry point writes into /tmp at start, run here with the
    service's environment (its configs read from the repository, its exec left out)."""
    spec = data["services"][service]
    assert spec["entrypoint"] == ["/bin/sh", "-c"], service
    (script,) = spec["command"]
    # /tmp first: the repository itself may live under /tmp.
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = script.replace("/tmp/", f"{tmp_path}/")
    for mount in spec.get("configs", []):
        script = script.replace(mount["target"], str(config_file(data, mount["source"])))
    script, _, program = script.rpartition("&& exec ")
    assert program, f"{service}: the entry point ends by exec-ing the server"
    env = {"PATH": "/usr/bin:/bin", **{k: str(v) for k, v in spec["environment"].items()}}
    subprocess.run(["sh", "-c", script], env=env, check=True, timeout=30)
    (written,) = [p for p in tmp_path.iterdir() if p.name in program]
    assert written.stat().st_mode & 0o077 == 0, "written for the server's user alone"
    return written.read_text()


def test_compose_parses_and_every_service_is_checked_before_it_is_used() -> None:
    data = compose()
    services: dict[str, dict[str, Any]] = data["services"]
    assert {"postgres", "redis", "coturn", "seaweedfs", "proxy"} <= set(services)
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on with conditions"
        assert "healthcheck" in service or depends, f"{name}: no healthcheck, no condition"
        for target, rule in depends.items():
            condition = rule["condition"]
            assert target in services, f"{name} depends on unknown {target}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            else:
                assert condition == "service_completed_successfully"
                assert services[target].get("restart") == "no", target
        own = {s["image"] for s in relay_services(data).values()}
        if "image" in service and service["image"] not in own:
            assert pinned(service["image"]), f"{name}: {service['image']}"
    declared = set(data.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
        for config in service.get("configs", []):
            config_file(data, config["source"])


def test_compose_runs_two_relays_on_host_networking_with_separate_ranges() -> None:
    """Host networking: each relay binds its own UDP range on the host (publishing ranges
    costs a docker-proxy process per port), below the kernel's ephemeral ports, on one
    gathered address announced as PUBLIC_IP; HTTP on loopback behind the proxy."""
    data = compose()
    relays = relay_services(data)
    assert len(relays) >= 2
    ranges, ports = [], set()
    for name, service in relays.items():
        assert service["network_mode"] == "host" and "ports" not in service, name
        settings = relay_settings(service)  # every key loaded for real: a typo fails here
        ice = settings.ice
        assert 1024 <= ice.udp_port_min < ice.udp_port_max < EPHEMERAL_START, name
        # The sizing rule with the addresses it gathers.
        assert ice.host_addresses == (COMPOSE_ENV["PUBLIC_IP"],)
        size = ice.udp_port_max - ice.udp_port_min + 1
        per = ports_per_exchange(ice, addresses=len(ice.host_addresses))
        assert size >= settings.limits.global_max_sessions * per, name
        assert ice.public_address == COMPOSE_ENV["PUBLIC_IP"]
        assert ice.turn_secret == COMPOSE_ENV["TURN_SECRET"] and ice.turn_urls
        assert settings.database.url.startswith("postgresql://") and settings.cache.redis_url
        # Only the proxy on this host reaches them, and only it is trusted to forward.
        assert settings.server.host == "127.0.0.1"
        assert settings.server.trusted_proxies == (ipaddress.ip_network("127.0.0.1"),)
        ports.add(settings.server.port)
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace > settings.server.drain_timeout_s, "drain finishes before SIGKILL"
        mounts = [v.split(":") for v in service["volumes"]]
        assert any(target == "/data" for _, target in mounts), name
        ranges.append((ice.udp_port_min, ice.udp_port_max))
    assert len(ports) == len(relays), "each relay on its own HTTP port"
    turn = compose_turn_ports(data)
    ranges.sort()
    for (_, high), (low, _) in zip(ranges, ranges[1:], strict=False):
        assert high < low, f"UDP ranges overlap: {ranges}"
    assert all(high < turn[0] or low > turn[1] for low, high in ranges), (ranges, turn)
    sources = [v.split(":")[0] for s in relays.values() for v in s["volumes"]]
    assert len(set(sources)) == len(sources), "each relay has its own data volume"
    # The stateful services stay off the host's network, published on loopback only.
    for name in ("postgres", "redis", "seaweedfs"):
        service = data["services"][name]
        assert "network_mode" not in service, name
        assert all(p.startswith("127.0.0.1:") for p in service["ports"]), name


def compose_turn_ports(data: dict[str, Any]) -> tuple[int, int]:
    conf = config_file(data, "turnserver").read_text()
    low = int(re.search(r"^min-port=(\d+)$", conf, re.M)[1])  # type: ignore[index]
    high = int(re.search(r"^max-port=(\d+)$", conf, re.M)[1])  # type: ignore[index]
    assert high < EPHEMERAL_START, "coturn's relay ports below the ephemeral ports"
    return low, high


def test_compose_runs_one_simulator_for_both_relays_when_simulating() -> None:
    """RELAY_SIMULATE=true with --profile simulate: both relays use the simulator service,
    so a session created through one is exchanged through the other."""
    data = compose({**COMPOSE_ENV, "RELAY_SIMULATE": "true"})
    simulator = data["services"]["simulator"]
    assert simulator["profiles"] == ["simulate"] and simulator["network_mode"] == "host"
    command = simulator["command"]
    assert command[:4] == ["python", "-m", "relay", "simulate"]
    host, port = command[command.index("--host") + 1], command[command.index("--port") + 1]
    for name, service in relay_services(data).items():
        settings = relay_settings(service)
        assert uses_simulator(settings), name
        assert settings.upstream.simulator_url == f"http://{host}:{port}/v1", name


def test_compose_shares_the_turn_secret_and_proxies_to_every_relay(tmp_path: Path) -> None:
    data = compose()
    turn = rendered(data, "coturn", tmp_path / "coturn")
    assert f"static-auth-secret={COMPOSE_ENV['TURN_SECRET']}" in turn.splitlines()
    assert f"external-ip={COMPOSE_ENV['PUBLIC_IP']}" in turn.splitlines()
    assert "use-auth-secret" in turn and "no-cli" in turn
    assert COMPOSE_ENV["TURN_SECRET"] not in json.dumps(data["services"]["coturn"]["command"])
    caddy = config_file(data, "caddyfile").read_text()
    upstreams = re.search(r"reverse_proxy ([^{]+)\{", caddy)
    assert upstreams is not None
    expected = {f"127.0.0.1:{relay_settings(s).server.port}" for s in relay_services(data).values()}
    assert set(upstreams[1].split()) == expected
    assert "health_uri /readyz" in caddy
    assert "{$SITE_ADDRESS}" in caddy  # Caddy's own placeholder, from its environment
    assert data["services"]["proxy"]["network_mode"] == "host"
    s3 = json.loads(rendered(data, "seaweedfs", tmp_path / "seaweedfs"))
    creds = s3["identities"][0]["credentials"][0]
    assert creds == {"accessKey": "s3-access", "secretKey": "s3-secret"}


def peer_rules(turnserver_conf: str) -> tuple[list[str], list[tuple[Any, Any]], list[Any]]:
    """(option lines, denied ranges, allowed addresses) of a coturn configuration."""
    lines = [ln.strip() for ln in turnserver_conf.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("#")]
    denied, allowed = [], []
    for line in lines:
        name, _, value = line.partition("=")
        if name == "denied-peer-ip":
            low, _, high = value.partition("-")
            denied.append((ipaddress.ip_address(low), ipaddress.ip_address(high or low)))
        elif name == "allowed-peer-ip":
            assert "-" not in value, "only the relays' own address is allowed"
            allowed.append(ipaddress.ip_address(value))
    return lines, denied, allowed


def test_coturn_relays_to_no_private_loopback_or_link_local_peer(tmp_path: Path) -> None:
    turn = rendered(compose(), "coturn", tmp_path)
    lines, denied, allowed = peer_rules(turn)
    assert "no-tcp-relay" in lines and "no-multicast-peers" in lines
    assert not any(ln.startswith(("allow-loopback-peers", "cli-password")) for ln in lines)
    # The only exception: the relays' own address (their UDP ranges are published on it).
    assert allowed == [ipaddress.ip_address(COMPOSE_ENV["PUBLIC_IP"])]

    def is_denied(address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return ip not in allowed and any(
            low.version == ip.version and low <= ip <= high for low, high in denied
        )

    for address in (
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "10.1.2.3",
        "172.16.5.4",
        "172.31.255.255",
        "192.168.1.1",
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "::1",
        "fd00::1",  # IPv6 unique local
        "fc12:3456::1",
        "fe80::1",  # IPv6 link-local
        "::ffff:10.0.0.1",  # IPv4-mapped
    ):
        assert is_denied(address), address
    for address in ("8.8.8.8", "1.1.1.1", "2606:4700::1111", COMPOSE_ENV["PUBLIC_IP"]):
        assert not is_denied(address), address


def test_compose_never_falls_back_to_the_simulator_unasked() -> None:
    """The relays serve candidates through the proxy (trusted_proxies), so without a key they
    start only when RELAY_SIMULATE=true says so; otherwise they refuse, naming
    upstream.api_key."""
    image_env = dockerfile_env()

    def relay_env(extra: dict[str, str]) -> dict[str, str]:
        service = compose({**COMPOSE_ENV, **extra})["services"]["relay-1"]
        env = {k: str(v) for k, v in service["environment"].items()}
        return {**image_env, **env}

    without_key = load_settings(environ=relay_env({}))
    assert without_key.server.trusted_proxies and not without_key.upstream.simulate
    with pytest.raises(ConfigError, match=r"upstream\.api_key"):
        uses_simulator(without_key)
    asked = load_settings(environ=relay_env({"RELAY_SIMULATE": "true"}))
    assert uses_simulator(asked)
    real = load_settings(environ=relay_env({"OPENAI_API_KEY": "sk-test"}))
    assert not uses_simulator(real) and real.upstream.api_key == "sk-test"


def compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    return probe.returncode == 0


def test_compose_config() -> None:
    """``docker compose config`` when the plugin exists; otherwise the same interpolation
    rules checked here. Either way: all variables resolve, a missing one is refused."""
    missing = {k: v for k, v in COMPOSE_ENV.items() if k != "POSTGRES_PASSWORD"}
    if compose_plugin():
        run = ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"]
        # Where the docker CLI finds its plugins, and nothing else of this environment.
        where = {k: os.environ[k] for k in ("PATH", "HOME", "DOCKER_CONFIG") if k in os.environ}
        ok = subprocess.run(
            run, env={**where, **COMPOSE_ENV}, capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run(
            run, env={**where, **missing}, capture_output=True, text=True, timeout=60
        )
        assert bad.returncode != 0 and "POSTGRES_PASSWORD" in bad.stderr
        return
    text = interpolate(COMPOSE.read_text(), COMPOSE_ENV)
    assert "${" not in text.replace("{$SITE_ADDRESS}", "")
    assert yaml.safe_load(text)["name"] == "interview-relay"
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate(COMPOSE.read_text(), missing)
    # The nested default: TURN_HOST falls back to PUBLIC_IP.
    urls = json.loads(compose()["services"]["relay-1"]["environment"]["RELAY__ICE__TURN_URLS"])
    assert urls[0] == "turn:203.0.113.10:3478?transport=udp"
    turn_host = {**COMPOSE_ENV, "TURN_HOST": "turn.example.com"}
    urls = json.loads(
        compose(turn_host)["services"]["relay-1"]["environment"]["RELAY__ICE__TURN_URLS"]
    )
    assert urls[0] == "turn:turn.example.com:3478?transport=udp"


def test_interpolation_helper() -> None:
    env = {"A": "1", "E": ""}
    assert interpolate("${A}-${B:-x}-${E:-y}-${E-z}-$${A}", env) == "1-x-y--${A}"
    assert interpolate("${B:-${A}}", env) == "1"
    with pytest.raises(MissingVariable, match="E"):
        interpolate("${E:?set E}", env)


def caddyfile() -> str:
    """compose.yaml's Caddyfile (a file beside it: inline configs need a newer compose)."""
    path = str(compose()["configs"]["caddyfile"]["file"])
    return (ROOT / path).read_text()


def test_the_proxy_sends_hsts_when_the_relay_did_not() -> None:
    caddy = caddyfile()
    site = caddy.splitlines()
    assert '  header ?Strict-Transport-Security "max-age=31536000"' in site, caddy


def test_the_proxy_closes_idle_connections_before_the_relays_do() -> None:
    # A relay closes a keep-alive connection idle for server.header_timeout_s; a request
    # the proxy sends on it at that moment would fail.
    data = compose()
    keepalive = re.search(r"^\s*keepalive (\d+)s$", caddyfile(), re.M)
    assert keepalive is not None
    for name, service in relay_services(data).items():
        env = {k: str(v) for k, v in service["environment"].items()}
        assert int(keepalive[1]) < load_settings(environ=env).server.header_timeout_s, name


def test_compose_gives_the_relays_the_public_url_for_candidate_links() -> None:
    """`relay interviews create` inside a relay container prints the candidate's link: with
    PUBLIC_URL it is the site's address, not the relay's own loopback port."""
    from argparse import Namespace

    from relay.manage import _base_url

    site = {**COMPOSE_ENV, "PUBLIC_URL": "https://relay.example.com"}
    for name, service in relay_services(compose(site)).items():
        settings = relay_settings(service)
        assert settings.server.public_url == "https://relay.example.com", name
        assert _base_url(settings, Namespace(public_url=None)) == "https://relay.example.com"
    # Optional: unset, the relays load and take the origin of the request.
    for service in relay_services(compose()).values():
        assert relay_settings(service).server.public_url == ""
