"""API key scopes: what a key may do, and the id an audit record names a key by.

Light on purpose (no pydantic): the command line imports it for ``apikey --scope``.
"""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    """What an API key may do."""

    DECIDE = "decide"  # decisions, step-up results, feedback: the application's key
    ADMIN = "admin"  # erasure, reload, model, and everything operators read
    METRICS = "metrics"  # /metrics only: the scraper's key


# The scopes a key's own scope grants: an operator may read the metrics too.
GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.DECIDE: frozenset({Scope.DECIDE}),
    Scope.ADMIN: frozenset({Scope.ADMIN, Scope.METRICS}),
    Scope.METRICS: frozenset({Scope.METRICS}),
}


def key_id(sha256_hex: str) -> str:
    """The non-secret id of a key (its digest's first 12 hex digits): audit records name it."""
    return "key-" + sha256_hex[:12]
