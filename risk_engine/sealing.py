"""Sealing personal fields under a per-user data key, so that erasure can shred them.

Append-only logs (the hash-chained audit log, the feedback file) cannot delete a
user's lines without breaking the chain, so they keep a user's personal fields
encrypted (AES-256-GCM) under a random key that lives only in the user's
profile. Erasing the profile destroys the key: the lines stay byte for byte, the
chain still verifies, and what they sealed can no longer be read by anyone.

A sealed record carries its owner's ``ref`` (a random pseudonym, not derived
from the user id) in the clear, so that a holder of the keys (training, with the
store) finds the key that opens it, and ``sealed``: the personal fields as one
AES-GCM message, base64, with the record's non-personal fields as associated
data, so a sealed blob cannot be moved to another record.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_NONCE_BYTES = 12


def new_ref() -> str:
    """A fresh random pseudonym for a profile."""
    return "r-" + os.urandom(12).hex()


def new_data_key() -> str:
    """A fresh random AES-256 key, hex (the form profiles keep)."""
    return os.urandom(KEY_BYTES).hex()


def _bound(associated: str) -> bytes:
    return associated.encode()


def seal(key_hex: str, fields: Mapping[str, Any], associated: str) -> str:
    """``fields`` as JSON encrypted under the key, base64: nonce then ciphertext and tag."""
    nonce = os.urandom(_NONCE_BYTES)
    box = AESGCM(bytes.fromhex(key_hex))
    cipher = box.encrypt(nonce, orjson.dumps(dict(fields)), _bound(associated))
    return base64.b64encode(nonce + cipher).decode()


def unseal(key_hex: str, sealed: str, associated: str) -> dict[str, Any] | None:
    """The fields sealed by ``seal``, or None when the key or the association does not match."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        plain = AESGCM(bytes.fromhex(key_hex)).decrypt(
            raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _bound(associated)
        )
    except (InvalidTag, ValueError):
        return None
    fields = orjson.loads(plain)
    return fields if isinstance(fields, dict) else None


def open_record(record: dict[str, Any], keys: Mapping[str, str]) -> dict[str, Any] | None:
    """``record`` with its sealed fields restored; None when its key is gone (erased).

    A record with nothing sealed comes back as it is.
    """
    sealed = record.get("sealed")
    if sealed is None:
        return record
    key = keys.get(str(record.get("ref")))
    if key is None:
        return None
    fields = unseal(key, str(sealed), associated_of(record))
    if fields is None:
        return None
    opened = {k: v for k, v in record.items() if k != "sealed"}
    opened.update(fields)
    return opened


def associated_of(record: Mapping[str, Any]) -> str:
    """What a sealed blob is bound to: its record's kind, event id and ref."""
    return f"{record.get('record', '')}\x00{record.get('event_id', '')}\x00{record.get('ref', '')}"


def seal_into(
    record: dict[str, Any], personal: Mapping[str, Any], ref: str, key_hex: str, kind: str = ""
) -> None:
    """Add ``ref`` and the sealed ``personal`` fields to ``record`` (of audit kind ``kind``).

    ``kind`` is the ``record`` field the line will carry (the audit log adds it);
    empty for the feedback file's lines, which carry none.
    """
    record["ref"] = ref
    bound = {"record": kind, "event_id": record.get("event_id", ""), "ref": ref}
    record["sealed"] = seal(key_hex, personal, associated_of(bound))
