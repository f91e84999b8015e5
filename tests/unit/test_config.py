"""Settings: defaults, config.toml, environment overrides, validation messages."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from relay.config import ConfigError, Settings, load_settings, model_for

ROOT = Path(__file__).resolve().parents[2]


def test_config_toml_lists_every_key_with_its_default() -> None:
    data = tomllib.loads((ROOT / "config.toml").read_text())
    defaults = Settings()
    for section in dataclasses.fields(Settings):
        documented = set(data[section.name])
        expected = {f.name for f in dataclasses.fields(getattr(defaults, section.name))}
        assert documented == expected, section.name
    assert load_settings(ROOT / "config.toml", environ={}) == defaults


def test_environment_overrides_file_and_conventional_names(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[server]\nport = 9000\n[cache]\nredis_url = "redis://file"\n')
    env = {
        "RELAY__SERVER__PORT": "9100",
        "RELAY__EVENTS__BROWSER_ALLOWED": '["response.cancel"]',
        "RELAY__DATABASE__QUERY_TIMEOUT_S": "0.5",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": "postgresql://x@127.0.0.1/db",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": "http://127.0.0.1:9000/v1",
        "RELAY_OPERATOR_TOKEN": "op",
    }
    s = load_settings(file, environ=env)
    assert s.server.port == 9100
    assert s.events.browser_allowed == ("response.cancel",)
    assert s.database.query_timeout_s == 0.5
    assert s.cache.redis_url == "redis://127.0.0.1:1/0"
    assert s.database.url == "postgresql://x@127.0.0.1/db"
    assert s.upstream.api_key == "sk-test"
    assert s.upstream.base_url == "http://127.0.0.1:9000/v1"
    assert s.server.operator_token == "op"


def test_secrets_are_not_in_repr() -> None:
    s = load_settings(
        environ={"OPENAI_API_KEY": "sk-very-secret", "DATABASE_URL": "postgresql://u:pw@h/d"}
    )
    assert "sk-very-secret" not in repr(s)
    assert "pw@h" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY__SERVER__PORT": "http"}, "server.port: expected an integer"),
        ({"RELAY__SERVER__PORT": "70000"}, "server.port"),
        ({"RELAY__UPSTREAM__DIALECT": "v2"}, "upstream.dialect"),
        ({"RELAY__UPSTREAM__VAD_THRESHOLD": "1.5"}, "upstream.vad_threshold"),
        ({"RELAY__NOPE__X": "1"}, "unknown setting nope"),
        ({"RELAY__SERVER__NOPE": "1"}, "unknown setting server.nope"),
        ({"RELAY__EVENTS__BROWSER_ALLOWED": '["session.update"]'}, "session.update"),
        ({"OPENAI_BASE_URL": "ftp://x"}, "upstream.base_url"),
        ({"RELAY__DATABASE__QUERY_TIMEOUT_S": "0"}, "database.query_timeout_s"),
        ({"RELAY__RECORDING__FORMAT": "mp3"}, "recording.format"),
        ({"RELAY__RECORDING__RETENTION_DAYS": "0"}, "recording.retention_days"),
        ({"RELAY__RECORDING__STORAGE": "s3"}, "recording.s3_bucket"),
        ({"RELAY__RECORDING__S3_ENDPOINT_URL": "minio:9000"}, "recording.s3_endpoint_url"),
    ],
)
def test_invalid_settings_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(environ=env)


def test_ice_servers_from_toml(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text(
        '[ice]\nservers = [{ urls = ["turn:t.example:3478"], username = "u", credential = "p" }]\n'
    )
    s = load_settings(file, environ={})
    assert s.ice.servers[0].urls == ("turn:t.example:3478",)
    assert repr(s.ice.servers[0]).split("credential")[0] != "p"
    bad = tmp_path / "bad.toml"
    bad.write_text('[ice]\nservers = [{ urls = ["http://x"] }]\n')
    with pytest.raises(ConfigError, match=r"ice\.servers\[0\]\.urls"):
        load_settings(bad, environ={})


def test_model_defaults_per_dialect() -> None:
    assert model_for(Settings().upstream) == "gpt-realtime"
    beta = Settings().replace("upstream", dialect="beta").upstream
    assert model_for(beta) == "gpt-4o-realtime-preview-2024-12-17"
    assert (
        model_for(Settings().replace("upstream", model="gpt-realtime-2").upstream)
        == "gpt-realtime-2"
    )


def test_recordings_directory_defaults_under_data_dir() -> None:
    s = load_settings(environ={"RELAY__SERVER__DATA_DIR": "/srv/relay"})
    assert str(s.recording_path) == "/srv/relay/recordings"
    s = load_settings(environ={"RELAY__RECORDING__DIRECTORY": "/mnt/rec"})
    assert str(s.recording_path) == "/mnt/rec"
