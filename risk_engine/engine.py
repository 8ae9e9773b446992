"""The one core: event in, decision out. The API, the backtest and training call it.

For each event: locate it, build the observation, then, atomically on the user's
profile, compute the features from the profile as it was (score), decide, and
only then fold the event into the profile (learn). A step-up holds the event
until its outcome arrives: a pass teaches the new device or place, a failure
counts against the user, a missing outcome teaches nothing. The challenges
themselves are ``challenges.py``'s; the engine is assembled by ``assembly.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from risk_engine import challenges
from risk_engine.challenges import ChallengeResult
from risk_engine.decision import Acr, Decision, Outcome, Reason
from risk_engine.errors import ConfigurationError, GeoIPError, ProfileStoreError
from risk_engine.events import Event
from risk_engine.features.learn import hold_pending, learn, unpassed_step_up
from risk_engine.features.observation import Observation, observe
from risk_engine.features.registry import as_dict, compute_features
from risk_engine.geo import GeoLocator, Location, network_key
from risk_engine.model.artifact import ModelArtifact
from risk_engine.policy import Policy, PolicyTable
from risk_engine.privacy import Hasher
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BurstNote, ProfileStore
from risk_engine.reasons import explain
from risk_engine.rotation import adopt, never_written, rekey
from risk_engine.useragent import parse_user_agent

T = TypeVar("T")

DAY_S = 86400.0
WARM_UP_USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)


@dataclass(frozen=True)
class Scorer:
    """A model and the policy applied to its scores (the live pair, or a shadow one)."""

    artifact: ModelArtifact
    policy: Policy
    # The policy's lookups, held here: the Policy model's own attribute access is slow.
    table: PolicyTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", self.policy.table)

    @property
    def model_version(self) -> str:
        return self.artifact.model_version


def score_reason(scorer: Scorer, action: str, score: float, outcome: Outcome) -> Reason:
    """Why an event no signal explains was challenged: its score against the threshold.

    Added after the policy decided (it raises nothing), so that no step-up or denial
    reaches a person, or an operator, with nothing said about it.
    """
    name, cls = scorer.table.class_of(action)
    which, threshold = ("deny", cls.deny) if outcome is Outcome.DENY else ("step-up", cls.step_up)
    return Reason(
        code="risk_score",
        detail=f"risk score {score:.4f} at or above the {name} {which} threshold"
        f" {threshold:g}; no single signal stands out",
    )


@dataclass
class Verdict:
    """What the scoring step produced inside the profile transaction."""

    score: float
    outcome: Outcome
    action_class: str
    reasons: list[Reason]
    values: list[float]
    required_acr: Acr | None
    max_age: int | None
    shadow: dict[str, Any] | None
    # The profile's ref and data key (for the audit record) and, for a step-up, the
    # id of its challenge, known inside the transaction so the pending entry names it.
    sealing: tuple[str, str] | None = None
    challenge_id: str | None = None


def burst_note(obs: Observation, *, keep_event: bool = False) -> BurstNote:
    """What the burst windows keep of an event (a failed login counts as a failure).

    ``keep_event``: the store also keeps the event's id as the user's, for feedback.
    """
    failed = obs.action == "login" and not obs.success
    return BurstNote(
        obs.ip_key,
        obs.network,
        obs.user_key,
        obs.ts,
        failed,
        obs.event_id if keep_event else "",
        obs.success,
    )


class Engine:
    """Scores events against behavioral profiles and applies the policy."""

    def __init__(
        self,
        *,
        store: ProfileStore,
        geo: GeoLocator,
        scorer: Scorer | None,
        hasher: Hasher,
        shadow: Scorer | None = None,
        challenge_ttl_s: float = 300.0,
        device_trust_days: float = 90.0,
        include_features: bool = False,
        keep_events: bool = False,
        clock: Callable[[], float] = time.time,
        previous_hasher: Hasher | None = None,
    ) -> None:
        self.store = store
        self.geo = geo
        self.scorer = scorer
        self.shadow = shadow
        self.hasher = hasher
        self.challenge_ttl_s = challenge_ttl_s
        self.device_trust_s = device_trust_days * DAY_S
        self.include_features = include_features
        # Keep each decided event's id in the store (the service's feedback rules need
        # it; a backtest or a training replay does not).
        self.keep_events = keep_events
        self.clock = clock
        # The secret before a rotation (rotation.py): its keys are looked up second.
        self.previous_hasher = previous_hasher

    def _live(self) -> Scorer:
        if self.scorer is None:
            raise ConfigurationError("no model is loaded: train one with `risk-engine train`")
        return self.scorer

    def warm_up(self) -> None:
        """Pay start-up costs now rather than on the first event.

        The User-Agent parser compiles its regular expressions on first use (a second).
        """
        parse_user_agent(WARM_UP_USER_AGENT)

    # -- keys ---------------------------------------------------------------------------

    def user_key(self, user_id: str) -> str:
        return self.hasher.digest("user", user_id)

    def user_keys(self, user_id: str) -> list[str]:
        """The user's key, then (during a secret rotation) the previous secret's."""
        keys = [self.user_key(user_id)]
        if self.previous_hasher is not None:
            keys.append(self.previous_hasher.digest("user", user_id))
        return keys

    def _hashers(self) -> tuple[Hasher, ...]:
        """The secret's hasher, then (during a secret rotation) the previous secret's."""
        if self.previous_hasher is None:
            return (self.hasher,)
        return (self.hasher, self.previous_hasher)

    # -- scoring ------------------------------------------------------------------------

    def locate(self, event: Event) -> tuple[Location, str | None]:
        """The event's location, or an unknown one and why (GeoIP failing is not fatal)."""
        try:
            return self.geo.lookup(event.ip), None
        except GeoIPError as exc:
            return Location(known=False, network=network_key(event.ip)), exc.message

    def network_of(self, event: Event) -> str:
        """``locate(event)[0].network``, with as little GeoIP work as that takes."""
        try:
            return self.geo.network_of(event.ip)
        except GeoIPError:
            return network_key(event.ip)

    def decide(self, event: Event, *, issue_challenge: bool = True) -> Decision:
        """Score one event, decide, learn from it, and (for step_up) issue a challenge."""
        scorer = self._live()
        location, geo_problem = self.locate(event)
        user_key = self.user_key(event.user_id)
        obs = observe(event, location, self.hasher, user_key)
        degraded: list[str] = []
        if geo_problem:
            degraded.append(f"GeoIP unavailable: {geo_problem}")
        try:
            verdict = self._update_event(
                event,
                location,
                obs,
                burst_note(obs, keep_event=self.keep_events),
                lambda p, bursts: self._score_and_learn(scorer, p, bursts, obs),
            )
        except ProfileStoreError as exc:
            degraded.append(f"profile store unavailable: {exc.message}")
            # Score against an empty profile: no history, so the class's fail mode decides.
            verdict = self._score(scorer, Profile(user_key=user_key), BurstCounts(), obs)
            if verdict.outcome is not Outcome.DENY:
                verdict.outcome = scorer.table.class_of(obs.action)[1].fail_mode
        if degraded:
            verdict.reasons.insert(0, Reason(code="degraded", detail="; ".join(degraded)))
            fail_mode = scorer.table.class_of(obs.action)[1].fail_mode
            if fail_mode.rank > verdict.outcome.rank:
                verdict.outcome = fail_mode
        if verdict.outcome is Outcome.STEP_UP:
            _, cls = scorer.table.class_of(obs.action)
            verdict.required_acr, verdict.max_age = cls.required_acr, cls.max_age
        if verdict.outcome is not Outcome.ALLOW and not verdict.reasons:
            verdict.reasons.append(score_reason(scorer, obs.action, verdict.score, verdict.outcome))
        decision = Decision(
            event_id=event.event_id,
            score=round(verdict.score, 6),
            decision=verdict.outcome,
            reasons=verdict.reasons,
            required_acr=verdict.required_acr,
            max_age=verdict.max_age,
            model_version=scorer.model_version,
            # os.urandom directly: what secrets.token_hex does, without its two layers.
            decision_id="d-" + os.urandom(8).hex(),
            policy_version=scorer.policy.version,
            action_class=verdict.action_class,
            degraded=bool(degraded),
            features=as_dict(verdict.values) if self.include_features else None,
            shadow=verdict.shadow,
        )
        decision._sealing = verdict.sealing
        if decision.decision is Outcome.STEP_UP and issue_challenge and not degraded:
            try:
                decision.challenge = challenges.issue(
                    self.store,
                    event,
                    obs,
                    decision,
                    verdict.challenge_id,
                    hasher=self.hasher,
                    ttl_s=self.challenge_ttl_s,
                    now=self.clock(),
                )
            except ProfileStoreError as exc:
                # The step-up stands; only its binding could not be kept (no 5xx for that).
                decision.degraded = True
                decision.reasons.insert(
                    0, Reason(code="degraded", detail=f"challenge not saved: {exc.message}")
                )
        return decision

    def _score(
        self, scorer: Scorer, profile: Profile, bursts: BurstCounts, obs: Observation
    ) -> Verdict:
        """Features, score, reasons and the policy's outcome; the profile is not changed."""
        values = compute_features(profile, bursts, obs)
        row = np.asarray(values, dtype=np.float64)
        score = scorer.artifact.model.score_one(row)
        reasons = explain(profile, bursts, obs, values)
        codes = [r.code for r in reasons]
        action_class, outcome = scorer.table.decide(obs.action, score, codes)
        shadow = None
        if self.shadow is not None:
            s_score = self.shadow.artifact.model.score_one(row)
            _, s_outcome = self.shadow.table.decide(obs.action, s_score, codes)
            shadow = {
                "model_version": self.shadow.model_version,
                "policy_version": self.shadow.policy.version,
                "score": round(s_score, 6),
                "decision": s_outcome.value,
            }
        return Verdict(score, outcome, action_class, reasons, values, None, None, shadow)

    def _score_and_learn(
        self, scorer: Scorer, profile: Profile, bursts: BurstCounts, obs: Observation
    ) -> Verdict:
        # One scorer for the whole decision: a reload mid-request must not mix models.
        verdict = self._score(scorer, profile, bursts, obs)
        if verdict.outcome is Outcome.ALLOW and profile.challenged:
            # Trying again is no answer to a challenge: whatever time or activity has
            # changed in the score since, a step-up not passed is asked for again.
            challenged_ts = unpassed_step_up(profile, obs)
            if challenged_ts is not None:
                verdict.outcome = Outcome.STEP_UP
                minutes = max(obs.ts - challenged_ts, 0.0) / 60
                verdict.reasons.insert(
                    0,
                    Reason(
                        code="step_up_not_passed",
                        detail=f"a step-up for {obs.action} on this device {minutes:.0f} min"
                        " ago was not passed",
                    ),
                )
        if verdict.outcome is Outcome.STEP_UP:
            _, cls = scorer.table.class_of(obs.action)
            assurance = challenges.use_assurance(profile, obs, verdict.reasons, cls)
            if assurance is not None:
                verdict.outcome = Outcome.ALLOW
                verdict.reasons.insert(0, assurance)
        learn(
            profile,
            obs,
            trusted=verdict.outcome is Outcome.ALLOW,
            refused=verdict.outcome is Outcome.DENY,
            device_trust_s=self.device_trust_s,
        )
        if verdict.outcome is Outcome.STEP_UP:
            verdict.challenge_id = challenges.new_id()
            hold_pending(profile, obs, verdict.challenge_id)
        verdict.sealing = (profile.ref, profile.data_key)
        return verdict

    # -- training replay ----------------------------------------------------------------

    def replay(
        self, event: Event, *, trusted: bool, refused: bool = True
    ) -> tuple[list[float], Observation]:
        """Features of one event from the profile as it was, then learn it (no model needed).

        Training replays logs through this: the same observation, features and
        profile update as ``decide``, with trust taken from labels instead of a policy
        (an untrusted event counts as refused unless ``refused`` says it is pending).
        """
        location, _ = self.locate(event)
        user_key = self.user_key(event.user_id)
        obs = observe(event, location, self.hasher, user_key)

        def step(profile: Profile, bursts: BurstCounts) -> list[float]:
            values = compute_features(profile, bursts, obs)
            learn(
                profile,
                obs,
                trusted=trusted,
                refused=refused,
                device_trust_s=self.device_trust_s,
            )
            return values

        values = self._update_event(event, location, obs, burst_note(obs), step)
        return values, obs

    def _update_event(
        self,
        event: Event,
        location: Location,
        obs: Observation,
        note: BurstNote,
        fn: Callable[[Profile, BurstCounts], T],
    ) -> T:
        """``store.update_event``; during a secret rotation, carrying the old profile over.

        A user with no profile under the new key is looked up under the previous
        secret's (one read more, for that user's first event since the rotation);
        a profile found there is copied to the new key in the same transaction.
        """
        previous = self.previous_hasher
        if previous is None:
            return self.store.update_event(note, fn)
        old = observe(event, location, previous, previous.digest("user", event.user_id))
        carried: list[Profile] = []
        looked_up = False

        def step(profile: Profile, bursts: BurstCounts) -> T:
            if never_written(profile):
                if not looked_up:
                    raise _LookUpPrevious
                if carried:
                    adopt(profile, carried[0])
            rekey(profile, old, obs)
            return fn(profile, bursts)

        try:
            return self.store.update_event(note, step)
        except _LookUpPrevious:
            pass
        looked_up = True
        found = self.store.get(old.user_key)
        if found is None:
            return self.store.update_event(note, step)
        carried.append(found)
        result = self.store.update_event(note, step)
        challenges.carry(self.store, found, old.user_key, obs.user_key, self.clock())
        return result

    # -- step-up outcomes ---------------------------------------------------------------

    def apply_outcome(
        self,
        user_id: str,
        event_id: str,
        *,
        passed: bool,
        now: float,
        acr: Acr | None = None,
        digest: str | None = None,
    ) -> bool:
        """Apply a step-up outcome to the held event; False if nothing was held for it.

        A pass with ``acr`` raises the assurance where the held event happened (its
        session, else its device and network), for the action ``digest`` names (the
        challenge's; by default the held event's own).
        """
        applied, _ = challenges.apply_outcome(
            self.store,
            self.user_key(user_id),
            event_id,
            passed=passed,
            now=now,
            device_trust_s=self.device_trust_s,
            acr=acr,
            digest=digest,
        )
        return bool(applied)

    def complete_challenge(
        self,
        challenge_id: str,
        *,
        passed: bool,
        session_id: str | None,
        acr: Acr | None,
    ) -> ChallengeResult:
        """Record a step-up result reported by the application (``challenges.py``)."""
        return challenges.complete(
            self.store,
            challenge_id,
            passed=passed,
            session_id=session_id,
            acr=acr,
            now=self.clock(),
            hashers=self._hashers(),
            device_trust_s=self.device_trust_s,
        )


class _LookUpPrevious(Exception):
    """Raised inside an event's transaction: no profile under the new key, try the old one."""
