"""The start-up banner names the address the relay bound (relay.cli.listening_banner)."""

from __future__ import annotations

import pytest

from relay.cli import listening_banner


@pytest.mark.parametrize(
    ("host", "line", "url"),
    [
        ("127.0.0.1", "listening on http://127.0.0.1:8080/", "http://127.0.0.1:8080/"),
        ("10.0.0.5", "listening on http://10.0.0.5:8080/", "http://10.0.0.5:8080/"),
        ("::1", "listening on http://[::1]:8080/", "http://[::1]:8080/"),
        (
            "0.0.0.0",
            "listening on http://0.0.0.0:8080/ (every IPv4 interface; "
            "from this machine: http://127.0.0.1:8080/)",
            "http://127.0.0.1:8080/",
        ),
        (
            "::",
            "listening on http://[::]:8080/ (every interface; from this machine: "
            "http://[::1]:8080/)",
            "http://[::1]:8080/",
        ),
    ],
)
def test_the_banner_names_the_bound_address_and_a_url_to_open(
    host: str, line: str, url: str
) -> None:
    printed, opened = listening_banner(host, 8080)
    assert printed == f"Interview relay {line}"
    assert opened == url


def test_the_workers_count_follows_the_bound_url() -> None:
    printed, _ = listening_banner("0.0.0.0", 9000, " (2 workers)")
    assert printed.startswith("Interview relay listening on http://0.0.0.0:9000/ (2 workers) (")
