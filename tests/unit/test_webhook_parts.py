"""The webhooks' pure parts: signatures (checked by the Standard Webhooks reference
implementation), the SSRF policy on addresses and URLs, and the retry schedule."""

from __future__ import annotations

import base64
import ipaddress
import random
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.config import Settings, WebhooksConfig
from relay.webhooks.retry import retry_delay_s
from relay.webhooks.sender import payload
from relay.webhooks.signing import headers, new_secret, secret_key
from relay.webhooks.ssrf import AddressPolicy, UrlRefused, check_literal, parse_url


def test_signatures_verify_with_the_reference_implementation() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret_key(secret)) == 24
    body = payload("evt_" + "0" * 32, "interview.started", datetime.now(UTC), {"ü": "é"})
    signed = headers(secret, "evt_" + "0" * 32, int(datetime.now(UTC).timestamp()), body)
    assert Webhook(secret).verify(body, signed)["data"] == {"ü": "é"}
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, signed)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"started", b"stopped"), signed)
    old = headers(secret, "evt_" + "0" * 32, int(datetime.now(UTC).timestamp()) - 3600, body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, old)
    for bad in ("sk_abc", "whsec_!!", "whsec_"):
        with pytest.raises(ValueError):
            secret_key(bad)
    assert secret_key("whsec_" + base64.b64encode(b"k").decode()) == b"k"


def test_during_a_rotation_each_secret_verifies_and_no_other() -> None:
    new, previous = new_secret(), new_secret()
    body = payload("evt_" + "1" * 32, "webhook.test", datetime.now(UTC), {})
    now = int(datetime.now(UTC).timestamp())
    signed = headers(new, "evt_" + "1" * 32, now, body, previous=previous)
    assert signed["webhook-signature"].count("v1,") == 2
    for secret in (new, previous):
        assert Webhook(secret).verify(body, signed)["type"] == "webhook.test"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, signed)
    alone = headers(new, "evt_" + "1" * 32, now, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(previous).verify(body, alone)


def policy(**kwargs: object) -> AddressPolicy:
    return AddressPolicy.from_config(Settings().replace("webhooks", **kwargs).webhooks)


@pytest.mark.parametrize(
    ("address", "scheme", "allowed"),
    [
        ("93.184.216.34", "https", True),
        ("2606:2800:220:1:248:1893:25c8:1946", "https", True),
        ("93.184.216.34", "http", False),
        ("10.0.0.1", "https", False),
        ("172.16.5.4", "https", False),
        ("192.168.1.1", "https", False),
        ("100.64.0.1", "https", False),
        ("169.254.169.254", "https", False),
        ("fe80::1", "https", False),
        ("fc00::1", "https", False),
        ("::ffff:192.168.1.1", "https", False),
        ("::ffff:93.184.216.34", "https", True),
        # NAT64 (well-known prefix) and 6to4 reach their embedded IPv4 address.
        ("64:ff9b::a9fe:a9fe", "https", False),
        ("64:ff9b::7f00:1", "https", False),
        ("64:ff9b::5db8:d822", "https", True),
        ("64:ff9b:1::a9fe:a9fe", "https", False),
        ("2002:a00:1::1", "https", False),
        ("2002:5db8:d822::1", "https", True),
        # Reserved and deprecated site-local IPv6.
        ("::127.0.0.1", "https", False),
        ("::ffff:0:7f00:1", "https", False),
        ("fec0::1", "https", False),
        ("127.0.0.1", "https", False),
        ("::1", "https", False),
        ("0.0.0.0", "https", False),
        ("224.0.0.1", "https", False),
        ("192.0.2.1", "https", False),
    ],
)
def test_the_default_policy_lets_only_public_unicast_https_through(
    address: str, scheme: str, allowed: bool
) -> None:
    reason = policy().refusal(ipaddress.ip_address(address), scheme)
    assert (reason is None) == allowed, reason


def test_configuration_opens_named_networks_and_loopback_only() -> None:
    lenient = policy(allowed_networks=["10.20.0.0/16"], allow_insecure_loopback=True)
    assert lenient.refusal(ipaddress.ip_address("10.20.1.1"), "https") is None
    assert lenient.refusal(ipaddress.ip_address("10.21.1.1"), "https") is not None
    assert lenient.refusal(ipaddress.ip_address("10.20.1.1"), "http") is not None
    assert lenient.refusal(ipaddress.ip_address("127.0.0.1"), "http") is None
    assert lenient.refusal(ipaddress.ip_address("::1"), "https") is None
    assert lenient.refusal(ipaddress.ip_address("169.254.1.1"), "https") is not None
    # A NAT64 form of 127.0.0.1 goes to the gateway, not to this host's loopback.
    assert lenient.refusal(ipaddress.ip_address("64:ff9b::7f00:1"), "http") is not None


def test_an_allowed_network_may_be_named_in_its_ipv6_translated_form() -> None:
    # An IPv6-only host reaching an internal receiver through its NAT64 gateway: the
    # operator opens the gateway's prefix (or a local-use one) as such.
    nat64 = policy(allowed_networks=["64:ff9b::a14:0/120", "64:ff9b:1::/48"])
    assert nat64.refusal(ipaddress.ip_address("64:ff9b::a14:1"), "https") is None
    assert nat64.refusal(ipaddress.ip_address("64:ff9b:1::a14:1"), "https") is None
    assert nat64.refusal(ipaddress.ip_address("64:ff9b::a15:1"), "https") is not None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("hooks.example.com/x", "must be an https URL"),
        ("gopher://hooks.example.com/", "must be an https URL"),
        ("https://a:b@hooks.example.com/", "credentials"),
        ("https://hooks.example.com/#frag", "fragment"),
        ("https:///path", "has no host"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
        ("https://0x7f000001/", "neither a name nor an IP address"),
        ("https://017700000001/", "neither a name nor an IP address"),
        ("https://hooks..example.com/", "neither a name nor an IP address"),
        ("https://" + "a" * 2100 + ".com/", "longer than"),
    ],
)
def test_malformed_urls_are_refused_before_any_lookup(url: str, message: str) -> None:
    with pytest.raises(UrlRefused, match=message):
        check_literal(parse_url(url), policy())


def test_urls_name_their_target() -> None:
    target = parse_url("https://Hooks.Example.com/a?b=c")
    assert (target.scheme, target.host, target.port, target.literal) == (
        "https",
        "hooks.example.com",
        443,
        None,
    )
    literal = parse_url("http://[::1]:8080/x")
    assert literal.port == 8080 and literal.literal == ipaddress.ip_address("::1")


def test_retries_back_off_exponentially_with_jitter_up_to_the_ceiling() -> None:
    config = WebhooksConfig(retry_base_s=5.0, retry_max_interval_s=3600.0)
    rng = random.Random(7)
    for attempt, ceiling in [
        (1, 5.0),
        (2, 10.0),
        (3, 20.0),
        (8, 640.0),
        (12, 3600.0),
        (400, 3600.0),
    ]:
        delays = [retry_delay_s(attempt, config, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > ceiling / 4  # spread: not all at one instant
    # With the defaults a delivery keeps being retried for the whole of retry_for_s (which
    # is at least a day): the waits never exceed the hour, so no wait jumps past it.
    defaults = WebhooksConfig()
    assert defaults.retry_for_s >= 86400
    assert retry_delay_s(10_000, defaults, rng) <= defaults.retry_max_interval_s < 86400
