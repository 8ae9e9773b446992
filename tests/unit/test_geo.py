"""GeoIP lookups against small databases built here, broken databases, and distances."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from risk_engine.errors import GeoIPError
from risk_engine.features.common import EARTH_RADIUS_KM, haversine_km
from risk_engine.geo import GeoLocator, Location, network_key, network_prefix

SHARED = Path(__file__).parents[2] / "../shared/geoip-test"

# A latitude no real record uses: its encoded bytes mark the record to corrupt.
CORRUPT_MARKER = 12.3456789

CITY_RECORDS: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": {
        "city": {"geoname_id": 2643743, "names": {"en": "London"}},
        "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
        "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
        "location": {
            "latitude": 51.5142,
            "longitude": -0.0931,
            "accuracy_radius": 10,
            "time_zone": "Europe/London",
        },
    },
    "89.160.20.0/24": {
        "city": {"names": {"en": "Linköping"}},
        "country": {"iso_code": "SE"},
        "location": {
            "latitude": 58.4167,
            "longitude": 15.6167,
            "accuracy_radius": 76,
            "time_zone": "Europe/Stockholm",
        },
    },
    "216.160.83.0/24": {
        "city": {"names": {"en": "Milton"}},
        "country": {"iso_code": "US"},
        "location": {
            "latitude": 47.2513,
            "longitude": -122.3149,
            "accuracy_radius": 22,
            "time_zone": "America/Los_Angeles",
        },
    },
    "2a02:2000::/32": {
        "city": {"names": {"en": "Oslo"}},
        "country": {"iso_code": "NO"},
        "location": {
            "latitude": 59.9127,
            "longitude": 10.7461,
            "accuracy_radius": 20,
            "time_zone": "Europe/Oslo",
        },
    },
    # Country-level only: no coordinates to measure travel with.
    "175.16.199.0/24": {"country": {"iso_code": "CN"}},
}

ASN_RECORDS: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": {
        "autonomous_system_number": 20712,
        "autonomous_system_organization": "Andrews & Arnold Ltd",
    },
    "89.160.20.0/24": {
        "autonomous_system_number": 29518,
        "autonomous_system_organization": "Bredband2 AB",
    },
    "2a02:2000::/32": {
        "autonomous_system_number": 2119,
        "autonomous_system_organization": "Telenor Norge AS",
    },
}

ANONYMOUS_RECORDS: dict[str, dict[str, Any]] = {
    "89.160.20.0/24": {"is_anonymous": True, "is_anonymous_vpn": True},
    "216.160.83.0/24": {"is_anonymous": True, "is_tor_exit_node": True},
}


def write_db(path: Path, database_type: str, records: dict[str, Any]) -> Path:
    writer = MMDBWriter(
        ip_version=6, database_type=database_type, languages=["en"], ipv4_compatible=True
    )
    for network, record in records.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def dbs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("geoip")
    return {
        "city": write_db(root / "city.mmdb", "GeoIP2-City", CITY_RECORDS),
        "asn": write_db(root / "asn.mmdb", "GeoLite2-ASN", ASN_RECORDS),
        "anonymous": write_db(root / "anon.mmdb", "GeoIP2-Anonymous-IP", ANONYMOUS_RECORDS),
    }


@pytest.fixture
def full(dbs: dict[str, Path]) -> Iterator[GeoLocator]:
    geo = GeoLocator(dbs["city"], asn_db=dbs["asn"], anonymous_db=dbs["anonymous"])
    yield geo
    geo.close()


@pytest.fixture
def city_only(dbs: dict[str, Path]) -> Iterator[GeoLocator]:
    geo = GeoLocator(dbs["city"])
    yield geo
    geo.close()


# -- lookups ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "city", "country", "lat", "lon", "radius", "tz"),
    [
        ("81.2.69.160", "London", "GB", 51.5142, -0.0931, 10.0, "Europe/London"),
        ("89.160.20.112", "Linköping", "SE", 58.4167, 15.6167, 76.0, "Europe/Stockholm"),
        ("216.160.83.56", "Milton", "US", 47.2513, -122.3149, 22.0, "America/Los_Angeles"),
        ("2a02:2000:1:2::3", "Oslo", "NO", 59.9127, 10.7461, 20.0, "Europe/Oslo"),
    ],
)
def test_lookup_returns_the_record(
    city_only: GeoLocator,
    ip: str,
    city: str,
    country: str,
    lat: float,
    lon: float,
    radius: float,
    tz: str,
) -> None:
    loc = city_only.lookup(ip_address(ip))
    assert loc.known
    assert loc.city == city
    assert loc.country == country
    assert loc.latitude == pytest.approx(lat)
    assert loc.longitude == pytest.approx(lon)
    assert loc.accuracy_km == radius
    assert loc.time_zone == tz
    assert loc.has_coordinates
    assert loc.label == f"{city}, {country}"
    assert not loc.is_private


def test_subdivision_is_read(city_only: GeoLocator) -> None:
    assert city_only.lookup(ip_address("81.2.69.160")).subdivision == "ENG"


def test_country_only_record_is_not_a_known_place(city_only: GeoLocator) -> None:
    loc = city_only.lookup(ip_address("175.16.199.1"))
    assert loc.country == "CN"
    assert not loc.known
    assert not loc.has_coordinates
    assert loc.label == "CN"


def test_asn_database_gives_the_as_as_network(full: GeoLocator) -> None:
    loc = full.lookup(ip_address("89.160.20.112"))
    assert loc.network == "AS29518"
    assert loc.asn == 29518
    assert loc.as_org == "Bredband2 AB"
    v6 = full.lookup(ip_address("2a02:2000::1"))
    assert v6.network == "AS2119" and v6.asn == 2119


def test_without_asn_database_the_prefix_is_the_network(city_only: GeoLocator) -> None:
    assert city_only.lookup(ip_address("89.160.20.112")).network == "89.160.20.0/24"
    v6 = city_only.lookup(ip_address("2a02:2000:1:2::3"))
    assert v6.network == "2a02:2000:1::/48"
    assert v6.asn is None and v6.as_org is None


def test_address_missing_from_asn_database_falls_back_to_prefix(full: GeoLocator) -> None:
    loc = full.lookup(ip_address("216.160.83.56"))
    assert loc.known
    assert loc.network == "216.160.83.0/24"
    assert loc.asn is None


@pytest.mark.parametrize(
    ("ip", "anonymous"),
    [("89.160.20.112", True), ("216.160.83.56", True), ("81.2.69.160", False)],
)
def test_anonymous_ip_flag(
    full: GeoLocator, city_only: GeoLocator, ip: str, anonymous: bool
) -> None:
    assert full.lookup(ip_address(ip)).is_anonymous is anonymous
    # Without the Anonymous-IP database nothing is flagged.
    assert city_only.lookup(ip_address(ip)).is_anonymous is False


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.10.20",
        "224.0.0.251",
        "0.0.0.0",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "2001:db8::1",
        "::ffff:192.168.1.1",
    ],
)
def test_private_and_reserved_addresses_are_unknown(full: GeoLocator, ip: str) -> None:
    loc = full.lookup(ip_address(ip))
    assert loc.known is False
    assert loc.is_private is True
    assert loc.latitude is None and loc.country is None
    assert loc.network  # still a prefix to count bursts by


@pytest.mark.parametrize("ip", ["1.1.1.1", "8.8.8.8", "2001:4860:4860::8888", "2c0f:f000::1"])
def test_addresses_missing_from_the_database_are_unknown(full: GeoLocator, ip: str) -> None:
    loc = full.lookup(ip_address(ip))
    assert loc.known is False
    assert loc.is_private is False
    assert loc.network == network_prefix(ip_address(ip))
    assert loc.label == "unknown location"


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(full: GeoLocator) -> None:
    mapped = full.lookup(ip_address("::ffff:81.2.69.160"))
    plain = full.lookup(ip_address("81.2.69.160"))
    assert mapped == plain
    assert mapped.city == "London"
    assert mapped.network == "AS20712"
    no_asn = full.lookup(ip_address("::ffff:216.160.83.56"))
    assert no_asn.network == "216.160.83.0/24"


def test_metadata_is_exposed(city_only: GeoLocator) -> None:
    assert "GeoIP2-City" in city_only.description
    assert city_only.build_epoch > 0


# -- broken databases -------------------------------------------------------------------


def test_missing_database_file_is_a_geoip_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.mmdb"
    with pytest.raises(GeoIPError, match="not found") as caught:
        GeoLocator(path)
    assert str(path) in caught.value.message


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 64, bytes(range(256)) * 40, b"\xab\xcd\xefMaxMind.com" + b"\x01" * 100],
    ids=["empty", "zeros", "garbage", "fake-metadata-marker"],
)
def test_garbage_file_is_a_geoip_error_at_construction(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.mmdb"
    path.write_bytes(content)
    with pytest.raises(GeoIPError) as caught:
        GeoLocator(path)
    assert str(path) in caught.value.message
    assert caught.value.status_code == 503


def test_non_city_database_as_city_database_is_refused(dbs: dict[str, Path]) -> None:
    with pytest.raises(GeoIPError, match="not a City database"):
        GeoLocator(dbs["asn"])


@pytest.mark.parametrize(
    ("role", "wrong"),
    [("asn_db", "city"), ("anonymous_db", "asn"), ("asn_db", "anonymous")],
)
def test_wrong_kind_of_extra_database_is_refused_at_construction(
    dbs: dict[str, Path], role: str, wrong: str
) -> None:
    """A misconfigured ASN or Anonymous-IP database must fail start-up, not every lookup."""
    with pytest.raises(GeoIPError) as caught:
        GeoLocator(dbs["city"], **{role: dbs[wrong]})
    assert str(dbs[wrong]) in caught.value.message


def test_garbage_extra_database_is_refused(dbs: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "asn.mmdb"
    bad.write_bytes(b"not a database" * 10)
    with pytest.raises(GeoIPError, match="ASN"):
        GeoLocator(dbs["city"], asn_db=bad)


@pytest.mark.parametrize(
    "name",
    ["GeoIP2-City-Test-Broken-Double-Format.mmdb", "MaxMind-DB-test-broken-search-tree-24.mmdb"],
)
def test_shared_broken_databases_are_refused_at_construction(name: str) -> None:
    path = (SHARED / name).resolve()
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it lives beside the project checkout)")
    with pytest.raises(GeoIPError) as caught:
        GeoLocator(path)
    assert name in caught.value.message


def test_shared_test_databases_give_their_documented_answers() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it lives beside the project checkout)")
    geo = GeoLocator(
        SHARED / "GeoLite2-City-Test.mmdb",
        asn_db=SHARED / "GeoLite2-ASN-Test.mmdb",
        anonymous_db=SHARED / "GeoIP2-Anonymous-IP-Test.mmdb",
    )
    try:
        linkoping = geo.lookup(ip_address("89.160.20.112"))
        assert (linkoping.city, linkoping.country, linkoping.network) == (
            "Linköping",
            "SE",
            "AS29518",
        )
        assert geo.lookup(ip_address("216.160.83.56")).network == "AS209"
        assert geo.lookup(ip_address("81.2.69.160")).city == "London"
    finally:
        geo.close()


@pytest.mark.parametrize("where", [0.0, 0.5, 0.95], ids=["tree-start", "tree-middle", "tree-end"])
def test_city_database_with_a_broken_search_tree_is_a_geoip_error(
    tmp_path: Path, where: float
) -> None:
    """Like MaxMind-DB-test-broken-search-tree-24, but a City database, so the tree is read."""
    path = write_db(tmp_path / "city.mmdb", "GeoIP2-City", CITY_RECORDS)
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
        tree_bytes = meta.node_count * meta.record_size // 4  # two records per node
    assert tree_bytes > 60
    data = bytearray(path.read_bytes())
    at = int((tree_bytes - 30) * where)
    data[at : at + 30] = b"\xff" * 30
    path.write_bytes(bytes(data))
    try:
        geo = GeoLocator(path)
    except GeoIPError as exc:
        assert "corrupt" in exc.message
        return
    try:
        with pytest.raises(GeoIPError):
            for ip in ("81.2.69.160", "89.160.20.112", "216.160.83.56", "2a02:2000::1"):
                geo.lookup(ip_address(ip))
    finally:
        geo.close()


def _corrupted_city_db(tmp_path: Path) -> Path:
    records = {
        "81.2.69.0/24": CITY_RECORDS["81.2.69.0/24"],
        "100.64.0.0/10": {},  # (never looked up: shared address space)
        "45.10.0.0/16": {
            "country": {"iso_code": "DE"},
            "location": {"latitude": CORRUPT_MARKER, "longitude": 8.0, "accuracy_radius": 50},
        },
    }
    path = write_db(tmp_path / "city.mmdb", "GeoIP2-City", records)
    data = bytearray(path.read_bytes())
    # A double is a control byte 0x68 (type 3, size 8) and 8 bytes; claim size 4 instead.
    at = data.find(b"\x68" + struct.pack(">d", CORRUPT_MARKER))
    assert at > 0
    data[at] = 0x64
    path.write_bytes(bytes(data))
    return path


def test_corrupt_record_met_at_lookup_is_a_geoip_error(tmp_path: Path) -> None:
    geo = GeoLocator(_corrupted_city_db(tmp_path))
    try:
        assert geo.lookup(ip_address("81.2.69.160")).city == "London"
        with pytest.raises(GeoIPError, match=r"45\.10\.1\.1"):
            geo.lookup(ip_address("45.10.1.1"))
        # The reader is still usable afterwards.
        assert geo.lookup(ip_address("81.2.69.161")).city == "London"
    finally:
        geo.close()


MALFORMED_RECORDS: dict[str, Any] = {
    "city-not-a-map": {"city": "London", "location": {"latitude": 1.0, "longitude": 2.0}},
    "location-a-list": {"location": [1.0, 2.0]},
    "subdivisions-a-map": {
        "subdivisions": {"iso_code": "X"},
        "location": {"latitude": 1.0, "longitude": 2.0},
    },
    "radius-text": {"location": {"latitude": 1.0, "longitude": 2.0, "accuracy_radius": "far"}},
    "radius-map": {"location": {"latitude": 1.0, "longitude": 2.0, "accuracy_radius": {"a": 1}}},
    "latitude-text": {"location": {"latitude": "north", "longitude": 2.0}},
    "latitude-out-of-range": {"location": {"latitude": 123.0, "longitude": 2.0}},
    "longitude-nan": {"location": {"latitude": 1.0, "longitude": math.nan}},
    "country-names-a-number": {
        "country": {"iso_code": "GB", "names": 7},
        "city": {"names": 7},
        "location": {"latitude": 1.0, "longitude": 2.0},
    },
    "record-a-string": "just a string",
}


@pytest.mark.parametrize("kind", list(MALFORMED_RECORDS))
def test_malformed_record_is_a_geoip_error_never_another_exception(
    tmp_path: Path, kind: str
) -> None:
    """The engine degrades on GeoIPError; any other exception type would be a 500."""
    path = write_db(
        tmp_path / "city.mmdb",
        "GeoIP2-City",
        {"81.2.69.0/24": CITY_RECORDS["81.2.69.0/24"], "45.10.0.0/16": MALFORMED_RECORDS[kind]},
    )
    geo = GeoLocator(path)
    try:
        with pytest.raises(GeoIPError):
            geo.lookup(ip_address("45.10.1.1"))
    finally:
        geo.close()


def test_default_bundled_database_opens() -> None:
    geo = GeoLocator()
    try:
        assert "GeoLite2" in geo.description
        assert "City" in geo.description
        google = geo.lookup(ip_address("8.8.8.8"))
        assert google.known and google.country == "US"
        assert geo.lookup(ip_address("10.1.2.3")).known is False
    finally:
        geo.close()


# -- distances --------------------------------------------------------------------------


def test_haversine_known_distances() -> None:
    assert haversine_km(59.91, 10.75, 51.51, -0.13) == pytest.approx(1153, abs=2)  # Oslo-London
    assert haversine_km(40.71, -74.01, 35.68, 139.69) == pytest.approx(10850, rel=0.01)  # NY-Tokyo
    assert haversine_km(90.0, 0.0, -90.0, 0.0) == pytest.approx(math.pi * EARTH_RADIUS_KM)


def test_network_prefix() -> None:
    assert network_prefix(ip_address("81.2.69.160")) == "81.2.69.0/24"
    assert network_prefix(ip_address("2001:db8:1:2::1")) == "2001:db8:1::/48"


@given(st.ip_addresses())
def test_network_prefix_is_the_standard_librarys_network(ip: IPv4Address | IPv6Address) -> None:
    # The hand-made mask must name exactly the network ipaddress itself would.
    bits = 24 if ip.version == 4 else 48
    assert network_prefix(ip) == str(ip_network(f"{ip}/{bits}", strict=False))


def test_location_label() -> None:
    assert Location(known=True, country="NO", city="Oslo").label == "Oslo, NO"
    assert Location(known=True, country="NO").label == "NO"
    assert Location(known=False).label == "unknown location"


lat = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)
lon = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)
HALF_CIRCUMFERENCE = math.pi * EARTH_RADIUS_KM


@settings(max_examples=300, deadline=None)
@given(lat, lon, lat, lon)
def test_haversine_symmetric_non_negative_and_bounded(
    a1: float, o1: float, a2: float, o2: float
) -> None:
    d = haversine_km(a1, o1, a2, o2)
    # Near antipodes asin amplifies rounding to some 1e-4 km: compare to the metre.
    assert d == pytest.approx(haversine_km(a2, o2, a1, o1), abs=1e-3)
    assert 0.0 <= d <= HALF_CIRCUMFERENCE + 1e-9


@settings(max_examples=200, deadline=None)
@given(lat, lon)
def test_haversine_zero_for_the_same_point(a: float, o: float) -> None:
    assert haversine_km(a, o, a, o) == 0.0


@settings(max_examples=300, deadline=None)
@given(lat, lon, lat, lon, lat, lon)
def test_haversine_triangle_inequality(
    a1: float, o1: float, a2: float, o2: float, a3: float, o3: float
) -> None:
    direct = haversine_km(a1, o1, a3, o3)
    via = haversine_km(a1, o1, a2, o2) + haversine_km(a2, o2, a3, o3)
    assert direct <= via + 1e-3


# -- the network alone (the parallel backtest's scan) -------------------------------------

# Addresses of every kind the records above distinguish, with and without an AS.
NETWORK_SAMPLES = (
    "81.2.69.160",
    "89.160.20.112",
    "216.160.83.56",
    "2a02:2000::1",
    "45.10.1.1",
    "10.1.2.3",
    "127.0.0.1",
    "::1",
    "198.51.100.7",
)


def _mapped(ip: IPv4Address) -> IPv6Address:
    return IPv6Address(f"::ffff:{ip}")


@settings(max_examples=200, deadline=None)
@given(
    ip=st.one_of(
        st.sampled_from(NETWORK_SAMPLES).map(ip_address),
        st.sampled_from([a for a in NETWORK_SAMPLES if ":" not in a]).map(
            lambda a: _mapped(IPv4Address(a))
        ),
        st.ip_addresses(),
        st.ip_addresses(v=4).map(_mapped),
    )
)
def test_network_of_is_the_lookups_network(
    dbs: dict[str, Path], ip: IPv4Address | IPv6Address
) -> None:
    for geo in (GeoLocator(dbs["city"]), GeoLocator(dbs["city"], asn_db=dbs["asn"])):
        try:
            assert geo.network_of(ip) == geo.lookup(ip).network
        finally:
            geo.close()


def test_network_of_makes_no_city_lookup_without_an_asn_database(tmp_path: Path) -> None:
    # Its record for 45.10.1.1 is corrupt: a lookup fails, the network is still known.
    geo = GeoLocator(_corrupted_city_db(tmp_path))
    try:
        with pytest.raises(GeoIPError):
            geo.lookup(ip_address("45.10.1.1"))
        assert geo.network_of(ip_address("45.10.1.1")) == "45.10.1.0/24"
        assert geo.network_of(ip_address("::ffff:45.10.1.1")) == "45.10.1.0/24"
    finally:
        geo.close()


def test_network_key_maps_ipv4_in_ipv6_to_its_ipv4_prefix() -> None:
    assert network_key(ip_address("::ffff:81.2.69.160")) == "81.2.69.0/24"
    assert network_key(ip_address("81.2.69.160")) == network_prefix(ip_address("81.2.69.160"))
    assert network_key(ip_address("2a02:2000::1")) == "2a02:2000::/48"
