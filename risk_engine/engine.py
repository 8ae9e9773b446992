"""The one core: event in, decision out. The API, the backtest and training call it.

For each event: locate it, build the observation, then, atomically on the user's
profile, compute the features from the profile as it was (score), decide, and
only then fold the event into the profile (learn). A step-up holds the event
until its outcome arrives: a pass teaches the new device or place, a failure
counts against the user, a missing outcome teaches nothing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from risk_engine.config import Settings
from risk_engine.decision import Acr, Challenge, Decision, Outcome, Reason
from risk_engine.errors import (
    ConfigurationError,
    ConflictError,
    GeoIPError,
    NotFoundError,
    ProfileStoreError,
)
from risk_engine.events import Event
from risk_engine.features.observation import Observation, observe
from risk_engine.features.registry import as_dict, compute_features
from risk_engine.geo import GeoLocator, Location, network_key
from risk_engine.model.artifact import ModelArtifact, default_model_path, load_artifact
from risk_engine.policy import ClassPolicy, Policy, PolicyTable, load_policy
from risk_engine.privacy import Hasher
from risk_engine.profiles.factory import open_store
from risk_engine.profiles.learn import hold_pending, learn, resolve_pending, unpassed_step_up
from risk_engine.profiles.model import BurstCounts, DeviceRecord, Profile, SessionRecord
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
# Tolerated difference between the application's event clock and ours, in seconds.
CLOCK_SKEW_S = 60.0


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


@dataclass(frozen=True)
class ChallengeResult:
    """The effect of a reported step-up result."""

    challenge_id: str
    event_id: str
    user_key: str
    session_id: str | None
    passed: bool
    satisfied: bool
    acr: Acr | None
    # The user's ref and data key, to seal the audit record of the result.
    sealing: tuple[str, str] | None = None


def action_digest(event: Event | Observation) -> str:
    """What a challenge is bound to: the action, its amount, currency and payee."""
    parts = f"{event.action}\x00{event.amount!r}\x00{event.currency or ''}\x00{event.payee or ''}"
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


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


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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

    def session_hash(self, session_id: str | None) -> str | None:
        """The keyed hash that challenge records keep of a session id."""
        return None if session_id is None else self.hasher.digest("session", session_id)

    def _session_hashes(self, session_id: str | None) -> tuple[str | None, ...]:
        """The session's keyed hash, and the previous secret's (for challenges issued before)."""
        if self.previous_hasher is None or session_id is None:
            return (self.session_hash(session_id),)
        return (self.session_hash(session_id), self.previous_hasher.digest("session", session_id))

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
                decision.challenge = self._issue_challenge(
                    event, obs, decision, verdict.challenge_id
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
            assurance = self._use_assurance(profile, obs, verdict, cls)
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
            verdict.challenge_id = "c-" + secrets.token_urlsafe(16)
            hold_pending(profile, obs, verdict.challenge_id)
        verdict.sealing = (profile.ref, profile.data_key)
        return verdict

    @staticmethod
    def _use_assurance(
        profile: Profile, obs: Observation, verdict: Verdict, cls: ClassPolicy
    ) -> Reason | None:
        """The reason a passed step-up covers this action, or None; uses up a linked one.

        A step-up covers what comes next where it was passed: in the same, unchanged
        session (same device and network); passed without a session, on the same
        device and network, for events without a session. In a class with dynamic
        linking it covers only the action it was passed for, once.
        """
        record: SessionRecord | DeviceRecord | None
        network: str | None
        if obs.session_id:
            record = profile.sessions.get(obs.session_id)
            # A hijacked session must not inherit the victim's assurance.
            if record is None or record.device_key != obs.device_key:
                return None
            network, where = record.network, "in this session"
        else:
            record = profile.devices.get(obs.device_key) if obs.has_device else None
            if record is None:
                return None
            network, where = record.auth_network, "on this device and network"
        if record.acr is None or record.auth_time is None or network != obs.network:
            return None
        codes = {r.code for r in verdict.reasons}
        if codes & {"session_hijack", "impossible_travel", "session_device_changed"}:
            return None
        age = obs.ts - record.auth_time
        # The step-up is stamped by the server clock, the event by the application's:
        # allow a little skew, but an action from before the step-up is not covered.
        if Acr(record.acr).rank < cls.required_acr.rank or not -CLOCK_SKEW_S <= age <= cls.max_age:
            return None
        if cls.dynamic_linking:
            if record.action_digest != action_digest(obs):
                return None
            record.action_digest = None
        age = max(age, 0.0)
        return Reason(
            code="session_assurance",
            detail=f"{record.acr} step-up passed {where} {age / 60:.0f} min ago",
        )

    @staticmethod
    def _grant_assurance(
        profile: Profile, obs: Observation, acr: Acr, now: float, digest: str
    ) -> None:
        """Raise the assurance of where a step-up was passed: its session, else its device."""
        record: SessionRecord | DeviceRecord | None
        if obs.session_id:
            record = profile.sessions.get(obs.session_id)
        else:
            record = profile.devices.get(obs.device_key) if obs.has_device else None
        if record is None:
            return
        if record.acr is None or Acr(record.acr).rank <= acr.rank:
            record.acr = acr.value
        record.auth_time = now
        record.action_digest = digest
        if isinstance(record, DeviceRecord):
            record.auth_network = obs.network

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
        self._carry_challenges(found, old.user_key, obs.user_key)
        return result

    def _carry_challenges(self, profile: Profile, old_key: str, new_key: str) -> None:
        """Point the carried profile's outstanding challenges at its new key."""
        now = self.clock()
        for challenge_id in profile.challenge_ids():
            raw = self.store.load_challenge(challenge_id, now)
            if raw is None:
                continue
            record = orjson.loads(raw)
            if record.get("user_key") != old_key:
                continue
            record["user_key"] = new_key
            ttl = float(record["expires_at"]) - now
            if ttl > 0:
                self.store.save_challenge(challenge_id, orjson.dumps(record), ttl, now)

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
        applied, _ = self._apply_outcome(
            self.user_key(user_id), event_id, passed=passed, now=now, acr=acr, digest=digest
        )
        return bool(applied)

    def _apply_outcome(
        self,
        user_key: str,
        event_id: str,
        *,
        passed: bool,
        now: float,
        acr: Acr | None = None,
        digest: str | None = None,
    ) -> tuple[bool | None, tuple[str, str] | None]:
        """``apply_outcome`` by user key, and the profile's ref and data key.

        (None, None) when no profile is kept (erased, or never made): none is created.
        """
        sealing: list[tuple[str, str]] = []

        def apply(profile: Profile) -> bool:
            if profile.is_new:
                # No profile (erased, or never made): an outcome must not create one.
                raise _NoProfile
            sealing[:] = [(profile.ref, profile.data_key)]
            obs = resolve_pending(
                profile, event_id, passed=passed, now=now, device_trust_s=self.device_trust_s
            )
            if obs is None:
                return False
            if passed and acr is not None:
                self._grant_assurance(profile, obs, acr, now, digest or action_digest(obs))
            return True

        try:
            applied = self.store.update(user_key, apply)
        except _NoProfile:
            return None, None
        return applied, sealing[0]

    def _issue_challenge(
        self, event: Event, obs: Observation, decision: Decision, challenge_id: str | None
    ) -> Challenge:
        assert decision.required_acr is not None and decision.max_age is not None
        challenge_id = challenge_id or "c-" + secrets.token_urlsafe(16)
        now = self.clock()
        expires = now + self.challenge_ttl_s
        # Keyed ids only: the record outlives nothing (erasure deletes it) but is kept
        # apart from the profile, so it names the user and the session by their HMACs.
        record = {
            "event_id": event.event_id,
            "user_key": obs.user_key,
            "session_hash": self.session_hash(event.session_id),
            "action_digest": action_digest(event),
            "required_acr": decision.required_acr.value,
            "max_age": decision.max_age,
            "expires_at": expires,
            "decision_id": decision.decision_id,
        }
        self.store.save_challenge(challenge_id, orjson.dumps(record), self.challenge_ttl_s, now)
        hint = (
            'Bearer error="insufficient_user_authentication", '
            f'error_description="step-up required", acr_values="{decision.required_acr.value}", '
            f"max_age={decision.max_age}"
        )
        return Challenge(
            id=challenge_id,
            expires_at=_rfc3339(expires),
            required_acr=decision.required_acr,
            max_age=decision.max_age,
            www_authenticate=hint,
        )

    def complete_challenge(
        self,
        challenge_id: str,
        *,
        passed: bool,
        session_id: str | None,
        acr: Acr | None,
    ) -> ChallengeResult:
        """Record a step-up result reported by the application; single use, session-bound.

        A challenge issued without a session takes a result without one: its held
        event's device and network are what its assurance is bound to.
        """
        now = self.clock()
        raw = self.store.load_challenge(challenge_id, now)
        if raw is None:
            raise NotFoundError(f"challenge {challenge_id} is unknown or expired", field="id")
        record = orjson.loads(raw)
        if "user_key" not in record:
            # Saved by an engine from before challenges kept keyed ids (a rolling upgrade).
            record["user_key"] = self.user_key(record["user_id"])
            record["session_hash"] = self.session_hash(record.get("session_id"))
        bound = record.get("session_hash")
        if bound is None and session_id is not None:
            raise ConflictError(
                "challenge was issued without a session: its result must name none",
                field="session_id",
            )
        if bound is not None and bound not in self._session_hashes(session_id):
            raise ConflictError(
                "challenge result is for another session than the challenge", field="session_id"
            )
        if not self.store.claim_challenge(challenge_id, now):
            raise ConflictError(f"challenge {challenge_id} was already used", field="id")
        required = Acr(record["required_acr"])
        satisfied = passed and (acr is None or acr.rank >= required.rank)
        # The held event's own session is the bound one (the pending entry keeps it).
        applied, sealing = self._apply_outcome(
            record["user_key"],
            record["event_id"],
            passed=satisfied,
            now=now,
            acr=(acr or required) if satisfied else None,
            digest=record["action_digest"],
        )
        if applied is None:
            raise NotFoundError(
                f"challenge {challenge_id} is for a user no longer kept (erased)", field="id"
            )
        return ChallengeResult(
            challenge_id=challenge_id,
            event_id=record["event_id"],
            user_key=record["user_key"],
            session_id=session_id if bound is not None else None,
            passed=passed,
            satisfied=satisfied,
            acr=acr,
            sealing=sealing,
        )


