"""What the decision log holds and how it is asked: rows, filters, cursors, pages."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from risk_engine.errors import InvalidEventError

# The score histogram's bins: [0, 0.1), ..., [0.9, 1.0].
SCORE_BINS = 10


class LogEntry(StrEnum):
    """The kinds of records besides decisions."""

    CHALLENGE_RESULT = "challenge_result"
    FEEDBACK = "feedback"
    ERASURE = "erasure"


@dataclass(frozen=True)
class DecisionFilter:
    """What ``GET /v1/decisions`` filters by; None means any."""

    user_id: str | None = None
    decision: str | None = None
    action_class: str | None = None
    reason: str | None = None
    model_version: str | None = None
    since: float | None = None
    until: float | None = None


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last row's time and decision id (rows run newest first)."""

    ts: float
    decision_id: str

    def encode(self) -> str:
        raw = f"{self.ts!r}|{self.decision_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor of ``text``; InvalidEventError (422, field ``cursor``) when malformed."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            ts, decision_id = raw.split("|", 1)
            return cls(float(ts), decision_id)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidEventError(
                "cursor is not one this service issued", field="cursor"
            ) from exc


@dataclass
class Page:
    """One page of rows, newest first, and the cursor of the next page (None at the end)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass
class Overview:
    """The console's overview of a time range, from the hourly rollups."""

    since: float
    until: float
    hours: list[float] = field(default_factory=list)
    # action class -> decision -> counts per hour (aligned with ``hours``)
    by_class: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    score_bins: list[int] = field(default_factory=lambda: [0] * SCORE_BINS)
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    step_ups: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, int] = field(default_factory=dict)
    policy_versions: dict[str, int] = field(default_factory=dict)
    shadow: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.decisions.values())

    def rate(self, decision: str) -> float:
        return self.decisions.get(decision, 0) / self.total if self.total else 0.0


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def score_bin(score: float) -> int:
    return min(int(score * SCORE_BINS), SCORE_BINS - 1)
