"""The validated event (contract section 1): what is accepted, and how rejects are named."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk_engine.errors import InvalidEventError
from risk_engine.events import EARLIEST, LATEST, Event, parse_event, parse_event_line, quick_epoch
from risk_engine.features.observation import zone

BASE: dict[str, Any] = {
    "event_id": "e-000123",
    "timestamp": "2026-03-01T08:15:30Z",
    "user_id": "u-42",
    "action": "login",
    "ip": "81.2.69.160",
}


def with_(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


# -- valid events -----------------------------------------------------------------------


def test_minimal_event_has_defaults_for_optional_fields() -> None:
    event = parse_event(dict(BASE))
    assert event.event_id == "e-000123"
    assert event.user_id == "u-42"
    assert event.action == "login"
    assert event.session_id is None
    assert event.device is None
    assert event.amount is None
    assert event.currency is None
    assert event.success is True


def test_full_event_keeps_every_field() -> None:
    event = parse_event(
        with_(
            session_id="s-1",
            device={
                "id": "d-1",
                "user_agent": "Mozilla/5.0",
                "platform": "MacIntel",
                "timezone": "Europe/Oslo",
                "language": "nb-NO",
                "screen": "1440x900",
            },
            amount=125.5,
            currency="NOK",
            success=False,
        )
    )
    assert event.session_id == "s-1"
    assert event.device is not None
    assert event.device.id == "d-1"
    assert event.device.user_agent == "Mozilla/5.0"
    assert event.device.platform == "MacIntel"
    assert event.device.timezone == "Europe/Oslo"
    assert event.device.language == "nb-NO"
    assert event.device.screen == "1440x900"
    assert event.amount == 125.5
    assert event.currency == "NOK"
    assert event.success is False


def _timestamp_text() -> st.SearchStrategy[str]:
    """RFC 3339 timestamps in every spelling the contract allows, and near misses."""
    moments = st.datetimes(
        min_value=datetime(1969, 12, 30), max_value=datetime(2100, 1, 2), timezones=st.none()
    )
    offsets = st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "-11:00", "+14:00", ""])
    fractions = st.sampled_from(["", ".1", ".123", ".123456", ".1234567", ".123456789"])
    separators = st.sampled_from(["T", "t", " "])
    return st.one_of(
        st.builds(
            lambda m, sep, frac, off: m.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac + off,
            moments,
            separators,
            fractions,
            offsets,
        ),
        st.text(max_size=30),
    )


@given(_timestamp_text())
@settings(max_examples=400)
def test_quick_epoch_is_the_validated_events_epoch(text: str) -> None:
    """The shortcut that puts a log in time order never disagrees with the event."""
    quick = quick_epoch(text)
    try:
        epoch = parse_event(with_(timestamp=text)).epoch
    except InvalidEventError:
        assert quick is None
        return
    assert quick is None or quick == epoch


def test_quick_epoch_reads_the_usual_forms() -> None:
    assert quick_epoch("2026-03-01T08:15:30Z") == parse_event(dict(BASE)).epoch
    assert quick_epoch("2026-03-01T09:15:30.250+01:00") == 1772352930.25
    assert quick_epoch(1772352930) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T08:15:30Z", datetime(2026, 3, 1, 8, 15, 30, tzinfo=UTC)),
        ("2026-03-01T08:15:30+02:00", datetime(2026, 3, 1, 6, 15, 30, tzinfo=UTC)),
        ("2026-03-01T08:15:30-05:30", datetime(2026, 3, 1, 13, 45, 30, tzinfo=UTC)),
        ("2026-03-01T00:30:00+14:00", datetime(2026, 2, 28, 10, 30, tzinfo=UTC)),
        ("2026-03-01T08:15:30.250Z", datetime(2026, 3, 1, 8, 15, 30, 250000, tzinfo=UTC)),
        ("2026-03-01t08:15:30z", datetime(2026, 3, 1, 8, 15, 30, tzinfo=UTC)),
    ],
)
def test_timestamp_offsets_are_normalised_to_utc(text: str, expected: datetime) -> None:
    event = parse_event(with_(timestamp=text))
    assert event.timestamp == expected
    assert event.timestamp.utcoffset() == timedelta(0)
    assert event.epoch == expected.timestamp()


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("81.2.69.160", IPv4Address),
        ("2001:db8::1", IPv6Address),
        ("2a02:2000::1", IPv6Address),
        ("::ffff:81.2.69.160", IPv6Address),
    ],
)
def test_ipv4_and_ipv6_are_parsed(text: str, kind: type) -> None:
    event = parse_event(with_(ip=text))
    assert isinstance(event.ip, kind)
    assert event.ip == ip_address(text)


def _octet_text() -> st.SearchStrategy[str]:
    # Octets as written by people and by attackers: leading zeros, signs, spaces, hex.
    return st.one_of(
        st.integers(0, 300).map(str),
        st.from_regex(r"\A[0-9]{1,4}\Z"),
        st.sampled_from(["", " 1", "1 ", "+1", "-1", "0x1", "٣", "1\x00"]),
    )


@given(st.lists(_octet_text(), min_size=3, max_size=5).map(".".join) | st.text(max_size=20))
@settings(max_examples=400)
def test_addresses_parse_as_the_standard_library_parses_them(text: str) -> None:
    """The C library's fast path for dotted quads accepts and gives what ipaddress does."""
    try:
        expected = ip_address(text)
    except ValueError:
        with pytest.raises(InvalidEventError) as raised:
            parse_event(with_(ip=text))
        assert raised.value.field == "ip"
        return
    assert parse_event(with_(ip=text)).ip == expected