class _NoProfile(Exception):
    """Raised inside an outcome's update to leave a missing profile missing."""


class _LookUpPrevious(Exception):
    """Raised inside an event's transaction: no profile under the new key, try the old one."""


def load_scorer(model_path: Path | None, policy_path: Path | None) -> Scorer:
    """Load a verified model artifact and a validated policy (defaults when None)."""
    return Scorer(
        artifact=load_artifact(model_path or default_model_path()),
        policy=load_policy(policy_path),
    )


def build_engine(
    settings: Settings,
    *,
    store: ProfileStore | None = None,
    geo: GeoLocator | None = None,
    with_model: bool = True,
) -> Engine:
    """Assemble the engine from settings: store, GeoIP, model, policy, shadow, secret."""
    if settings.sqlite_path is not None and store is None:
        settings.secure_files(logs=False)
    scorer = load_scorer(settings.model_path, settings.policy_path) if with_model else None
    shadow = None
    if settings.shadow_model_path or settings.shadow_policy_path:
        shadow = load_scorer(
            settings.shadow_model_path or settings.model_path,
            settings.shadow_policy_path or settings.policy_path,
        )
    previous = settings.resolve_previous_secret()
    return Engine(
        store=store
        or open_store(
            settings.store,
            retention_days=settings.retention_days,
            timeout_s=settings.store_timeout_s,
        ),
        geo=geo
        or GeoLocator(
            settings.geoip_city_db,
            asn_db=settings.geoip_asn_db,
            anonymous_db=settings.geoip_anonymous_db,
        ),
        scorer=scorer,
        shadow=shadow,
        hasher=Hasher(settings.resolve_secret()),
        previous_hasher=Hasher(previous) if previous is not None else None,
        challenge_ttl_s=settings.challenge_ttl_s,
        device_trust_days=settings.device_trust_days,
        include_features=settings.include_features,
    )
