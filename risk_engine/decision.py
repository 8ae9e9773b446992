"""The decision (contract section 2) and the closed sets it is made of."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class Outcome(StrEnum):
    """What the application should do with the action."""

    ALLOW = "allow"
    STEP_UP = "step_up"
    DENY = "deny"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Outcome.ALLOW: 0, Outcome.STEP_UP: 1, Outcome.DENY: 2}


class Acr(StrEnum):
    """Authentication assurance a step-up must prove: any second factor, or phishing-resistant."""

    MFA = "mfa"
    PHR = "phr"

    @property
    def rank(self) -> int:
        return 1 if self is Acr.MFA else 2


class Reason(BaseModel):
    """One signal that drove the decision."""

    model_config = ConfigDict(frozen=True)

    code: str = Field(description="stable snake_case identifier")
    detail: str = Field(description="for humans, with the numbers")


class Challenge(BaseModel):
    """A step-up the application must run, bound to user, session and action."""

    id: str
    expires_at: str = Field(description="RFC 3339 UTC")
    required_acr: Acr
    max_age: int
    www_authenticate: str = Field(
        description="RFC 9470 hint the application can forward as the WWW-Authenticate header"
    )


class Decision(BaseModel):
    """The engine's answer for one event."""

    event_id: str
    score: float = Field(ge=0.0, le=1.0)
    decision: Outcome
    reasons: list[Reason] = Field(default_factory=list)
    required_acr: Acr | None = None
    max_age: int | None = None
    model_version: str
    decision_id: str = ""
    policy_version: str = ""
    action_class: str = ""
    degraded: bool = False
    challenge: Challenge | None = None
    features: dict[str, float] | None = None
    shadow: dict[str, Any] | None = None
    # The user's ref and data key (sealing.py), for sealing the audit record; never
    # rendered. None when the profile could not be read (degraded: no key).
    _sealing: tuple[str, str] | None = PrivateAttr(default=None)

    @property
    def sealing(self) -> tuple[str, str] | None:
        return self._sealing

    def contract_dict(self, *, features: bool = True, shadow: bool = True) -> dict[str, Any]:
        """The decision as JSON: contract fields first, extras after, absent ones left out.

        Exactly ``model_dump(mode="json", exclude_none=True)`` (a test holds them
        together), written out because it runs for every response and backtest line:
        2.5 µs against pydantic's 8.2. ``features`` and ``shadow`` say whether to
        keep those two extras.
        """
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "score": self.score,
            "decision": self.decision.value,
            "reasons": [{"code": r.code, "detail": r.detail} for r in self.reasons],
        }
        if self.required_acr is not None:
            out["required_acr"] = self.required_acr.value
        if self.max_age is not None:
            out["max_age"] = self.max_age
        out["model_version"] = self.model_version
        out["decision_id"] = self.decision_id
        out["policy_version"] = self.policy_version
        out["action_class"] = self.action_class
        out["degraded"] = self.degraded
        challenge = self.challenge
        if challenge is not None:
            out["challenge"] = {
                "id": challenge.id,
                "expires_at": challenge.expires_at,
                "required_acr": challenge.required_acr.value,
                "max_age": challenge.max_age,
                "www_authenticate": challenge.www_authenticate,
            }
        if features and self.features is not None:
            out["features"] = self.features
        if shadow and self.shadow is not None:
            out["shadow"] = self.shadow
        return out
