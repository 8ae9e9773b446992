"""Request and response bodies of the service, beside the contract's Event and Decision."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from risk_engine.decision import Acr

Identifier = Annotated[str, Field(min_length=1, max_length=256)]


class ChallengeMethod(StrEnum):
    """How the user proved the step-up."""

    TOTP = "totp"
    WEBAUTHN = "webauthn"
    PUSH = "push"
    SMS = "sms"
    EMAIL = "email"
    OTHER = "other"

    @property
    def acr(self) -> Acr:
        """The assurance a method proves when the application does not say."""
        return Acr.PHR if self is ChallengeMethod.WEBAUTHN else Acr.MFA


class FeedbackLabel(StrEnum):
    """What an analyst or a customer confirmed about an event (a training label)."""

    CONFIRMED_FRAUD = "confirmed_fraud"
    CONFIRMED_LEGIT = "confirmed_legit"


class ChallengeResultIn(BaseModel):
    """The application reports how a step-up ended."""

    model_config = ConfigDict(extra="forbid")

    passed: Annotated[bool, Field(strict=True)]
    method: ChallengeMethod
    acr: Acr | None = Field(default=None, description="default: phr for webauthn, else mfa")
    session_id: Identifier | None = Field(
        default=None, description="must match the session the challenge was issued for"
    )


class ChallengeResultOut(BaseModel):
    """What the engine made of a step-up result."""

    challenge_id: str
    event_id: str
    passed: bool
    satisfied: bool = Field(description="passed, with at least the required assurance")
    acr: Acr | None


class FeedbackIn(BaseModel):
    """A confirmed label for an event: appended to the feedback file, read by training."""

    model_config = ConfigDict(extra="forbid")

    label: FeedbackLabel
    user_id: Identifier | None = None
    note: Annotated[str, Field(max_length=2000)] | None = None


class FeedbackOut(BaseModel):
    """The feedback as recorded."""

    event_id: str
    label: FeedbackLabel


class ErrorBody(BaseModel):
    """Every error answer: a stable code, a message and, for bad input, the field."""

    error: str
    message: str
    field: str | None = None
    detail: list[dict[str, Any]] | None = None
    limit: int | None = Field(default=None, description="with 413: the body limit in bytes")


class Health(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Readiness: each dependency's state: "ok" or "failed" (for an admin key: what failed)."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, str]


class ScorerInfo(BaseModel):
    """One model and its policy."""

    model_version: str
    kind: str
    schema_hash: str
    feature_version: int
    created_at: str
    policy_version: str
    thresholds: dict[str, dict[str, Any]] = Field(description="per action class, from the policy")
    floors: dict[str, str] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelInfo(ScorerInfo):
    """The live model and policy, and the shadow pair if one runs (logged, never enforced)."""

    shadow: ScorerInfo | None = None


class LogPage(BaseModel):
    """A page of the decision log, newest first; pass ``next_cursor`` as ``cursor`` for more."""

    items: list[dict[str, Any]] = Field(
        description="decisions: event fields (address truncated), decision, score, reasons, "
        "place, device summary, features; in a timeline also step_up_results and feedback"
    )
    next_cursor: str | None = Field(description="null on the last page")