def test_unknown_top_level_fields_are_ignored() -> None:
    event = parse_event(with_(tenant="acme", risk_hint=0.9, nested={"a": [1, 2]}))
    assert event.event_id == "e-000123"
    assert "tenant" not in event.model_dump()


def test_unknown_device_fields_are_ignored() -> None:
    event = parse_event(with_(device={"id": "d-1", "battery": 0.5}))
    assert event.device is not None and event.device.id == "d-1"


def test_null_optional_fields_are_absent_fields() -> None:
    event = parse_event(with_(session_id=None, device=None, amount=None, currency=None))
    assert event.session_id is None and event.device is None and event.amount is None


def test_empty_device_object_is_a_device_with_nothing_known() -> None:
    event = parse_event(with_(device={}))
    assert event.device is not None
    assert event.device.id is None and event.device.user_agent is None


def test_integer_amount_is_accepted_as_a_number() -> None:
    assert parse_event(with_(amount=5)).amount == 5.0
    assert parse_event(with_(amount=0)).amount == 0.0


def test_any_action_string_is_accepted() -> None:
    assert parse_event(with_(action="approve_invoice")).action == "approve_invoice"


def test_boundary_lengths_are_accepted() -> None:
    event = parse_event(with_(event_id="e" * 128, user_id="u" * 256))
    assert len(event.event_id) == 128 and len(event.user_id) == 256


# -- every contract field malformed in turn ---------------------------------------------

MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("event_id", {"event_id": ""}),
    ("event_id", {"event_id": "e" * 129}),
    ("event_id", {"event_id": 123}),
    ("event_id", {"event_id": None}),
    ("timestamp", {"timestamp": "2026-03-01T08:15:30"}),  # naive
    ("timestamp", {"timestamp": "2026-03-01"}),
    ("timestamp", {"timestamp": "01/03/2026 08:15"}),
    ("timestamp", {"timestamp": "yesterday"}),
    ("timestamp", {"timestamp": "2026-13-01T08:15:30Z"}),
    ("timestamp", {"timestamp": 1772352930}),
    ("timestamp", {"timestamp": 1772352930.5}),
    ("timestamp", {"timestamp": "0001-01-01T00:00:00+01:00"}),  # before year 1 in UTC
    ("timestamp", {"timestamp": "9999-12-31T23:59:59-01:00"}),  # after year 9999 in UTC
    ("timestamp", {"timestamp": "9999-12-31T23:59:59Z"}),  # past the accepted range
    ("timestamp", {"timestamp": "0001-01-01T00:00:00Z"}),
    ("timestamp", {"timestamp": "1969-12-31T23:59:59Z"}),
    ("timestamp", {"timestamp": "2100-01-01T00:00:00Z"}),
    ("timestamp", {"timestamp": "2100-01-01T00:30:00-01:00"}),
    ("user_id", {"user_id": ""}),
    ("user_id", {"user_id": "u" * 257}),
    ("user_id", {"user_id": 42}),
    ("action", {"action": ""}),
    ("action", {"action": 7}),
    ("action", {"action": None}),
    ("ip", {"ip": "999.1.1.1"}),
    ("ip", {"ip": "not-an-ip"}),
    ("ip", {"ip": ""}),
    ("ip", {"ip": 1360454048}),
    ("ip", {"ip": ["81.2.69.160"]}),
    ("session_id", {"session_id": ""}),
    ("session_id", {"session_id": 17}),
    ("device", {"device": "d-1"}),
    ("device", {"device": ["d-1"]}),
    ("device", {"device": 5}),
    ("device.id", {"device": {"id": 1}}),
    ("device.id", {"device": {"id": ""}}),
    ("device.user_agent", {"device": {"user_agent": 1}}),
    ("device.platform", {"device": {"platform": 1}}),
    ("device.timezone", {"device": {"timezone": 1}}),
    ("device.language", {"device": {"language": 1}}),
    ("device.screen", {"device": {"screen": 1}}),
    ("amount", {"amount": -0.01}),
    ("amount", {"amount": "12.50"}),
    ("amount", {"amount": True}),
    ("amount", {"amount": math.inf}),
    ("amount", {"amount": math.nan}),
    ("currency", {"currency": "eur"}),
    ("currency", {"currency": "EURO"}),
    ("currency", {"currency": "EU"}),
    ("currency", {"currency": 978}),
    ("success", {"success": "true"}),
    ("success", {"success": 1}),
    ("success", {"success": None}),
]


@pytest.mark.parametrize(
    ("field", "changes"), MALFORMED, ids=[f"{f}={c}"[:60] for f, c in MALFORMED]
)
def test_malformed_field_is_rejected_by_name(field: str, changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(with_(**changes))
    assert caught.value.field == field
    assert field in caught.value.message
    assert caught.value.status_code == 422


@pytest.mark.parametrize("field", ["event_id", "timestamp", "user_id", "action", "ip"])
def test_missing_required_field_is_named(field: str) -> None:
    data = dict(BASE)
    del data[field]
    with pytest.raises(InvalidEventError) as caught:
        parse_event(data)
    assert caught.value.field == field


@pytest.mark.parametrize("value", [[], "text", 3, None])
def test_an_event_must_be_an_object(value: Any) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(value)
    assert caught.value.field == "event"


def test_timestamp_as_aware_datetime_object_is_accepted_but_naive_is_not() -> None:
    aware = datetime(2026, 3, 1, 9, 15, 30, tzinfo=timezone(timedelta(hours=1)))
    assert parse_event(with_(timestamp=aware)).timestamp == datetime(
        2026, 3, 1, 8, 15, 30, tzinfo=UTC
    )
    with pytest.raises(InvalidEventError) as caught:
        parse_event(with_(timestamp=datetime(2026, 3, 1, 8, 15, 30)))
    assert caught.value.field == "timestamp"


def test_several_bad_fields_are_all_listed() -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event(with_(ip="nope", amount=-1))
    fields = {e["field"] for e in caught.value.errors}
    assert fields == {"ip", "amount"}


# -- JSON lines -------------------------------------------------------------------------


def test_parse_event_line_reads_bytes_and_text() -> None:
    raw = orjson.dumps(BASE)
    assert parse_event_line(raw).event_id == "e-000123"
    assert parse_event_line(raw.decode()).event_id == "e-000123"


@pytest.mark.parametrize("text", ['{"event_id": "e1",', "not json", "", "{'single': 1}"])
def test_bad_json_names_the_line(text: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event_line(text, line=17)
    assert caught.value.line == 17
    assert "line 17" in caught.value.message
    assert "JSON" in caught.value.message


def test_invalid_field_on_a_line_names_line_and_field() -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_event_line(orjson.dumps(with_(currency="usd")), line=3)
    assert caught.value.line == 3
    assert caught.value.field == "currency"
    assert caught.value.message.startswith("line 3: ")


# -- properties -------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40
)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_when = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2099, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9))]),
)
_device = st.fixed_dictionaries(
    {},
    optional={
        "id": _text,
        "user_agent": st.text(max_size=80),
        "platform": st.text(max_size=20),
        "timezone": st.sampled_from(["Europe/Oslo", "Asia/Tokyo", "UTC", "Bogus/Zone"]),
        "language": st.text(max_size=10),
        "screen": st.text(max_size=10),
    },
)


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    when = draw(_when)
    data: dict[str, Any] = {
        "event_id": draw(_text),
        "timestamp": when.isoformat().replace("+00:00", "Z"),
        "user_id": draw(_text),
        "action": draw(st.sampled_from(["login", "transfer", "change_mfa"]) | _text),
        "ip": draw(_ipv4 | _ipv6),
    }
    optional = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "session_id": _text,
                "device": _device,
                "amount": st.floats(min_value=0, max_value=1e12, allow_nan=False)
                | st.integers(min_value=0, max_value=10**9),
                "currency": st.from_regex(r"\A[A-Z]{3}\Z"),
                "success": st.booleans(),
                "unknown_extra": st.integers(min_value=-(2**63), max_value=2**63 - 1),
            },
        )
    )
    return {**data, **optional}


