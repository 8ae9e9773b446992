"""The validated event: section 1 of the interface contract.

Timestamps become timezone-aware UTC, IPs are parsed, and every malformed field
is reported by name (``InvalidEventError.field``), in a log file with its line.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, cast

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from risk_engine.errors import InvalidEventError

KNOWN_ACTIONS: tuple[str, ...] = (
    "login",
    "view_account",
    "transfer",
    "add_payee",
    "change_password",
    "change_email",
    "change_mfa",
    "grant_role",
    "export_data",
    "create_api_key",
)

# RFC 3339 date-time: a full date, "T" (or space), a time and a mandatory offset.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)

ShortText = Annotated[str, Field(max_length=512)]

# The accepted timestamps, UTC: from EARLIEST up to (not including) LATEST. Local
# times in any zone stay representable, which they do not at years 1 and 9999.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
RANGE_TEXT = "from 1970-01-01T00:00:00Z up to (not including) 2100-01-01T00:00:00Z"


def _ip_address(value: Any) -> IPv4Address | IPv6Address:
    """pydantic's ``IPvAnyAddress``, with a dotted quad (most events) parsed by the C library.

    ``inet_pton`` accepts exactly the dotted quads ``IPv4Address`` does (four decimal
    octets up to 255, no leading zero, nothing around them): a tenth of its cost, and
    the same address. Anything else, IPv6 included, goes through pydantic's own type,
    errors and all.
    """
    if type(value) is str:
        try:
            return IPv4Address(socket.inet_pton(socket.AF_INET, value))
        except (OSError, ValueError):  # not a dotted quad; ValueError: a NUL inside
            pass
    # A class at run time; typing sees the union it stands for.
    any_address = cast(Callable[[Any], IPv4Address | IPv6Address], IPvAnyAddress)
    return any_address(value)


class Device(BaseModel):
    """What the application knows of the client device; every field optional."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    id: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    user_agent: Annotated[str, Field(max_length=2048)] | None = None
    platform: ShortText | None = None
    timezone: ShortText | None = None
    language: ShortText | None = None
    screen: ShortText | None = None


