"""GeoIP lookups (geoip2, MODE_MMAP_EXT) and great-circle distances.

Private, reserved and unknown addresses give ``UNKNOWN`` rather than an
exception, because a location we cannot place is a signal, not a failure.
Without an ASN database the network prefix (IPv4 /24, IPv6 /48) stands in as the
level between an address and its country.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

from risk_engine.errors import GeoIPError
from risk_engine.privacy import truncate_ip

# Locations kept per locator (about 700 bytes each): addresses recur, a user's home,
# office and phone network, so most events skip the database and geoip2's records.
LOOKUP_CACHE_SIZE = 32768

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True, slots=True)
class Location:
    """Where an address is, as far as the databases know."""

    known: bool
    country: str | None = None
    subdivision: str | None = None
    city: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    accuracy_km: float = 0.0
    time_zone: str | None = None
    network: str = ""
    asn: int | None = None
    as_org: str | None = None
    is_anonymous: bool = False
    is_private: bool = False

    @property
    def has_coordinates(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    @property
    def label(self) -> str:
        """A short human name: "Oslo, NO", "NO" or "unknown location"."""
        if self.city and self.country:
            return f"{self.city}, {self.country}"
        return self.country or "unknown location"


def network_prefix(ip: IPAddress) -> str:
    """The address's network as a stand-in for its ASN: IPv4 /24, IPv6 /48.

    >>> from ipaddress import ip_address
    >>> network_prefix(ip_address("81.2.69.160"))
    '81.2.69.0/24'
    >>> network_prefix(ip_address("2001:db8:1:2::1"))
    '2001:db8:1::/48'
    """
    return f"{truncate_ip(ip)}/24" if ip.version == 4 else f"{truncate_ip(ip)}/48"


def network_key(ip: IPAddress) -> str:
    """``network_prefix`` of the address, an IPv4-mapped IPv6 one taken as its IPv4 form.

    >>> from ipaddress import ip_address
    >>> network_key(ip_address("::ffff:81.2.69.160"))
    '81.2.69.0/24'
    """
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return network_prefix(ip)


def default_city_database() -> Path:
    """The GeoLite2 City database bundled by the PyPI package maxminddb-geolite2."""
    try:
        from _maxminddb_geolite2 import geolite2_database
    except ImportError as exc:  # pragma: no cover - a broken install
        raise GeoIPError(
            "maxminddb-geolite2 is not installed; it carries the default database"
        ) from exc
    return Path(geolite2_database())


def _open(path: Path, what: str) -> geoip2.database.Reader:
    if not path.is_file():
        raise GeoIPError(f"{what} database not found: {path}")
    try:
        return geoip2.database.Reader(str(path), mode=geoip2.database.MODE_MMAP_EXT)
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        raise GeoIPError(f"{what} database {path} is unreadable or corrupt: {exc}") from exc


def _open_records(path: Path, what: str) -> maxminddb.Reader:
    """The database's own reader, which geoip2 wraps: records as plain dicts.

    The City lookup reads its few fields from the record itself: building
    geoip2's model objects (every record, name and locale an object) made a lookup
    that misses the cache cost 55 us here, against 22 us without them.
    """
    if not path.is_file():
        raise GeoIPError(f"{what} database not found: {path}")
    try:
        return maxminddb.open_database(str(path), maxminddb.MODE_MMAP_EXT)
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        raise GeoIPError(f"{what} database {path} is unreadable or corrupt: {exc}") from exc


def _open_kind(path: Path, what: str, kind: str) -> geoip2.database.Reader:
    """Open an extra database and check its type now, not on every lookup."""
    reader = _open(path, what)
    database_type = reader.metadata().database_type
    if kind not in database_type:
        reader.close()
        raise GeoIPError(f"{path} is a {database_type} database, not a {what} database")
    return reader


# What a corrupt database or record raises inside maxminddb and geoip2.
_CORRUPT = (maxminddb.InvalidDatabaseError, ValueError, KeyError, TypeError, AttributeError)


def _coordinate(value: Any, bound: float) -> float | None:
    """A latitude or longitude from a record: None, or a finite number within +-bound."""
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number) or abs(number) > bound:
        raise ValueError(f"coordinate {value!r} is out of range")
    return number


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _unusable(ip: IPAddress) -> bool:
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_link_local
        or ip.is_unspecified
    )


class GeoLocator:
    """Looks up addresses in a City database and, when configured, ASN and Anonymous-IP ones.

    A database that cannot be read at start-up raises ``GeoIPError`` naming the file;
    a corrupt record met later raises ``GeoIPError`` from ``lookup`` so that the
    engine can answer in its degraded mode.
    """

    def __init__(
        self,
        city_db: Path | None = None,
        *,
        asn_db: Path | None = None,
        anonymous_db: Path | None = None,
        cache_size: int = LOOKUP_CACHE_SIZE,
    ) -> None:
        self.city_path = city_db or default_city_database()
        # Kept so that another process (the parallel backtest) can open the same set.
        self.asn_path, self.anonymous_path = asn_db, anonymous_db
        self._city = _open_records(self.city_path, "GeoIP City")
        kind = self._city.metadata().database_type
        if "City" not in kind:
            self._city.close()
            raise GeoIPError(f"{self.city_path} is a {kind} database, not a City database")
        self._asn = _open_kind(asn_db, "GeoIP ASN", "ASN") if asn_db else None
        self._anon = (
            _open_kind(anonymous_db, "GeoIP Anonymous-IP", "Anonymous-IP") if anonymous_db else None
        )
        self._probe()
        # The databases never change under a locator, so a location is a pure function
        # of the address; failures (GeoIPError) are not cached and are raised again.
        self._cached_lookup = lru_cache(maxsize=cache_size)(self._lookup)

    def _probe(self) -> None:
        """Read a few records now so that a broken search tree fails at start-up."""
        for sample in ("81.2.69.160", "8.8.8.8", "2001:4860:4860::8888"):
            try:
                self._city.get(sample)
            except _CORRUPT as exc:
                raise GeoIPError(f"GeoIP City database {self.city_path} is corrupt: {exc}") from exc

    @property
    def build_epoch(self) -> int:
        return int(self._city.metadata().build_epoch)

    @property
    def description(self) -> str:
        meta = self._city.metadata()
        return f"{meta.database_type} built {meta.build_epoch}"

    def lookup(self, ip: IPAddress) -> Location:
        """Locate one address; unknown, private and reserved ones give ``known=False``."""
        return self._cached_lookup(ip)

    def network_of(self, ip: IPAddress) -> str:
        """``lookup(ip).network``, without the City lookup when there is no ASN database.

        Without one, the network is the address's prefix whatever the City database
        holds, so a caller that needs only the network (the parallel backtest's
        scan) pays no lookup. Raises GeoIPError as ``lookup`` does.
        """
        if self._asn is None:
            return network_key(ip)
        return self.lookup(ip).network

    def _lookup(self, ip: IPAddress) -> Location:
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        prefix = network_prefix(ip)
        if _unusable(ip):
            return Location(known=False, network=prefix, is_private=True)
        try:
            record: Any = self._city.get(ip)
            if record is None:
                return Location(known=False, network=prefix)
            # The fields geoip2's City model gives (names in its default locale, "en"),
            # all read now: a malformed record must fail here, as a GeoIPError.
            loc = record.get("location") or {}
            latitude = _coordinate(loc.get("latitude"), 90.0)
            longitude = _coordinate(loc.get("longitude"), 180.0)
            accuracy_km = float(loc.get("accuracy_radius") or 0.0)
            if not math.isfinite(accuracy_km) or accuracy_km < 0.0:
                raise ValueError(f"accuracy radius {loc.get('accuracy_radius')!r} is out of range")
            country = _text((record.get("country") or {}).get("iso_code"))
            subdivisions = record.get("subdivisions") or ()
            subdivision = _text(subdivisions[-1].get("iso_code")) if subdivisions else None
            city = _text(((record.get("city") or {}).get("names") or {}).get("en"))
            time_zone = _text(loc.get("time_zone"))
        except _CORRUPT as exc:
            raise GeoIPError(f"GeoIP lookup of {ip} failed: corrupt record ({exc})") from exc
        asn, org, network = self._asn_of(ip, prefix)
        return Location(
            known=latitude is not None and longitude is not None,
            country=country,
            subdivision=subdivision,
            city=city,
            latitude=latitude,
            longitude=longitude,
            accuracy_km=accuracy_km,
            time_zone=time_zone,
            network=network,
            asn=asn,
            as_org=org,
            is_anonymous=self._anonymous(ip),
        )

    def _asn_of(self, ip: IPAddress, prefix: str) -> tuple[int | None, str | None, str]:
        if self._asn is None:
            return None, None, prefix
        try:
            rec: Any = self._asn.asn(ip)
            number = rec.autonomous_system_number
            if number is None:
                return None, None, prefix
            asn, org = int(number), _text(rec.autonomous_system_organization)
        except geoip2.errors.AddressNotFoundError:
            return None, None, prefix
        except _CORRUPT as exc:
            raise GeoIPError(f"GeoIP ASN lookup of {ip} failed: {exc}") from exc
        return asn, org, f"AS{asn}"

    def _anonymous(self, ip: IPAddress) -> bool:
        if self._anon is None:
            return False
        try:
            rec: Any = self._anon.anonymous_ip(ip)
        except geoip2.errors.AddressNotFoundError:
            return False
        except _CORRUPT as exc:
            raise GeoIPError(f"GeoIP Anonymous-IP lookup of {ip} failed: {exc}") from exc
        return bool(
            rec.is_anonymous or rec.is_anonymous_vpn or rec.is_public_proxy or rec.is_tor_exit_node
        )

    def close(self) -> None:
        self._cached_lookup.cache_clear()
        for reader in (self._city, self._asn, self._anon):
            if reader is not None:
                reader.close()
