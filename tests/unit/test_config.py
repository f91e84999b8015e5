"""Settings: defaults, config.toml, environment overrides, validation messages."""

from __future__ import annotations

import base64
import datetime
import json
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from relay.cli import main
from relay.config import ConfigError, Settings, load_settings, model_for, voice_for
from relay.upstream import model_currency

ROOT = Path(__file__).resolve().parents[2]
# State keys (base64 of 32 bytes).
KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()


def test_config_toml_lists_every_key_with_its_default() -> None:
    data = tomllib.loads((ROOT / "config.toml").read_text())
    defaults = Settings()
    assert set(data) == set(Settings.model_fields)
    for name in Settings.model_fields:
        documented = set(data[name])
        expected = set(type(getattr(defaults, name)).model_fields)
        assert documented == expected, name
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
        "RELAY_OPERATOR_TOKEN": "op-" + "o" * 30,
    }
    s = load_settings(file, environ=env)
    assert s.server.port == 9100
    assert s.events.browser_allowed == ("response.cancel",)
    assert s.database.query_timeout_s == 0.5
    assert s.cache.redis_url == "redis://127.0.0.1:1/0"
    assert s.database.url == "postgresql://x@127.0.0.1/db"
    assert s.upstream.api_key == "sk-test"
    assert s.upstream.base_url == "http://127.0.0.1:9000/v1"
    assert s.server.operator_token == "op-" + "o" * 30


def test_relay_names_win_over_the_conventional_ones_config_toml_lists() -> None:
    # config.toml's header: the conventional names, RELAY_TURN_SECRET among them, are read
    # and RELAY__SECTION__KEY wins over them.
    header = (ROOT / "config.toml").read_text().split("[server]", 1)[0]
    conventional = {
        "DATABASE_URL": ("database", "url"),
        "REDIS_URL": ("cache", "redis_url"),
        "OPENAI_API_KEY": ("upstream", "api_key"),
        "OPENAI_BASE_URL": ("upstream", "base_url"),
        "RELAY_OPERATOR_TOKEN": ("server", "operator_token"),
        "RELAY_TURN_SECRET": ("ice", "turn_secret"),
    }
    for name, (section, key) in conventional.items():
        assert name in header, name
        value = "http://127.0.0.1:1/" + "c" * 32
        wins = "http://127.0.0.1:2/" + "r" * 32
        assert getattr(getattr(load_settings(environ={name: value}), section), key) == value
        both = {name: value, f"RELAY__{section.upper()}__{key.upper()}": wins}
        assert getattr(getattr(load_settings(environ=both), section), key) == wins, name


def test_secrets_are_not_in_repr() -> None:
    s = load_settings(
        environ={"OPENAI_API_KEY": "sk-very-secret", "DATABASE_URL": "postgresql://u:pw@h/d"}
    )
    assert "sk-very-secret" not in repr(s)
    assert "pw@h" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY__SERVER__PORT": "http"}, "server.port: Input should be a valid integer"),
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
    assert model_for(Settings().upstream) == "gpt-realtime-2.1"
    beta = Settings().replace("upstream", dialect="beta").upstream
    assert model_for(beta) == "gpt-4o-realtime-preview-2024-12-17"
    # The voice default is one the dialect's models have (marin is GA-only).
    assert voice_for(Settings().upstream) == "marin" and voice_for(beta) == "verse"


def test_defaults_are_current_per_the_sdk() -> None:
    """Neither default model is on the official SDK's deprecated lists."""
    upstream = Settings().upstream
    assert model_currency.status(model_for(upstream), today=datetime.date(2026, 11, 1)) is None
    assert (
        model_currency.status(upstream.transcription_model, today=datetime.date(2026, 11, 1))
        is None
    )


def test_a_ga_only_voice_is_refused_for_the_beta_dialect(tmp_path: Path) -> None:
    path = tmp_path / "beta.toml"
    path.write_text('[upstream]\ndialect = "beta"\nvoice = "marin"\n')
    with pytest.raises(ConfigError, match=r"upstream\.voice"):
        load_settings(path, environ={})
    path.write_text('[upstream]\nreasoning_effort = "extreme"\n')
    with pytest.raises(ConfigError, match=r"upstream\.reasoning_effort"):
        load_settings(path, environ={})
    assert (
        model_for(Settings().replace("upstream", model="gpt-realtime-2").upstream)
        == "gpt-realtime-2"
    )


