"""Keyed hashing and truncation of identifiers kept in profiles and logs.

Profiles need to recognise an address or a device again, never to read it back,
so they keep an HMAC of it under a server secret; logs keep truncated addresses.
"""

from __future__ import annotations

import hashlib
import hmac
from ipaddress import IPv4Address, IPv6Address


class Hasher:
    """HMAC-SHA256 of identifiers under a server secret, shortened to 16 hex digits.

    >>> Hasher("s3cret").digest("device", "abc") == Hasher("s3cret").digest("device", "abc")
    True
    >>> Hasher("s3cret").digest("device", "abc") == Hasher("other").digest("device", "abc")
    False
    """

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()
        self._cache: dict[tuple[str, str], str] = {}

    @property
    def secret(self) -> str:
        """The secret, for a process of ours that must compute the same digests."""
        return self._key.decode()

    def digest(self, kind: str, value: str) -> str:
        key = (kind, value)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        mac = hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256)
        out = mac.hexdigest()[:16]
        if len(self._cache) > 65536:
            # A plain bound, not an LRU: hits are cheap to recompute.
            self._cache.clear()
        self._cache[key] = out
        return out

    def derive(self, purpose: str) -> bytes:
        """A full-length key of its own for ``purpose`` (e.g. signing console sessions)."""
        return hmac.new(self._key, f"derive\x00{purpose}".encode(), hashlib.sha256).digest()


def truncate_ip(ip: IPv4Address | IPv6Address) -> str:
    """Drop the host part: IPv4 to /24, IPv6 to /48 (what logs keep of an address).

    >>> from ipaddress import ip_address
    >>> truncate_ip(ip_address("81.2.69.160"))
    '81.2.69.0'
    """
    # Masked by hand: ip_network() parses a string back (13x the time for IPv4, 4x for IPv6).
    if ip.version == 4:
        a, b, c, _ = ip.packed
        return f"{a}.{b}.{c}.0"
    return str(IPv6Address(int(ip) >> 80 << 80))
