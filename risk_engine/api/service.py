"""What the endpoints do, kept out of the routes: decide, report, label, erase, reload.

One ``Service`` per app, built in the lifespan around the one Engine. Each
method does the engine call, the metrics and the audit record, so the routes
stay a line or two of HTTP.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Unpack

import orjson

from risk_engine.api.auth import current_caller, scopes_of_digest
from risk_engine.api.metrics import CountingStore, Metrics
from risk_engine.api.schemas import (
    ChallengeResultIn,
    ChallengeResultOut,
    FeedbackIn,
    FeedbackOut,
    ModelInfo,
    Readiness,
    ScorerInfo,
)
from risk_engine.assembly import load_scorers
from risk_engine.audit import AuditLog, RecordKind, decision_record, seal_personal
from risk_engine.audit_writer import AuditWriter
from risk_engine.config import Settings
from risk_engine.decision import Decision, Outcome
from risk_engine.decision_log import (
    DecisionLogProcess,
    DecisionLogWriter,
    LogEntry,
    open_decision_log_writer,
)
from risk_engine.decision_log.writer import EntryFields
from risk_engine.engine import Engine, Scorer
from risk_engine.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    RiskEngineError,
)
from risk_engine.events import Event, check_clock_skew
from risk_engine.profiles.guard import GuardedStore
from risk_engine.profiles.integrity import Incidents
from risk_engine.profiles.model import Profile
from risk_engine.scopes import Scope
from risk_engine.sealing import seal_into

log = logging.getLogger("risk_engine.api")

# A public address every City database places: the GeoIP part of readiness.
READINESS_PROBE_IP = ip_address("8.8.8.8")


class JsonLinesFile:
    """Appends JSON Lines: one O_APPEND write per record, so processes interleave whole lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)


def scorer_info(scorer: Scorer) -> ScorerInfo:
    """A model and policy as /v1/model shows them."""
    summary = scorer.artifact.summary()
    policy = scorer.policy
    thresholds = {
        name: {
            "actions": cls.actions,
            "step_up": cls.step_up,
            "deny": cls.deny,
            "required_acr": cls.required_acr.value,
            "max_age": cls.max_age,
            "fail_mode": cls.fail_mode.value,
        }
        for name, cls in policy.classes.items()
    }
    return ScorerInfo(
        model_version=summary["model_version"],
        kind=summary["kind"],
        schema_hash=summary["schema_hash"],
        feature_version=summary["feature_version"],
        created_at=summary["created_at"],
        policy_version=policy.version,
        thresholds=thresholds,
        floors={code: outcome.value for code, outcome in policy.floors.items()},
        training=summary["training"],
        metrics=summary["metrics"],
    )


