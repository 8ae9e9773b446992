"""Keyed hashing of identifiers and truncation of addresses."""

from __future__ import annotations

import hashlib
import hmac
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from risk_engine.privacy import Hasher, truncate_ip


def test_digest_is_the_documented_keyed_hmac() -> None:
    """Stored profiles hold these digests: the construction must never change silently."""
    expected = hmac.new(b"s3cret", b"device\x00abc", hashlib.sha256).hexdigest()[:16]
    assert Hasher("s3cret").digest("device", "abc") == expected


def test_digest_is_stable_across_instances() -> None:
    assert Hasher("k").digest("ip", "81.2.69.160") == Hasher("k").digest("ip", "81.2.69.160")


def test_digest_depends_on_the_secret() -> None:
    assert Hasher("k1").digest("ip", "81.2.69.160") != Hasher("k2").digest("ip", "81.2.69.160")


def test_digest_separates_kinds_and_values() -> None:
    hasher = Hasher("k")
    digests = {
        hasher.digest("device", "x"),
        hasher.digest("ip", "x"),
        hasher.digest("user", "x"),
        hasher.digest("device", "y"),
        # The separator keeps ("ab", "c") apart from ("a", "bc").
        hasher.digest("ab", "c"),
        hasher.digest("a", "bc"),
    }
    assert len(digests) == 6


def test_digest_is_sixteen_hex_digits_and_hides_the_value() -> None:
    value = "user@example.com"
    digest = Hasher("k").digest("user", value)
    assert len(digest) == 16
    int(digest, 16)
    assert value not in digest


def test_digest_stays_correct_past_the_cache_bound() -> None:
    hasher = Hasher("k")
    first = hasher.digest("ip", "value-0")
    for i in range(70_000):
        hasher.digest("ip", f"value-{i}")
    assert hasher.digest("ip", "value-0") == first
    assert hasher.digest("ip", "value-0") == Hasher("k").digest("ip", "value-0")


@pytest.mark.parametrize(
    ("ip", "truncated"),
    [
        ("81.2.69.160", "81.2.69.0"),
        ("10.0.0.255", "10.0.0.0"),
        ("2001:db8:1:2::1", "2001:db8:1::"),
        ("2a02:2000:ffff:ffff:ffff:ffff:ffff:ffff", "2a02:2000:ffff::"),
    ],
)
def test_truncate_ip(ip: str, truncated: str) -> None:
    assert truncate_ip(ip_address(ip)) == truncated


@given(st.ip_addresses())
def test_truncate_ip_is_the_standard_librarys_network_address(
    ip: IPv4Address | IPv6Address,
) -> None:
    bits = 24 if ip.version == 4 else 48
    assert truncate_ip(ip) == str(ip_network(f"{ip}/{bits}", strict=False).network_address)