class Event(BaseModel):
    """One sensitive action reported by an application."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "event_id": "e-000123",
                    "timestamp": "2026-03-01T08:15:30Z",
                    "user_id": "u-42",
                    "action": "login",
                    "ip": "81.2.69.160",
                    "session_id": "s-1",
                    "device": {"id": "d-1", "user_agent": "Mozilla/5.0"},
                }
            ]
        },
    )

    event_id: Annotated[str, Field(min_length=1, max_length=128, strict=True)]
    timestamp: datetime
    user_id: Annotated[str, Field(min_length=1, max_length=256, strict=True)]
    action: Annotated[str, Field(min_length=1, max_length=128, strict=True)]
    ip: Annotated[
        IPv4Address | IPv6Address,
        PlainValidator(_ip_address),
        # pydantic names this format "ipvanyaddress", which no OpenAPI tool knows.
        WithJsonSchema({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}),
    ]
    session_id: Annotated[str, Field(min_length=1, max_length=256, strict=True)] | None = None
    device: Device | None = None
    amount: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", strict=True)] | None = None
    success: Annotated[bool, Field(strict=True)] = True
    payee: Annotated[str, Field(min_length=1, max_length=256, strict=True)] | None = Field(
        default=None,
        description="Optional extension: the payee or target of a money movement, "
        "bound into the step-up challenge digest.",
    )

    @field_validator("timestamp", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise ValueError("timestamp needs a timezone offset")
            return value
        if not isinstance(value, str) or not _RFC3339.match(value):
            raise ValueError("timestamp must be an RFC 3339 string such as 2026-03-01T08:15:30Z")
        return value

    @field_validator("timestamp", mode="after")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        try:
            utc = value.astimezone(UTC)
        except OverflowError:
            # 0001-01-01T00:00:00+01:00 is a valid string whose UTC time is not representable.
            utc = None
        if utc is None or not EARLIEST <= utc < LATEST:
            raise ValueError(f"timestamp must be {RANGE_TEXT}")
        return utc

    @field_validator("ip", mode="before")
    @classmethod
    def _ip_text(cls, value: Any) -> Any:
        if not isinstance(value, str | IPv4Address | IPv6Address):
            raise ValueError("ip must be a string holding an IPv4 or IPv6 address")
        return value

    @property
    def epoch(self) -> float:
        """The timestamp as seconds since the epoch."""
        return self.timestamp.timestamp()


# The common RFC 3339 form, which ``datetime.fromisoformat`` reads as pydantic does.
_PLAIN_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$")


def quick_epoch(value: Any) -> float | None:
    """``Event.epoch`` for a ``timestamp`` value, without validating an event; None
    when this shortcut cannot tell (another form, or out of range).

    For putting a log in time order before its events are read: whatever it gives
    is what the validated event's ``epoch`` is, whatever the event's other fields.
    """
    if not isinstance(value, str) or not _PLAIN_RFC3339.match(value):
        return None
    try:
        utc = datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    if not EARLIEST <= utc < LATEST:
        return None
    return utc.timestamp()


def _field_of(error: dict[str, Any]) -> str:
    # Keep the field path; union members and list indexes add parts that are no field.
    loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
    fields = set(Event.model_fields) | {f"device.{name}" for name in Device.model_fields}
    path = ""
    for part in loc:
        candidate = f"{path}.{part}" if path else part
        if candidate not in fields and path:
            break
        path = candidate
    return path or "event"


def invalid_event_from(exc: ValidationError, *, line: int | None = None) -> InvalidEventError:
    """Turn pydantic's errors into one InvalidEventError naming the first field."""
    errors = [
        {"field": _field_of(dict(e)), "message": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    first = errors[0]["field"] if errors else "event"
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    where = f"line {line}: " if line is not None else ""
    return InvalidEventError(f"{where}{summary}", field=first, line=line, errors=errors)


def parse_event(data: Any, *, line: int | None = None) -> Event:
    """Validate a decoded JSON value as an Event, raising InvalidEventError."""
    if not isinstance(data, dict):
        where = f"line {line}: " if line is not None else ""
        raise InvalidEventError(f"{where}an event must be a JSON object", field="event", line=line)
    try:
        return Event.model_validate(data)
    except ValidationError as exc:
        raise invalid_event_from(exc, line=line) from None


def parse_event_line(text: str | bytes, *, line: int | None = None) -> Event:
    """Parse one JSON Lines record into an Event, naming the line on failure."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        where = f"line {line}: " if line is not None else ""
        raise InvalidEventError(
            f"{where}not valid JSON ({exc})", field="event", line=line
        ) from None
    return parse_event(data, line=line)


def check_clock_skew(
    event: Event, now: float, *, max_future_s: float, max_past_s: float = 0.0
) -> None:
    """Refuse (InvalidEventError naming ``timestamp``) a live event too far from ``now``.

    Each bound is in seconds; 0 turns it off. Only the live service applies it:
    log files replay the past by design.
    """
    ahead = event.epoch - now
    if max_future_s and ahead > max_future_s:
        problem = f"{ahead:.0f} s ahead of the server clock (at most {max_future_s:g} s)"
    elif max_past_s and -ahead > max_past_s:
        problem = f"{-ahead:.0f} s behind the server clock (at most {max_past_s:g} s)"
    else:
        return
    message = f"timestamp is {problem}"
    raise InvalidEventError(
        f"timestamp: {message}",
        field="timestamp",
        errors=[{"field": "timestamp", "message": message, "type": "value_error"}],
    )


def utc_from_epoch(seconds: float) -> datetime:
    """The UTC datetime of an epoch timestamp."""
    return datetime.fromtimestamp(seconds, tz=UTC)
