"""ICE settings for real networks: port range, announced address, TURN REST credentials,
and the reduction of the server list to what aiortc uses (pure logic)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from pathlib import Path

import pytest
from aiortc import RTCIceServer

from relay.config import ConfigError, IceConfig, IceServerConfig, Settings, load_settings
from relay.media import aiortc_private
from relay.media.ice import (
    announce_public_address,
    browser_ice_servers,
    for_aiortc,
    rtc_configuration,
    turn_rest_credentials,
)
from relay.media.manager import check_port_range_size, ports_per_exchange
from relay.media.port_range import PortRange, port_range

ROOT = Path(__file__).resolve().parents[2]

SECRET = "unit-secret"

ANSWER = (
    "v=0\r\n"
    "o=- 1 1 IN IP4 0.0.0.0\r\n"
    "m=audio 40002 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 10.0.0.5\r\n"
    "a=candidate:abc 1 udp 2130706431 10.0.0.5 40002 typ host\r\n"
    "a=candidate:def 1 udp 1694498815 198.51.100.9 40002 typ srflx raddr 10.0.0.5 rport 40002\r\n"
    "a=candidate:ghi 1 udp 16777215 192.0.2.50 61000 typ relay raddr 10.0.0.5 rport 40003\r\n"
    "a=end-of-candidates\r\n"
)


def test_turn_rest_credentials_are_coturns_scheme() -> None:
    now = 1_700_000_000
    creds = turn_rest_credentials(SECRET, "sess_abc", 3600, now=now)
    assert creds.username == "1700003600:sess_abc"
    expected = hmac.new(b"unit-secret", b"1700003600:sess_abc", hashlib.sha1).digest()
    assert base64.b64decode(creds.credential) == expected
    assert len(base64.b64decode(creds.credential)) == 20
    other = turn_rest_credentials("another", "sess_abc", 3600, now=now)
    assert other.credential != creds.credential
    assert creds.credential not in repr(creds)


def test_browser_ice_servers_hold_static_servers_and_per_session_turn() -> None:
    ice = IceConfig(
        servers=(IceServerConfig(urls=("stun:stun.example:3478",)),),
        turn_urls=("turn:turn.example:3478?transport=udp", "turns:turn.example:5349"),
        turn_secret=SECRET,
        turn_ttl_s=600,
    )
    before = int(time.time())
    servers = browser_ice_servers(ice, "sess_1")
    assert servers[0] == {"urls": ["stun:stun.example:3478"]}
    turn = servers[1]
    assert turn["urls"] == list(ice.turn_urls)
    expiry, session = str(turn["username"]).split(":")
    assert session == "sess_1" and before + 600 <= int(expiry) <= int(time.time()) + 600
    assert SECRET not in str(servers)
    # Without turn_urls there is no TURN entry, and no secret is needed.
    assert browser_ice_servers(IceConfig(), "sess_1") == []


def test_for_aiortc_keeps_one_stun_and_the_best_turn() -> None:
    servers = [
        RTCIceServer(urls=["turns:a.example:5349"], username="u", credential="c"),
        RTCIceServer(urls=["stun:s1.example", "stun:s2.example"]),
        RTCIceServer(
            urls=["turn:b.example:3478?transport=tcp", "turn:b.example:3478?transport=udp"],
            username="u2",
            credential="c2",
        ),
        RTCIceServer(urls=["turn:c.example:3478"], username="u3", credential="c3"),
    ]
    chosen = for_aiortc(servers)
    assert [s.urls for s in chosen] == [["stun:s1.example"], ["turn:b.example:3478?transport=udp"]]
    assert (chosen[1].username, chosen[1].credential) == ("u2", "c2")
    only_tls = for_aiortc([servers[0]])
    assert [s.urls for s in only_tls] == [["turns:a.example:5349"]]
    assert for_aiortc([RTCIceServer(urls=["turn:x.example?transport=sctp"])]) == []
    assert for_aiortc([RTCIceServer(urls=["turns:x.example?transport=udp"])]) == []


def test_relay_legs_use_turn_only_as_configured() -> None:
    ice = IceConfig(turn_urls=("turn:t.example:3478",), turn_secret=SECRET, relay_turn="upstream")
    up = rtc_configuration(ice, leg="upstream", session_id="sess_9").iceServers
    browser = rtc_configuration(ice, leg="browser", session_id="sess_9").iceServers
    assert up is not None and browser is not None
    assert [s.urls for s in up] == [["turn:t.example:3478"]]
    assert str(up[0].username).endswith(":sess_9")
    assert browser == []


def test_announce_public_address_rewrites_host_candidates_only() -> None:
    out = announce_public_address(ANSWER, "203.0.113.7")
    assert "a=candidate:abc 1 udp 2130706431 203.0.113.7 40002 typ host\r\n" in out
    assert "c=IN IP4 203.0.113.7\r\n" in out
    assert "198.51.100.9 40002 typ srflx raddr 10.0.0.5" in out  # untouched
    assert "192.0.2.50 61000 typ relay" in out
    assert "10.0.0.5 40002 typ host" not in out
    assert announce_public_address(ANSWER, "") == ANSWER
    assert "c=IN IP6 2001:db8::7\r\n" in announce_public_address(ANSWER, "2001:db8::7")


def test_port_range_object() -> None:
    assert port_range(0, 0) is None
    ports = port_range(40000, 40005)
    assert ports is not None and ports.size == 6
    assert port_range(40000, 40005) is ports  # one per range: a shared cursor
    assert 40000 in ports and 40005 in ports and 40006 not in ports
    with pytest.raises(ValueError):
        PortRange(5, 4)


def test_ice_settings_from_the_environment_with_json_lists() -> None:
    s = load_settings(
        environ={
            "RELAY__ICE__UDP_PORT_MIN": "40000",
            "RELAY__ICE__UDP_PORT_MAX": "40099",
            "RELAY__ICE__PUBLIC_ADDRESS": "203.0.113.7",
            "RELAY__ICE__TURN_URLS": '["turn:turn.example:3478", "turns:turn.example:5349"]',
            "RELAY_TURN_SECRET": "from-env-secret",
            "RELAY__ICE__TURN_TTL_S": "900",
            "RELAY__SESSION__MAX_DURATION_S": "840",  # 60 + 840 <= 900
            "RELAY__ICE__RELAY_TURN": "upstream",
        }
    )
    ice = s.ice
    assert (ice.udp_port_min, ice.udp_port_max, ice.public_address) == (
        40000,
        40099,
        "203.0.113.7",
    )
    assert ice.turn_urls == ("turn:turn.example:3478", "turns:turn.example:5349")
    assert ice.turn_secret == "from-env-secret" and ice.turn_ttl_s == 900
    assert "from-env-secret" not in repr(s)
    assert Settings().ice.relay_turn == "none"


def test_the_turn_ttl_must_cover_a_whole_interview() -> None:
    turn = {"RELAY__ICE__TURN_URLS": '["turn:t.example:3478"]', "RELAY_TURN_SECRET": "s"}
    # The shipped defaults satisfy the rule (60 + 3600 <= 3960).
    defaults = load_settings(ROOT / "config.toml", environ=turn)
    ttl, session = defaults.ice.turn_ttl_s, defaults.session
    assert ttl >= session.pending_ttl_s + session.max_duration_s
    assert Settings().ice.turn_ttl_s == ttl
    with pytest.raises(ConfigError, match=r"^ice\.turn_ttl_s: .*\(3660\)"):
        load_settings(environ={**turn, "RELAY__ICE__TURN_TTL_S": "3600"})
    with pytest.raises(ConfigError, match=r"^ice\.turn_ttl_s: .*\(7260\)"):
        load_settings(environ={**turn, "RELAY__SESSION__MAX_DURATION_S": "7200"})
    exact = load_settings(
        environ={**turn, "RELAY__ICE__TURN_TTL_S": "7260", "RELAY__SESSION__MAX_DURATION_S": "7200"}
    )
    assert exact.ice.turn_ttl_s == 7260
    # Without TURN the TTL is unused and not checked.
    assert load_settings(environ={"RELAY__ICE__TURN_TTL_S": "60"}).ice.turn_ttl_s == 60


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY__ICE__UDP_PORT_MIN": "40000"}, "ice.udp_port_min"),
        (
            {"RELAY__ICE__UDP_PORT_MIN": "500", "RELAY__ICE__UDP_PORT_MAX": "600"},
            "ice.udp_port_min",
        ),
        (
            {"RELAY__ICE__UDP_PORT_MIN": "40010", "RELAY__ICE__UDP_PORT_MAX": "40000"},
            "ice.udp_port_min",
        ),
        ({"RELAY__ICE__PUBLIC_ADDRESS": "relay.example.com"}, "ice.public_address"),
        ({"RELAY__ICE__TURN_URLS": '["stun:x.example"]'}, "ice.turn_urls: 'stun:x"),
        ({"RELAY__ICE__TURN_URLS": '["turn:x.example"]'}, "ice.turn_secret"),
        ({"RELAY__ICE__TURN_TTL_S": "10"}, "ice.turn_ttl_s"),
        ({"RELAY__ICE__RELAY_TURN": "upstream"}, "ice.relay_turn"),
        ({"RELAY__ICE__RELAY_TURN": "sometimes"}, "ice.relay_turn"),
    ],
)
def test_invalid_ice_settings_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_settings(environ=env)


def test_the_turn_secret_is_not_in_error_messages_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"RELAY_TURN_SECRET": "s3cr3t-value", "RELAY__ICE__TURN_TTL_S": "5"})
    assert "s3cr3t-value" not in str(info.value)
    assert "s3cr3t-value" not in caplog.text


def test_ports_per_exchange_counts_addresses_and_udp_turn_on_each_leg() -> None:
    udp = IceServerConfig(urls=("turn:t.example:3478",), username="u", credential="c")
    tcp = IceServerConfig(urls=("turn:t.example:3478?transport=tcp",), username="u", credential="c")
    turn = IceConfig(turn_urls=("turn:t.example:3478",), turn_secret=SECRET)
    two = ("127.0.0.1", "127.0.0.2")
    # (A + Tb) + 2 x (A + Tu)
    assert ports_per_exchange(IceConfig()) == 3
    assert ports_per_exchange(IceConfig(host_addresses=two)) == 6
    # ice.servers goes to both legs: a UDP TURN client on every transport.
    assert ports_per_exchange(IceConfig(servers=(udp,))) == 2 + 2 * 2
    assert ports_per_exchange(IceConfig(servers=(udp,), host_addresses=two)) == 3 + 2 * 3
    # TURN over TCP has a TCP socket, outside the UDP range; STUN uses the host sockets.
    assert ports_per_exchange(IceConfig(servers=(tcp,))) == 3
    stun = IceServerConfig(urls=("stun:s.example:3478",))
    assert ports_per_exchange(IceConfig(servers=(stun,))) == 3
    # turn_urls only on the legs ice.relay_turn names.
    assert ports_per_exchange(turn) == 3
    upstream = turn.model_copy(update={"relay_turn": "upstream"})
    assert ports_per_exchange(upstream) == 1 + 2 * 2
    assert ports_per_exchange(turn.model_copy(update={"relay_turn": "both"})) == 2 + 2 * 2
    # Empty host_addresses: the machine's addresses as aioice finds them (at least one).
    machine = max(1, len(aiortc_private.machine_host_addresses()))
    assert ports_per_exchange(IceConfig(host_addresses=())) == 3 * machine
    assert ports_per_exchange(IceConfig(host_addresses=()), addresses=2) == 6


def test_a_range_too_small_for_the_session_cap_is_reported() -> None:
    ice = IceConfig(udp_port_min=40000, udp_port_max=40299)
    assert check_port_range_size(ice, 100) is None
    message = check_port_range_size(ice, 101)
    assert message is not None and "303" in message and "global_max_sessions" in message
    assert check_port_range_size(IceConfig(), 100_000) is None  # any port: nothing to size
