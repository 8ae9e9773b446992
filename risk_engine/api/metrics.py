"""Prometheus metrics of one app (its own registry), and a store wrapper that counts failures.

Under several worker processes (``risk-engine serve --workers N`` sets
PROMETHEUS_MULTIPROC_DIR) each worker writes its values to files there and a
scrape, whichever worker answers it, sums them all (prometheus-client's
multiprocess mode): otherwise each scrape would see one worker's counts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from risk_engine.decision import Decision
from risk_engine.engine import Scorer
from risk_engine.errors import ProfileStoreError
from risk_engine.profiles.model import BurstCounts, Profile
from risk_engine.profiles.store import BurstNote, EventLabel, ProfileStore

T = TypeVar("T")

# Decisions take a few hundred µs; the tail up to seconds is a store timing out.
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Metrics:
    """The service's metrics, in a registry per app so that apps (and tests) never share."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.decisions = Counter(
            "risk_engine_decisions",
            "Decisions by action class and outcome",
            ["action_class", "decision"],
            registry=r,
        )
        self.latency = Histogram(
            "risk_engine_decision_seconds",
            "Time to decide one event (engine and audit)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.degraded = Counter(
            "risk_engine_degraded_decisions",
            "Decisions made in degraded mode (store or GeoIP unavailable)",
            registry=r,
        )
        self.store_errors = Counter(
            "risk_engine_store_errors",
            "Profile store operations that failed",
            ["operation"],
            registry=r,
        )
        self.store_incidents = Counter(
            "risk_engine_store_incidents",
            "Store faults met without failing a call: quarantined (a corrupt profile set"
            " aside, the user started afresh), update_undone (a failed statement undid its"
            " own update only), update_lost (an answered update that never reached the store)",
            ["kind"],
            registry=r,
        )
        self.challenge_results = Counter(
            "risk_engine_challenge_results",
            "Step-up results reported, by outcome",
            ["outcome"],
            registry=r,
        )
        self.audit_errors = Counter(
            "risk_engine_audit_errors", "Audit records that could not be written", registry=r
        )
        self.reloads = Counter(
            "risk_engine_reloads", "Model and policy reloads, by result", ["result"], registry=r
        )
        self.model_info = Gauge(
            "risk_engine_model_info",
            "The loaded model and policy (value 1)",
            ["role", "model_version", "policy_version", "schema_hash"],
            registry=r,
            # Across workers: 1 while any live worker serves that model.
            multiprocess_mode="livemax",
        )
        self._model_series: list[tuple[str, str, str, str]] = []

    def observe_decision(self, decision: Decision, seconds: float) -> None:
        self.decisions.labels(decision.action_class, decision.decision.value).inc()
        self.latency.observe(seconds)
        if decision.degraded:
            self.degraded.inc()

    def set_models(self, live: Scorer | None, shadow: Scorer | None) -> None:
        """Replace the model info series (after start-up or a reload)."""
        for series in self._model_series:
            # Zeroed, not only removed: a worker's file keeps what it last wrote.
            self.model_info.labels(*series).set(0)
        self.model_info.clear()
        self._model_series = [
            (role, scorer.model_version, scorer.policy.version, scorer.artifact.schema_hash)
            for role, scorer in (("live", live), ("shadow", shadow))
            if scorer is not None
        ]
        for series in self._model_series:
            self.model_info.labels(*series).set(1)

    def exposition(self) -> bytes:
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """This process is leaving: its live gauges no longer count."""
        directory = multiprocess_dir()
        if directory is not None:
            multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR when set: the worker processes' shared metrics."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class CountingStore:
    """A ProfileStore that counts each failed operation, then lets the error through."""

    def __init__(self, inner: ProfileStore, counter: Counter) -> None:
        self.inner = inner
        self._counter = counter

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ProfileStoreError:
            self._counter.labels(operation).inc()
            raise

    def update(self, user_key: str, fn: Callable[[Profile], T]) -> T:
        return self._call("update", lambda: self.inner.update(user_key, fn))

    def update_event(self, note: BurstNote, fn: Callable[[Profile, BurstCounts], T]) -> T:
        return self._call("update", lambda: self.inner.update_event(note, fn))

    def get(self, user_key: str) -> Profile | None:
        return self._call("get", lambda: self.inner.get(user_key))

    def delete(self, user_key: str) -> bool:
        return self._call("delete", lambda: self.inner.delete(user_key))

    def label_event(self, event_id: str, label: str) -> EventLabel | None:
        return self._call("label_event", lambda: self.inner.label_event(event_id, label))

    def sealing_keys(self) -> dict[str, str]:
        return self._call("sealing_keys", self.inner.sealing_keys)

    def burst_counts(self, ip_key: str, network: str, now: float) -> BurstCounts:
        return self._call("burst_counts", lambda: self.inner.burst_counts(ip_key, network, now))

    def record_burst(
        self, ip_key: str, network: str, user_key: str, ts: float, failed: bool
    ) -> None:
        self._call(
            "record_burst",
            lambda: self.inner.record_burst(ip_key, network, user_key, ts, failed),
        )

    def save_challenge(self, challenge_id: str, record: bytes, ttl_s: float, now: float) -> None:
        self._call(
            "save_challenge", lambda: self.inner.save_challenge(challenge_id, record, ttl_s, now)
        )

    def load_challenge(self, challenge_id: str, now: float) -> bytes | None:
        return self._call("load_challenge", lambda: self.inner.load_challenge(challenge_id, now))

    def claim_challenge(self, challenge_id: str, now: float) -> bool:
        return self._call("claim_challenge", lambda: self.inner.claim_challenge(challenge_id, now))

    def purge(self, older_than: float) -> int:
        return self._call("purge", lambda: self.inner.purge(older_than))

    def count(self) -> int:
        return self._call("count", self.inner.count)

    def ping(self) -> None:
        self._call("ping", self.inner.ping)

    def close(self) -> None:
        self.inner.close()
