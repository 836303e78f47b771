"""Resolving the caller behind trusted proxies (nubis.web.proxies; issue 9 item 6)."""

from __future__ import annotations

import pytest

from nubis.config import SettingsError, load_settings
from nubis.web.proxies import TrustedProxies, parse_trusted_proxies

PROXIES = TrustedProxies(parse_trusted_proxies("10.0.0.0/8, 192.0.2.1, ::1"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),
        ("10.0.0.5", ["203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # through two proxies
        ("10.0.0.5", ["198.51.100.1", "203.0.113.7"], "203.0.113.7"),  # headers joined
        ("10.0.0.5", ["10.9.9.9, 192.0.2.1"], "10.9.9.9"),  # every hop trusted: the leftmost
        ("10.0.0.5", ["203.0.113.7:5123"], "203.0.113.7"),
        ("10.0.0.5", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("10.0.0.5", ["::ffff:203.0.113.7"], "203.0.113.7"),
        ("10.0.0.5", ["unknown"], "10.0.0.5"),  # garbled: the last address vouched for
        ("10.0.0.5", ["203.0.113.7, garbage, 10.0.0.9"], "10.0.0.9"),
        ("::1", ["  "], "::1"),
    ],
)
def test_the_first_untrusted_hop_from_the_right_is_the_client(
    peer: str, forwarded_for: list[str], client: str
) -> None:
    assert PROXIES.client(peer, forwarded_for) == client


def test_membership() -> None:
    assert "10.200.0.1" in PROXIES and "::1" in PROXIES and "::ffff:10.0.0.1" in PROXIES
    assert "192.0.2.2" not in PROXIES and "not-an-address" not in PROXIES
    assert "127.0.0.1" not in TrustedProxies(parse_trusted_proxies(""))


def test_a_bad_entry_is_refused_at_start() -> None:
    with pytest.raises(SettingsError, match=r"trusted_proxies: 'proxy\.example' is not an IP"):
        load_settings(environ={}, overrides={"trusted_proxies": "10.0.0.1, proxy.example"})


def test_rfc7239_forwarded_elements_are_parsed() -> None:
    from nubis.web.proxies import parse_forwarded

    header = 'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711";host="a,b"'
    assert parse_forwarded([header, "For=10.0.0.1"]) == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        {"for": "[2001:db8:cafe::17]:4711", "host": "a,b"},
        {"for": "10.0.0.1"},
    ]
    assert parse_forwarded(["for=1.2.3.4;garbage"]) == [{}]


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("pacs.example.org", True),
        ("pacs.example.org:8443", True),
        ("[2001:db8::1]:443", True),
        ("evil.example/path", False),
        ("user@host", False),
        ("host:port", False),
        ("", False),
    ],
)
def test_forwarded_hosts_must_be_hosts(value: str, valid: bool) -> None:
    from nubis.web.proxies import valid_host

    assert (valid_host(value) is not None) is valid