@pytest.mark.parametrize(
    ("env", "key"),
    [
        # 0 made every session request a 500 (a zero-length rate window).
        (
            {"RELAY__LIMITS__PER_USER_REQUESTS_PER_MINUTE": "0"},
            "limits.per_user_requests_per_minute",
        ),
        # 0 made the keep-warm task spin on the event loop.
        ({"RELAY__DATABASE__KEEPALIVE_INTERVAL_S": "0"}, "database.keepalive_interval_s"),
        ({"RELAY__LIMITS__GLOBAL_MAX_SESSIONS": "-1"}, "limits.global_max_sessions"),
        ({"RELAY__CACHE__BREAKER_OPEN_S": "0"}, "cache.breaker_open_s"),
        ({"RELAY__SESSION__PENDING_TTL_S": "0"}, "session.pending_ttl_s"),
        ({"RELAY__UPSTREAM__MINT_RETRIES": "1000"}, "upstream.mint_retries"),
        ({"RELAY__MEDIA__QUEUE_MAX_FRAMES": "0"}, "media.queue_max_frames"),
        ({"RELAY__DATABASE__POOL_MIN_SIZE": "20"}, "database.pool_min_size"),
        # 0 would refuse every session request as overloaded.
        ({"RELAY__LIMITS__MAX_INFLIGHT_ADMISSIONS": "0"}, "limits.max_inflight_admissions"),
        ({"RELAY__LIMITS__ADMISSION_QUEUE_TIMEOUT_S": "-1"}, "limits.admission_queue_timeout_s"),
    ],
)
def test_out_of_range_numbers_are_refused_at_start_naming_the_key(
    env: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + ":"):
        load_settings(environ=env)


def test_out_of_range_in_the_file_names_the_key(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[limits]\nper_user_requests_per_minute = 0\n")
    with pytest.raises(ConfigError, match=r"limits\.per_user_requests_per_minute"):
        load_settings(file, environ={})


def test_every_numeric_key_has_both_bounds() -> None:
    """A key added without bounds fails here (Annotated[int, Field(ge=..., le=...)])."""
    missing = []
    for section_name, section in Settings.model_fields.items():
        model = section.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, field in model.model_fields.items():
            if field.annotation not in (int, float):
                continue
            kinds = {type(m).__name__ for m in field.metadata}
            if not ({"Ge", "Gt"} & kinds and {"Le", "Lt"} & kinds):
                missing.append(f"{section_name}.{name}")
    assert missing == []


def test_list_values_in_the_environment_are_json() -> None:
    s = load_settings(
        environ={
            "RELAY__ICE__SERVERS": '[{"urls": ["stun:stun.example:3478"]}]',
            "RELAY__ICE__HOST_ADDRESSES": '["127.0.0.1", "::1"]',
        }
    )
    assert s.ice.servers[0].urls == ("stun:stun.example:3478",)
    assert s.ice.host_addresses == ("127.0.0.1", "::1")
    with pytest.raises(ConfigError, match=r"ice\.host_addresses"):
        load_settings(environ={"RELAY__ICE__HOST_ADDRESSES": "not json"})


def test_relay_names_win_over_conventional_ones_and_bad_names_are_refused() -> None:
    s = load_settings(
        environ={"DATABASE_URL": "postgresql://a", "RELAY__DATABASE__URL": "postgresql://b"}
    )
    assert s.database.url == "postgresql://b"
    with pytest.raises(ConfigError, match="RELAY__SECTION__KEY"):
        load_settings(environ={"RELAY__SERVER": "{}"})


def test_settings_are_frozen_and_replace_validates() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.server.port = 1
    assert s.replace("server", port=9000).server.port == 9000
    assert s.server.port == 8080
    with pytest.raises(ConfigError, match=r"limits\.per_user_requests_per_minute"):
        s.replace("limits", per_user_requests_per_minute=0)


def test_settings_in_code_ignore_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY__SERVER__PORT", "9999")
    assert Settings().server.port == 8080
    assert load_settings().server.port == 9999


def test_errors_never_echo_values() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"OPENAI_BASE_URL": "ftp://user:hunter2@x"})
    assert "hunter2" not in str(info.value)


def test_the_cli_reports_an_out_of_range_key_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.toml here: defaults and the environment
    monkeypatch.setenv("RELAY__DATABASE__KEEPALIVE_INTERVAL_S", "0")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: database.keepalive_interval_s" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------- pydantic-settings guard


