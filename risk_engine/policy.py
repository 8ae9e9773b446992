"""Policy: per action class, score thresholds -> decision, required acr, max age.

Kept apart from scoring: the model ranks, the policy decides. A policy lives in a
versioned TOML file, validated on load (step_up below deny, acr known, every
action in one class only).
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from risk_engine.decision import Acr, Outcome
from risk_engine.errors import ConfigurationError

Probability = Annotated[float, Field(gt=0.0, le=1.0)]


class ClassPolicy(BaseModel):
    """Thresholds and step-up requirements for one class of actions."""

    model_config = ConfigDict(extra="forbid")

    actions: list[str] = Field(default_factory=list)
    step_up: Probability
    deny: Probability
    required_acr: Acr = Acr.MFA
    max_age: Annotated[int, Field(gt=0, le=86400 * 30)] = 300
    fail_mode: Outcome = Outcome.STEP_UP
    # Dynamic linking (PSD2): a passed step-up covers only the action it was for (the
    # same amount, currency and payee), once, instead of the session's next actions.
    dynamic_linking: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> ClassPolicy:
        if self.step_up >= self.deny:
            raise ValueError(f"step_up ({self.step_up}) must be below deny ({self.deny})")
        return self


class Policy(BaseModel):
    """The whole policy file."""

    model_config = ConfigDict(extra="forbid")

    version: Annotated[str, Field(min_length=1)]
    default_class: str = "default"
    classes: dict[str, ClassPolicy]
    floors: dict[str, Outcome] = Field(default_factory=dict)
    # Reason codes that cap what the score alone decides (a floor still raises it): a
    # crowd's network in the user's own country is challenged at most, never blocked
    # on its score, so a legitimate first visit keeps its session by passing MFA.
    ceilings: dict[str, Outcome] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        for code, ceiling in self.ceilings.items():
            if ceiling is Outcome.DENY:
                raise ValueError(f"ceiling of {code!r} is deny: a ceiling caps below deny")
        if self.default_class not in self.classes:
            raise ValueError(f"default_class {self.default_class!r} is not one of the classes")
        seen: dict[str, str] = {}
        for name, cls in self.classes.items():
            for action in cls.actions:
                if action in seen:
                    raise ValueError(f"action {action!r} is in both {seen[action]} and {name}")
                seen[action] = name
        self._table = PolicyTable(self, seen)
        return self

    _table: PolicyTable

    @property
    def table(self) -> PolicyTable:
        """The policy as plain lookups: what the engine consults on every event."""
        return self._table

    def class_of(self, action: str) -> tuple[str, ClassPolicy]:
        """The action's class; unknown actions get the default class."""
        return self._table.class_of(action)

    def decide(self, action: str, score: float, codes: list[str]) -> tuple[str, Outcome]:
        """(class name, outcome) for a score and the reason codes that fired."""
        return self._table.decide(action, score, codes)

    def to_toml(self) -> str:
        data: dict[str, Any] = self.model_dump(mode="json")
        return tomli_w.dumps(data)


class PolicyTable:
    """A validated policy as dictionaries: no model attribute lookups per event."""

    __slots__ = ("_by_action", "_ceilings", "_default", "_floors")

    def __init__(self, policy: Policy, by_action: dict[str, str]) -> None:
        self._by_action = {
            action: (name, policy.classes[name]) for action, name in by_action.items()
        }
        self._default = (policy.default_class, policy.classes[policy.default_class])
        self._floors = dict(policy.floors)
        self._ceilings = dict(policy.ceilings)

    def __eq__(self, other: object) -> bool:
        # Policies compare by value, private attributes included: so must their tables.
        if not isinstance(other, PolicyTable):
            return NotImplemented
        return (self._by_action, self._default, self._floors, self._ceilings) == (
            other._by_action,
            other._default,
            other._floors,
            other._ceilings,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable contents, like the dicts it holds

    def class_of(self, action: str) -> tuple[str, ClassPolicy]:
        """The action's class; unknown actions get the default class."""
        return self._by_action.get(action, self._default)

    def decide(self, action: str, score: float, codes: list[str]) -> tuple[str, Outcome]:
        """(class name, outcome) for a score and the reason codes that fired."""
        name, cls = self._by_action.get(action, self._default)
        if score >= cls.deny:
            outcome = Outcome.DENY
        elif score >= cls.step_up:
            outcome = Outcome.STEP_UP
        else:
            outcome = Outcome.ALLOW
        if self._ceilings:
            for code in codes:
                ceiling = self._ceilings.get(code)
                if ceiling is not None and outcome.rank > ceiling.rank:
                    outcome = ceiling
        floors = self._floors
        for code in codes:
            floor = floors.get(code)
            if floor is not None and floor.rank > outcome.rank:
                outcome = floor
        return name, outcome


def parse_policy(data: dict[str, Any], source: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'policy'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigurationError(f"policy {source} is invalid: {problems}") from None


def load_policy(path: Path | None = None) -> Policy:
    """Load and validate a policy file; None gives the bundled default."""
    if path is None:
        text = resources.files("risk_engine.data").joinpath("policy.toml").read_text()
        source = "(bundled default)"
    else:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigurationError(f"policy file {path} cannot be read: {exc}") from exc
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"policy {source} is not valid TOML: {exc}") from exc
    return parse_policy(data, source)


def save_policy(policy: Policy, path: Path) -> None:
    header = "# Written by risk-engine calibrate; see README for the meaning of each field.\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + policy.to_toml())
