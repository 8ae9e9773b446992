"""Stored profiles under faults: a checksum over their bytes, and the incidents a store meets.

A stored profile is ``crc32:<8 hex digits>:`` and the profile's JSON. A changed
byte (a flipped digit, a torn page) fails the checksum instead of being read as
a different history: the store quarantines the record (keeps it aside, logs and
counts it) and the user starts afresh. Records stored before the checksum (JSON
from the first byte) still read. CRC32 detects accidental damage, not forgery:
whoever can write the store can write the checksum too.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

from risk_engine.errors import ProfileStoreError

log = logging.getLogger("risk_engine.profiles")

_PREFIX = b"crc32:"
# "crc32:" + 8 hex digits + ":"
_HEADER_LEN = len(_PREFIX) + 9


class CorruptProfileError(ProfileStoreError):
    """A stored profile failed its checksum or cannot be read at all: quarantine it."""


def seal(payload: bytes) -> bytes:
    """``payload`` with its checksum in front, as the stores keep it."""
    return b"%s%08x:%s" % (_PREFIX, zlib.crc32(payload), payload)


def unseal(raw: bytes | str) -> bytes:
    """The payload of a stored record; CorruptProfileError when the checksum fails."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if not data.startswith(_PREFIX):
        # Stored before records carried a checksum (JSON starts with "{"), or damaged
        # in its very prefix: the JSON decoding tells those apart.
        return data
    header, payload = data[:_HEADER_LEN], data[_HEADER_LEN:]
    try:
        expected = int(header[len(_PREFIX) : -1], 16)
    except ValueError:
        expected = -1
    if header[-1:] != b":" or zlib.crc32(payload) != expected:
        raise CorruptProfileError("stored profile fails its checksum (the bytes were changed)")
    return payload


class Incidents:
    """What went wrong in a store without failing a call: logged, and told to listeners.

    Kinds: ``quarantined`` (a corrupt profile set aside, the user starts afresh),
    ``update_undone`` (a failed statement undid its own update, no other),
    ``update_lost`` (an update answered already did not reach the file).
    The service counts them (api/metrics.py).
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def listen(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def note(self, kind: str, message: str, *args: object, count: int = 1) -> None:
        log.error(message, *args)
        for listener in self._listeners:
            for _ in range(count):
                listener(kind)