@settings(max_examples=150, deadline=None)
@given(valid_events())
def test_valid_events_round_trip_through_json(data: dict[str, Any]) -> None:
    event = parse_event_line(orjson.dumps(data))
    assert event.event_id == data["event_id"]
    assert event.user_id == data["user_id"]
    assert event.action == data["action"]
    assert event.ip == ip_address(data["ip"])
    assert event.timestamp == datetime.fromisoformat(data["timestamp"])
    assert event.timestamp.utcoffset() == timedelta(0)
    assert event.amount == data.get("amount")
    assert event.success == data.get("success", True)
    # The serialised event is itself a valid event, equal to the first.
    again = parse_event_line(event.model_dump_json())
    assert again == event


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    base=valid_events(),
    key=st.sampled_from([*Event.model_fields, "device"]),
    value=_json,
)
def test_any_field_value_either_validates_or_is_an_invalid_event(
    base: dict[str, Any], key: str, value: Any
) -> None:
    """Whatever a client sends, the answer is an Event or InvalidEventError, never a crash."""
    try:
        parse_event({**base, key: value})
    except InvalidEventError as exc:
        assert exc.field is not None


# The zones furthest from UTC, where years 1 and 9999 overflowed (issue 15).
_EXTREME_ZONES = ("Pacific/Kiritimati", "Etc/GMT+12", "Asia/Tokyo", "America/New_York")
_OFFSETS = [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12))]


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(_OFFSETS),
    )
    | st.sampled_from([EARLIEST, LATEST - timedelta(microseconds=1), LATEST]),
)
def test_any_calendar_timestamp_is_refused_by_name_or_local_anywhere(when: datetime) -> None:
    """Accepted timestamps lie in the stated range, where every zone's local time exists."""
    try:
        event = parse_event(with_(timestamp=when.isoformat()))
    except InvalidEventError as exc:
        assert exc.field == "timestamp"
        assert not EARLIEST <= when < LATEST
        return
    assert EARLIEST <= event.timestamp < LATEST
    for name in _EXTREME_ZONES:
        tz = zone(name)
        assert tz is not None
        assert datetime.fromtimestamp(event.epoch, tz).year in range(1969, 2101)