class Service:
    """The engine, its audit and feedback logs and its metrics, behind the endpoints."""

    def __init__(
        self, settings: Settings, engine: Engine, *, metrics: Metrics, owns_engine: bool
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self.owns_engine = owns_engine
        inner = engine.store.inner if isinstance(engine.store, CountingStore) else engine.store
        # A store that is down is not asked again on every request (profiles.guard).
        self.guard = inner if isinstance(inner, GuardedStore) else GuardedStore(inner)
        engine.store = CountingStore(self.guard, metrics.store_errors)
        incidents = getattr(self.guard.inner, "incidents", None)
        if isinstance(incidents, Incidents):
            incidents.listen(lambda kind: metrics.store_incidents.labels(kind).inc())
        # The audit record always carries the features; responses only when configured.
        engine.include_features = True
        # Feedback is accepted only for events decided here: the store keeps their ids.
        engine.keep_events = True
        # Records leave the request path for a thread of this process (audit_writer.py).
        self.audit_writer = AuditWriter(
            AuditLog(
                settings.audit_path,
                settings.resolve_audit_key(),
                segment_bytes=settings.audit_segment_bytes,
                daily=settings.audit_segment_daily,
            ),
            max_records=settings.audit_queue_records,
            max_delay_s=settings.audit_flush_ms / 1000,
            on_lost=metrics.audit_errors.inc,
        )
        self.feedback_log = JsonLinesFile(settings.feedback_path)
        self.decision_log: DecisionLogWriter | DecisionLogProcess | None = None
        url = settings.decision_log_url
        if url is not None:
            self.decision_log = open_decision_log_writer(
                url, writer=settings.decision_log_writer, geo=engine.geo, hasher=engine.hasher
            )
            self.decision_log.start()
        self._reload_lock = threading.Lock()
        metrics.set_models(engine.scorer, engine.shadow)

    def close(self) -> None:
        if self.decision_log is not None:
            self.decision_log.close()
        self.audit_writer.close()
        self.feedback_log.close()
        if self.owns_engine:
            self.engine.store.close()

    def audit(self, kind: RecordKind, fields: dict[str, Any]) -> None:
        """Hand an audit record to the writer; a failing disk is counted and logged, never raised.

        The record names its ``caller``: the id of the API key the request came with
        (set by the auth check for this request), or ``auth-disabled``. It is read
        here, in the request's context, which the writer thread does not share.
        """
        self.audit_writer.submit(kind, {**fields, "caller": current_caller()})

    def flush_audit(self) -> None:
        """Wait until every audit record handed in so far is written (for readers of the file)."""
        self.audit_writer.flush()

    # -- decisions ------------------------------------------------------------------------

    def decide(self, event: Event) -> Decision:
        """Decide one event, count it and audit it; the shadow verdict is logged, not enforced.

        The decision comes back whole (features, shadow): ``render`` decides what
        the application sees of it. An event too far from the server clock (the skew
        settings) is refused before it is scored or learned.
        """
        settings = self.settings
        if settings.max_future_skew_s or settings.max_past_skew_s:
            check_clock_skew(
                event,
                time.time(),
                max_future_s=settings.max_future_skew_s,
                max_past_s=settings.max_past_skew_s,
            )
        started = time.perf_counter()
        decision = self.engine.decide(event)
        self.audit_writer.submit(RecordKind.DECISION, self._decision_record(event, decision))
        if self.decision_log is not None:
            self.decision_log.decision(event, decision)
        self.metrics.observe_decision(decision, time.perf_counter() - started)
        return decision

    def _decision_record(self, event: Event, decision: Decision) -> Callable[[], dict[str, Any]]:
        """The decision's audit record, to be made on the writer thread.

        Sealing the personal fields is most of an audit record's cost, so it is left
        to the writer. What it reads is this request's alone and never changes: the
        event and decision are frozen models, their lists and dicts made for this
        decision; the caller is read now, since the writer has no request context.
        """
        caller, hasher = current_caller(), self.engine.hasher

        def record() -> dict[str, Any]:
            fields = decision_record(event, decision, decision.features, hasher)
            fields["caller"] = caller
            return fields

        return record

    def render(self, decision: Decision) -> tuple[bytes, list[tuple[str, str]]]:
        """The response body and extra headers: the contract's decision, with step_up's hint.

        Features only when configured; the shadow verdict never (it is in the audit).
        """
        body = decision.contract_dict(features=self.settings.include_features, shadow=False)
        headers = []
        if decision.decision is Outcome.STEP_UP and decision.challenge is not None:
            headers.append(("WWW-Authenticate", decision.challenge.www_authenticate))
        return orjson.dumps(body), headers

    # -- step-up results ------------------------------------------------------------------

    def complete_challenge(self, challenge_id: str, body: ChallengeResultIn) -> ChallengeResultOut:
        """Apply a reported step-up result; every one, refused or not, is audited.

        The session id and the user's key are sealed under the user's data key; a
        refused result, whose user is not known here, records neither.
        """
        acr = body.acr or body.method.acr
        record: dict[str, Any] = {
            "challenge_id": challenge_id,
            "method": body.method.value,
            "passed": body.passed,
            "acr": acr.value,
        }
        try:
            result = self.engine.complete_challenge(
                challenge_id, passed=body.passed, session_id=body.session_id, acr=acr
            )
        except RiskEngineError as exc:
            refused = {NotFoundError: "not_found", ConflictError: "conflict"}.get(
                type(exc), "error"
            )
            self.metrics.challenge_results.labels(refused).inc()
            self.audit(
                RecordKind.CHALLENGE_RESULT,
                {**record, "outcome": refused, "error": exc.code, "message": exc.message},
            )
            self._log_entry(LogEntry.CHALLENGE_RESULT, challenge_id=challenge_id, outcome=refused)
            raise
        if result.satisfied:
            outcome = "passed"
        else:
            outcome = "insufficient_acr" if result.passed else "failed"
        self.metrics.challenge_results.labels(outcome).inc()
        self._log_entry(
            LogEntry.CHALLENGE_RESULT,
            event_id=result.event_id,
            challenge_id=challenge_id,
            outcome=outcome,
            detail={"method": body.method.value, "acr": acr.value},
        )
        record.update(outcome=outcome, event_id=result.event_id, satisfied=result.satisfied)
        personal = {"user_key": result.user_key, "session_id": body.session_id}
        seal_personal(record, personal, result.sealing, RecordKind.CHALLENGE_RESULT)
        self.audit(RecordKind.CHALLENGE_RESULT, record)
        return ChallengeResultOut(
            challenge_id=result.challenge_id,
            event_id=result.event_id,
            passed=result.passed,
            satisfied=result.satisfied,
            acr=result.acr,
        )

    # -- feedback and erasure -------------------------------------------------------------

    def feedback(self, event_id: str, body: FeedbackIn) -> FeedbackOut:
        """Label an event decided here: appended to the feedback file (training) and audited.

        An event never decided (or past retention, or of an erased user) is a
        NotFoundError; another label than the one it has, a ConflictError; the same
        label again changes nothing. The user id and note are sealed under the
        user's data key, in the file and in the audit log alike.
        """
        label = body.label.value
        kept = self.engine.store.label_event(event_id, label)
        if kept is None:
            raise NotFoundError(
                f"no decision is kept for event {event_id}: feedback is for decided events",
                field="event_id",
            )
        if kept.label != label:
            raise ConflictError(f"event {event_id} is labelled {kept.label} already", field="label")
        if not kept.new:
            return FeedbackOut(event_id=event_id, label=body.label)
        personal: dict[str, Any] = {}
        if body.user_id is not None:
            personal["user_id"] = body.user_id
        if body.note is not None:
            personal["note"] = body.note
        profile = self.engine.store.get(kept.user_key) if personal else None
        # No profile left (past retention): what would be sealed is left out instead.
        sealing = (profile.ref, profile.data_key) if profile is not None else None
        record: dict[str, Any] = {"event_id": event_id, "label": label}
        audited = dict(record)
        if sealing is not None:
            seal_into(record, personal, *sealing)
            seal_personal(audited, personal, sealing, RecordKind.FEEDBACK)
        record["ts"] = round(time.time(), 6)
        try:
            self.feedback_log.append(record)
        except OSError as exc:
            raise ConfigurationError(
                f"feedback file {self.feedback_log.path} cannot be written: {exc}"
            ) from exc
        self.audit(RecordKind.FEEDBACK, audited)
        self._log_entry(LogEntry.FEEDBACK, event_id=event_id, outcome=body.label.value)
        return FeedbackOut(event_id=event_id, label=body.label)

    def erase(self, user_id: str) -> None:
        """Erase everything kept of a user; NotFoundError when no profile was kept.

        The store deletes the profile with its data key (which shreds the user's
        sealed audit and feedback fields), burst entries, pending challenges and
        decided events. The audit record names the erased profile's ref, which
        now opens nothing, never the user id or its keyed hash.
        """
        profile = None
        erased = False
        try:
            # During a secret rotation the user may be kept under the previous key too.
            for user_key in self.engine.user_keys(user_id):
                profile = profile or self.engine.store.get(user_key)
                erased = self.engine.store.delete(user_key) or erased
        except RiskEngineError:
            self.audit(RecordKind.ERASURE, {"outcome": "error"})
            raise
        logged = self.decision_log.erase_user(user_id) if self.decision_log is not None else 0
        fields: dict[str, Any] = {"outcome": "erased" if erased else "absent"}
        if profile is not None:
            fields["ref"] = profile.ref
        self.audit(RecordKind.ERASURE, fields)
        self._log_entry(LogEntry.ERASURE, outcome="erased" if erased or logged else "absent")
        if not erased:
            raise NotFoundError("no profile is kept for this user", field="user_id")

    # -- the decision log and the console ------------------------------------------------

    def _log_entry(self, kind: LogEntry, **fields: Unpack[EntryFields]) -> None:
        if self.decision_log is not None:
            self.decision_log.entry(kind, **fields)

    def decision_log_or_fail(self) -> DecisionLogWriter | DecisionLogProcess:
        """The decision log; ConfigurationError when the operator turned it off."""
        if self.decision_log is None:
            raise ConfigurationError(
                "the decision log is off (RISK_ENGINE_DECISION_LOG=off): nothing to query"
            )
        return self.decision_log

    def key_allowed(self, key_sha256: str, scope: Scope) -> bool:
        """Whether the key with this digest holds ``scope`` (any key when auth is off)."""
        return self.settings.auth_disabled or scope in scopes_of_digest(self.settings, key_sha256)

    def note_console(self, what: str, key_id: str | None) -> None:
        """Audit a console sign-in, refusal or sign-out."""
        self.audit(RecordKind.CONSOLE, {"action": what, "key_id": key_id})

    def devices_of(self, user_id: str) -> list[dict[str, Any]]:
        """The user's devices as the profile keeps them, most recently used first."""
        profile = self.engine.store.get(self.engine.user_key(user_id))
        if profile is None:
            return []
        now = time.time()
        out = []
        for device in sorted(profile.devices.values(), key=lambda d: -d.last_ts):
            label = f"{device.ua_family or 'unknown browser'} {device.ua_major}".strip()
            if device.os_family:
                label += f" on {device.os_family}"
            if device.is_trusted(now):
                trust = "trusted"
            elif device.trusted:
                trust = "trust expired"
            else:
                trust = "untrusted"
            out.append(
                {
                    "key": device.key,
                    "label": label,
                    "first_ts": device.first_ts,
                    "last_ts": device.last_ts,
                    "count": device.count,
                    "trusted": device.is_trusted(now),
                    "trust": trust,
                }
            )
        return out

    def untrust_device(self, user_id: str, device_key: str) -> None:
        """Take a device's trust away: its next use looks like a new device's. Audited."""
        user_key = self.engine.user_key(user_id)
        if self.engine.store.get(user_key) is None:
            raise NotFoundError("no profile is kept for this user", field="user_id")

        def untrust(profile: Profile) -> bool:
            device = profile.devices.get(device_key)
            if device is None:
                return False
            device.trusted = False
            device.trusted_until = None
            return True

        if not self.engine.store.update(user_key, untrust):
            raise NotFoundError("the user has no such device", field="device_key")
        self.audit(RecordKind.DEVICE_UNTRUSTED, {"user_key": user_key, "device_key": device_key})

    # -- operations -----------------------------------------------------------------------

    def readiness(self, *, detailed: bool = False) -> Readiness:
        """Store reachable, GeoIP answering, model loaded: each ``ok`` or ``failed``.

        The store fails the check when its ping fails and also for a while after any
        of its calls failed: a store whose ping answers may be failing its writes.
        ``detailed`` (for operators) says what failed instead: store URLs and error
        text are no business of an anonymous probe.
        """
        checks: dict[str, str] = {}
        try:
            self.engine.store.ping()
            trouble = self.guard.trouble()
            checks["store"] = "ok" if trouble is None else f"failing recently: {trouble}"
        except RiskEngineError as exc:
            checks["store"] = exc.message
        try:
            self.engine.geo.lookup(READINESS_PROBE_IP)
            checks["geoip"] = "ok"
        except RiskEngineError as exc:
            checks["geoip"] = exc.message
        checks["model"] = "ok" if self.engine.scorer is not None else "no model is loaded"
        ready = all(v == "ok" for v in checks.values())
        if not detailed:
            checks = {name: "ok" if v == "ok" else "failed" for name, v in checks.items()}
        return Readiness(status="ready" if ready else "not_ready", checks=checks)

    def model_info(self) -> ModelInfo:
        """The live model and policy, and the shadow pair if any."""
        scorer = self.engine.scorer
        if scorer is None:
            raise ConfigurationError("no model is loaded: train one with `risk-engine train`")
        shadow = self.engine.shadow
        return ModelInfo(
            **scorer_info(scorer).model_dump(),
            shadow=scorer_info(shadow) if shadow is not None else None,
        )

    def reload(self) -> ModelInfo:
        """Load model, policy and shadow from their paths, then swap; a bad file changes nothing.

        Requests in flight keep the Scorer they started with; the swap is one
        attribute store, so none is dropped or sees half a model.
        """
        with self._reload_lock:
            try:
                live, shadow = load_scorers(self.settings)
            except RiskEngineError as exc:
                self.metrics.reloads.labels("failed").inc()
                raise ConfigurationError(
                    f"reload refused, the running model is kept: {exc.message}"
                ) from exc
            except OSError as exc:
                self.metrics.reloads.labels("failed").inc()
                raise ConfigurationError(
                    f"reload refused, the running model is kept: {exc}"
                ) from exc
            self.engine.scorer = live
            self.engine.shadow = shadow
            self.metrics.reloads.labels("ok").inc()
            self.metrics.set_models(live, shadow)
        log.info("reloaded model %s, policy %s", live.model_version, live.policy.version)
        return self.model_info()

    def reload_quietly(self) -> None:
        """Reload on SIGHUP: errors are logged, the running model stays."""
        try:
            self.reload()
        except RiskEngineError as exc:
            log.error("%s", exc.message)