def test_pydantic_settings_private_names_still_work_as_relied_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guard: relay/config.py parses the environment given to load_settings with
    ``pydantic_settings.sources.utils.parse_env_vars`` and puts it in place of
    ``EnvSettingsSource.env_vars`` (what the library read from os.environ). If an upgrade
    renames either or stops reading ``env_vars``, this fails: do not just bump the pin."""
    import inspect

    import pydantic_settings
    from pydantic_settings import EnvSettingsSource
    from pydantic_settings.sources import utils

    assert pydantic_settings.__version__ == "2.15.0"  # pinned in pyproject.toml
    assert list(inspect.signature(utils.parse_env_vars).parameters) == [
        "env_vars",
        "case_sensitive",
        "ignore_empty",
        "parse_none_str",
    ]
    source = inspect.getsource(EnvSettingsSource)
    assert "self.env_vars = self._load_env_vars()" in source
    assert "self.env_vars.get(env_name)" in source  # plain keys
    assert "self.explode_env_vars(field_name, field, self.env_vars)" in source  # A__B keys
    # Behaviour: the mapping given is what is read (plain, nested and JSON-list keys), and
    # os.environ is not, whatever it holds.
    monkeypatch.setenv("RELAY__SERVER__PORT", "1111")
    monkeypatch.setenv("RELAY__ICE__HOST_ADDRESSES", '["10.9.9.9"]')
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-os-environ")
    given = load_settings(
        environ={
            "relay__server__port": "2222",  # case-insensitive, as configured
            "RELAY__ICE__HOST_ADDRESSES": '["127.0.0.2"]',
        }
    )
    assert given.server.port == 2222
    assert given.ice.host_addresses == ("127.0.0.2",)
    assert given.upstream.api_key == ""
    empty = load_settings(environ={})
    assert empty.server.port == Settings().server.port != 1111
    assert empty.ice.host_addresses == Settings().ice.host_addresses


def test_recordings_directory_defaults_under_data_dir() -> None:
    s = load_settings(environ={"RELAY__SERVER__DATA_DIR": "/srv/relay"})
    assert str(s.recording_path) == "/srv/relay/recordings"
    s = load_settings(environ={"RELAY__RECORDING__DIRECTORY": "/mnt/rec"})
    assert str(s.recording_path) == "/mnt/rec"


@pytest.mark.parametrize("name", ["RELAY_OPERATOR_TOKEN", "RELAY__SERVER__OPERATOR_TOKEN"])
def test_an_operator_token_shorter_than_32_characters_is_refused(name: str) -> None:
    for short in ("q", "short-secret-value", "x" * 31):
        with pytest.raises(ConfigError) as caught:
            load_settings(environ={name: short})
        message = str(caught.value)
        assert message.startswith("server.operator_token: "), message
        assert "32 characters" in message and "secrets.token_urlsafe(32)" in message
        assert short not in message  # a secret is never echoed
    assert load_settings(environ={name: "x" * 32}).server.operator_token == "x" * 32
    # Empty: one is generated at start (relay.app), long enough.
    assert load_settings(environ={}).server.operator_token == ""


@pytest.mark.parametrize(
    "origin",
    ["*", "https://app.example.com/", "https://app.example.com/path", "app.example.com", "ftp://x"],
)
def test_cors_origins_must_be_exact_origins(origin: str) -> None:
    with pytest.raises(ConfigError, match=r"server\.cors_origins"):
        load_settings(environ={"RELAY__SERVER__CORS_ORIGINS": json.dumps([origin])})


def test_cors_origins_are_kept_as_browsers_send_them() -> None:
    origins = ["https://App.Example.com", "http://127.0.0.2:8123", "http://[::1]:9000"]
    s = load_settings(environ={"RELAY__SERVER__CORS_ORIGINS": json.dumps(origins)})
    assert s.server.cors_origins == (
        "https://app.example.com",
        "http://127.0.0.2:8123",
        "http://[::1]:9000",
    )
    assert Settings().server.cors_origins == ()


@pytest.mark.parametrize(
    ("value", "database_url", "wanted"),
    [
        (None, "", True),  # the default ("auto"), embedded PostgreSQL: README's first run
        (None, "postgresql://db/relay", False),  # a configured (production) database
        ("true", "postgresql://db/relay", True),
        ("false", "", False),
        ("auto", "", True),
    ],
)
def test_the_demo_user_is_made_only_with_the_embedded_database_unless_asked(
    value: str | None, database_url: str, wanted: bool
) -> None:
    env = {"DATABASE_URL": database_url} if database_url else {}
    if value is not None:
        env["RELAY__SERVER__CREATE_DEMO_USER"] = value
    settings = load_settings(environ=env)
    assert settings.server.demo_user_wanted(settings.database.url) is wanted


def test_a_value_can_come_from_a_file_as_secrets_are_mounted(tmp_path: Path) -> None:
    # Docker's and Kubernetes' secrets are files: NAME_FILE names one, for the conventional
    # names and for RELAY__ ones alike; the trailing newline an editor or echo leaves goes.
    (tmp_path / "openai").write_text("sk-from-a-file\n")
    (tmp_path / "state").write_text(KEY_A)
    (tmp_path / "token").write_bytes(b"t" * 40 + b"\r\n")  # saved by a Windows editor
    settings = load_settings(
        environ={
            "OPENAI_API_KEY_FILE": str(tmp_path / "openai"),
            "RELAY__CLUSTER__STATE_KEY_FILE": str(tmp_path / "state"),
            "RELAY_OPERATOR_TOKEN_FILE": str(tmp_path / "token"),
            "SOME_OTHER_PROGRAM_FILE": "/nonexistent",  # not ours: left alone
        }
    )
    assert settings.upstream.api_key == "sk-from-a-file"
    assert settings.cluster.state_key == KEY_A
    assert settings.server.operator_token == "t" * 40


def test_a_value_file_that_cannot_be_read_or_doubles_a_variable_is_refused(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("sk-do-not-echo")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY_FILE and OPENAI_API_KEY") as both:
        load_settings(environ={"OPENAI_API_KEY_FILE": str(secret), "OPENAI_API_KEY": "sk-x"})
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=r"RELAY__UPSTREAM__API_KEY_FILE: cannot read") as gone:
        load_settings(environ={"RELAY__UPSTREAM__API_KEY_FILE": str(missing)})
    assert "sk-do-not-echo" not in str(both.value) + str(gone.value)


def test_a_value_file_beside_an_empty_variable_is_read(tmp_path: Path) -> None:
    # compose.yaml passes OPENAI_API_KEY="${OPENAI_API_KEY:-}": empty when the key is not in
    # the .env, as when it is mounted as a secret (OPENAI_API_KEY_FILE in an override).
    # Empty is unset for the conventional names, so it is no second value.
    (tmp_path / "openai").write_text("sk-from-a-file\n")
    settings = load_settings(
        environ={"OPENAI_API_KEY": "", "OPENAI_API_KEY_FILE": str(tmp_path / "openai")}
    )
    assert settings.upstream.api_key == "sk-from-a-file"


# ---------------------------------------------------------------------- state keys


def test_previous_state_keys_are_a_json_list_set_like_the_key_itself(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "RELAY__CLUSTER__STATE_KEY": KEY_B,
            "RELAY__CLUSTER__PREVIOUS_STATE_KEYS": json.dumps([KEY_A]),
        }
    )
    assert (settings.cluster.state_key, settings.cluster.previous_state_keys) == (KEY_B, (KEY_A,))
    assert KEY_A not in repr(settings)
    # The NAME_FILE form, as a secret is mounted: the file holds the same JSON list.
    (tmp_path / "previous").write_text(json.dumps([KEY_A, KEY_B]) + "\n")
    from_file = load_settings(
        environ={"RELAY__CLUSTER__PREVIOUS_STATE_KEYS_FILE": str(tmp_path / "previous")}
    )
    assert from_file.cluster.previous_state_keys == (KEY_A, KEY_B)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY__CLUSTER__STATE_KEY": "short-key"}, "cluster.state_key: not base64"),
        (
            {"RELAY__CLUSTER__STATE_KEY": base64.b64encode(b"x" * 16).decode()},
            "cluster.state_key: must decode to 32 bytes, got 16",
        ),
        (
            {"RELAY__CLUSTER__PREVIOUS_STATE_KEYS": json.dumps([KEY_A, "short-key"])},
            "cluster.previous_state_keys: key number 2: not base64",
        ),
        (
            {"RELAY__CLUSTER__PREVIOUS_STATE_KEYS": json.dumps([KEY_A[:-4]])},
            "cluster.previous_state_keys: key number 1: must decode to 32 bytes, got 30",
        ),
        ({"RELAY__CLUSTER__PREVIOUS_STATE_KEYS": KEY_A}, "expected a JSON list"),
    ],
)
def test_a_malformed_state_key_is_refused_naming_it_not_quoting_it(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(environ=env)
    assert "short-key" not in str(info.value) and KEY_A[:20] not in str(info.value)


def test_the_cli_refuses_a_malformed_previous_state_key_in_one_line_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELAY__CLUSTER__PREVIOUS_STATE_KEYS", json.dumps(["not-a-key"]))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "configuration error: cluster.previous_state_keys: key number 1: not base64 of 32 "
        "bytes (generate one: relay state-key generate)"
    ]
    assert not (tmp_path / ".relay").exists()  # refused before anything started


def test_state_key_generate_prints_a_key_the_settings_take_whatever_they_hold(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # The key being replaced may be the malformed one: generating reads no settings.
    monkeypatch.setenv("RELAY__CLUSTER__STATE_KEY", "not-a-key")
    assert main(["state-key", "generate"]) == 0
    (key,) = capsys.readouterr().out.splitlines()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert load_settings(environ={"RELAY__CLUSTER__STATE_KEY": key}).cluster.state_key == key
    assert main(["state-key", "generate"]) == 0
    assert capsys.readouterr().out.strip() != key
