"""Shared plumbing of the simulator: the clock, the event buffer and small samplers."""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

DAY = 86_400
HOUR = 3_600

# (timestamp, sequence, event body, attack type, scenario, context): the sequence keeps
# the sort stable and deterministic when two events share a second.
Pending = tuple[int, int, dict[str, Any], str | None, str | None, str | None]


class Clock:
    """Simulation window and local-day arithmetic per IANA time zone."""

    def __init__(self, start: datetime, days: int) -> None:
        self.start_ts = int(start.timestamp())
        self.end_ts = self.start_ts + days * DAY
        self.days = days
        self.base_date = start.astimezone(UTC).date()
        self._zones: dict[str, ZoneInfo] = {}
        self._midnights: dict[tuple[str, int], int] = {}

    def zone(self, name: str) -> ZoneInfo:
        """The ZoneInfo of a zone name, cached."""
        zone = self._zones.get(name)
        if zone is None:
            zone = self._zones[name] = ZoneInfo(name)
        return zone

    def local_midnight(self, zone: str, day: int) -> int:
        """Epoch seconds of 00:00 local time on simulation day `day` in `zone`."""
        key = (zone, day)
        value = self._midnights.get(key)
        if value is None:
            date = self.base_date + timedelta(days=day)
            local = datetime(date.year, date.month, date.day, tzinfo=self.zone(zone))
            value = self._midnights[key] = int(local.timestamp())
        return value

    def utc_midnight(self, day: int) -> int:
        """Epoch seconds of 00:00 UTC on simulation day `day`."""
        date = self.base_date + timedelta(days=day)
        return int(datetime(date.year, date.month, date.day, tzinfo=UTC).timestamp())

    def weekday(self, day: int) -> int:
        """Day of the week of simulation day `day` (Monday is 0)."""
        return (self.base_date + timedelta(days=day)).weekday()

    def local_hour(self, zone: str, day: int, ts: int) -> float:
        """Hours since local midnight of `day` (can exceed 24 or be negative)."""
        return (ts - self.local_midnight(zone, day)) / HOUR

    def inside(self, ts: int, duration: int = 0) -> bool:
        """Whether [ts, ts + duration] lies inside the simulation window."""
        return self.start_ts <= ts and ts + duration < self.end_ts


class Emitter:
    """Buffers generated events and releases them in timestamp order."""

    def __init__(self) -> None:
        self.pending: list[Pending] = []
        self.seq = 0
        # Per user, the (device id, address) pairs of the legitimate events at home so
        # far: what malware on the victim's own device at home can pass for. Home
        # only, so a user's few devices and home addresses bound it (a carrier
        # address a session would grow it with the log).
        self.habits: dict[str, set[tuple[str, str]]] = {}

    def add(
        self,
        ts: int,
        body: dict[str, Any],
        attack: str | None = None,
        scenario: str | None = None,
        context: str | None = None,
    ) -> None:
        """Queue one event body (without id and timestamp, filled in on release).

        ``context`` says where and how a legitimate event happened (home, cellular,
        vpn, ...: ``world.CONTEXTS``); attacks have none.
        """
        self.seq += 1
        self.pending.append((ts, self.seq, body, attack, scenario, context))
        if attack is None and context == "home":
            device = body.get("device") or {}
            self.habits.setdefault(body["user_id"], set()).add((device.get("id", ""), body["ip"]))

    def habitual(self, user_id: str, device: dict[str, str], ip: str) -> bool:
        """Whether the user's own events at home came from this device id at this address."""
        return (device.get("id", ""), ip) in self.habits.get(user_id, ())

    def release(self, before: int | None) -> list[Pending]:
        """Sorted events with a timestamp before `before` (all when None); keeps the rest."""
        self.pending.sort()
        if before is None:
            ready, self.pending = self.pending, []
            return ready
        cut = bisect_left(self.pending, before, key=_ts_of)
        ready, self.pending = self.pending[:cut], self.pending[cut:]
        return ready


def _ts_of(item: Pending) -> int:
    return item[0]


def body(
    user_id: str,
    action: str,
    ip: str,
    session_id: str | None,
    device: dict[str, str] | None,
) -> dict[str, Any]:
    """An event body in contract field order; event_id and timestamp come on release."""
    event: dict[str, Any] = {
        "event_id": "",
        "timestamp": "",
        "user_id": user_id,
        "action": action,
        "ip": ip,
    }
    if session_id is not None:
        event["session_id"] = session_id
    if device is not None:
        event["device"] = device
    return event


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth's method; the rates here are small)."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def hex_id(rng: random.Random, bits: int = 64) -> str:
    """A random lowercase hex identifier."""
    return f"{rng.getrandbits(bits):0{bits // 4}x}"
