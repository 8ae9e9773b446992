"""Properties of unanswered and failed step-ups, over generated event sequences.

For every action class of the bundled policy and every store: without a passed
challenge, a retry of a challenged action never gets a weaker decision, and an
unanswered or failed step-up never makes a later event look more familiar than the
same event would look had the step-up never happened.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from risk_engine.assembly import load_scorer
from risk_engine.decision import Decision, Outcome
from risk_engine.engine import Engine, Scorer
from risk_engine.events import parse_event
from risk_engine.features.registry import FEATURE_NAMES
from risk_engine.geo import GeoLocator
from risk_engine.privacy import Hasher
from risk_engine.profiles import MemoryStore, ProfileStore, RedisStore, SQLiteStore

# One action of each class of the bundled policy (risk_engine/data/policy.toml).
ACTIONS = {
    "read": "view_account",
    "login": "login",
    "money": "transfer",
    "account": "change_password",
    "privilege": "grant_role",
    "default": "approve_invoice",
}
IPS = ("84.208.20.110", "84.208.0.1", "81.2.69.160", "61.68.0.1", "1.2.3.4", "10.0.0.7")
DEVICES: tuple[dict[str, str] | None, ...] = (
    {
        "id": "d-laptop",
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "platform": "Win32",
        "timezone": "Europe/Oslo",
        "language": "nb-NO",
    },
    {
        "id": "d-laptop-2",
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/132.0.0.0 Safari/537.36",
        "platform": "Win32",
        "timezone": "Europe/Oslo",
        "language": "nb-NO",
    },
    {
        "id": "d-stranger",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        "timezone": "Asia/Tokyo",
        "language": "ja",
    },
    {"user_agent": "python-requests/2.31"},
    None,
)
SESSIONS = ("s-1", "s-2", None)
WEEK_S = 7 * 86400.0

# Feature -> +1 when a larger value is more familiar, -1 when a smaller one is.
# Velocity (activity and failures counted) is not familiarity: a retry is activity.
# The device state (known, similar, new, untrusted) is compared as a whole below.
FAMILIAR_UP = {
    "country_familiarity",
    "city_familiarity",
    "network_familiarity",
    "ip_familiarity",
    "hour_of_week_familiarity",
    "hour_of_day_familiarity",
    "action_familiarity",
    "session_known",
    "history_log_events",
    "history_log_days",
}
FAMILIAR_DOWN = {
    "geo_unknown",
    "travel_log_km",
    "speed_log_kmh",
    "impossible_travel",
    "new_country",
    "new_city",
    "new_network",
    "new_ip",
    "country_novelty",
    "network_novelty",
    "device_novelty",
    "session_ip_changed",
    "session_device_changed",
    "session_speed_log_kmh",
    "gap_log_days",
}
# Most familiar first: a device seen failing a step-up is less familiar than a new one.
DEVICE_STATES = ("device_known", "device_similar", "device_new", "device_untrusted")
TOLERANCE = 1e-9


def test_the_directions_name_features() -> None:
    named = FAMILIAR_UP | FAMILIAR_DOWN | set(DEVICE_STATES) | {"device_drift", "amount_z"}
    assert named <= set(FEATURE_NAMES)


def device_rank(features: dict[str, float]) -> int:
    """0 for a known device ... 4 for one that is none of the states (no history)."""
    return next(
        (i for i, name in enumerate(DEVICE_STATES) if features[name] > 0.5), len(DEVICE_STATES)
    )


def more_familiar(after: dict[str, float], before: dict[str, float]) -> list[str]:
    """The familiarity features on which ``after`` looks more familiar than ``before``."""
    moved = [n for n in FAMILIAR_UP if after[n] > before[n] + TOLERANCE]
    moved += [n for n in FAMILIAR_DOWN if after[n] < before[n] - TOLERANCE]
    if abs(after["amount_z"]) < abs(before["amount_z"]) - TOLERANCE:
        moved.append("amount_z")
    rank_after, rank_before = device_rank(after), device_rank(before)
    # A device with no history at all (rank 4) is compared only with itself.
    if rank_before < len(DEVICE_STATES) and rank_after < rank_before:
        moved.append("device_state")
    if rank_after == rank_before and after["device_drift"] < before["device_drift"] - TOLERANCE:
        moved.append("device_drift")
    return moved


@dataclass(frozen=True)
class Context:
    """Where an event comes from."""

    ip: str
    device: dict[str, str] | None
    session_id: str | None


contexts = st.builds(
    Context,
    ip=st.sampled_from(IPS),
    device=st.sampled_from(DEVICES),
    session_id=st.sampled_from(SESSIONS),
)


@dataclass(frozen=True)
class Step:
    """One event of a sequence, ``gap_s`` after the previous one."""

    action: str
    context: Context
    gap_s: float
    amount: float | None


def steps(action: st.SearchStrategy[str]) -> st.SearchStrategy[Step]:
    return st.builds(
        Step,
        action=action,
        context=contexts,
        gap_s=st.sampled_from([5.0, 60.0, 900.0, 3 * 3600.0, 86400.0]),
        amount=st.sampled_from([None, 20.0, 120.0, 5000.0]),
    )


@dataclass
class Arm:
    """An engine on a fresh store, fed one user's sequence; the clock follows the events."""

    engine: Engine
    user: str
    now: float = 0.0

    def decide(self, step: Step, event_id: str) -> Decision:
        data: dict[str, Any] = {
            "event_id": event_id,
            "timestamp": datetime.fromtimestamp(self.now, UTC).isoformat(),
            "user_id": self.user,
            "action": step.action,
            "ip": step.context.ip,
        }
        if step.context.session_id is not None:
            data["session_id"] = step.context.session_id
        if step.context.device is not None:
            data["device"] = step.context.device
        if step.amount is not None:
            data.update(amount=step.amount, currency="NOK", payee="NO93-8601-1117947")
        return self.engine.decide(parse_event(data))

    def history(self, history: list[Step]) -> None:
        """Earlier activity: each step-up in it passed, as the real user's would."""
        for i, step in enumerate(history):
            self.now += step.gap_s
            decision = self.decide(step, f"h-{i}")
            if decision.decision is Outcome.STEP_UP and decision.challenge is not None:
                self.engine.complete_challenge(
                    decision.challenge.id,
                    passed=True,
                    session_id=step.context.session_id,
                    acr=None,
                )


StoreFactory = Callable[[], ProfileStore]


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    locator = GeoLocator()
    yield locator
    locator.close()


@pytest.fixture(scope="module")
def bundled() -> Scorer:
    return load_scorer(None, None)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes fresh, empty stores of one backend; each is closed after the test."""
    made: list[ProfileStore] = []
    numbers = count()

    def make() -> ProfileStore:
        store: ProfileStore
        n = next(numbers)
        if request.param == "memory":
            store = MemoryStore()
        elif request.param == "sqlite":
            store = SQLiteStore(tmp_path / f"profiles-{n}.db")
        else:
            url = request.getfixturevalue("redis_url")
            store = RedisStore(url, prefix=f"{request.getfixturevalue('redis_prefix')}:{n}")
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def wary(scorer: Scorer, step_up: float) -> Scorer:
    """The bundled model with every class's step-up threshold at ``step_up`` (if lower).

    No class denies by score: a denied event is no challenged one, and the events
    under test are the challenged ones.
    """
    policy = scorer.policy.model_copy(deep=True)
    for cls in policy.classes.values():
        cls.step_up, cls.deny = min(cls.step_up, step_up), 1.0
    policy = type(policy).model_validate(policy.model_dump())
    return Scorer(artifact=scorer.artifact, policy=policy)


PROPERTY = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Scenario:
    """History, a challenged event and its outcome, then a later event (maybe its retry)."""

    history: list[Step]
    challenged: Step
    outcome: str
    later: Step
    retry: bool
    step_up: float


@st.composite
def scenarios(draw: st.DrawFn, action: str) -> Scenario:
    anything = steps(st.sampled_from(list(ACTIONS.values())))
    challenged = draw(steps(st.just(action)))
    retry = draw(st.booleans())
    later = draw(steps(st.just(action)) if retry else anything)
    if retry:
        later = Step(action, challenged.context, later.gap_s, challenged.amount)
    return Scenario(
        history=draw(st.lists(anything, max_size=5)),
        challenged=challenged,
        outcome=draw(st.sampled_from(["unanswered", "failed"])),
        later=later,
        retry=retry,
        # 1.0: the bundled policy; lower: every class steps up from that score on.
        step_up=draw(st.sampled_from([1.0, 0.3, 1e-6])),
    )


@pytest.mark.parametrize("action_class", list(ACTIONS))
def test_an_unanswered_or_failed_step_up_is_neither_lifted_nor_familiar(
    action_class: str, new_store: StoreFactory, geo: GeoLocator, bundled: Scorer
) -> None:
    @PROPERTY
    @given(scenario=scenarios(ACTIONS[action_class]))
    def check(scenario: Scenario) -> None:
        run(scenario, new_store, geo, bundled)

    check()


def run(scenario: Scenario, new_store: StoreFactory, geo: GeoLocator, bundled: Scorer) -> None:
    history, challenged, outcome = scenario.history, scenario.challenged, scenario.outcome
    later, retry = scenario.later, scenario.retry
    scorer = bundled if scenario.step_up >= 1.0 else wary(bundled, scenario.step_up)
    user = "u-" + uuid.uuid4().hex[:12]
    # A week back from now, whole weeks: stores keep profiles by wall-clock retention.
    start = (time.time() // WEEK_S - 1) * WEEK_S

    arms = []
    for _ in range(2):
        arm = Arm(Engine(store=new_store(), geo=geo, scorer=scorer, hasher=Hasher("p")), user)
        arm.engine.include_features = True
        arm.now = start
        arm.engine.clock = lambda arm=arm: arm.now
        arm.history(history)
        arms.append(arm)
    stepped, plain = arms

    stepped.now += challenged.gap_s
    first = stepped.decide(challenged, "e-challenged")
    if first.decision is Outcome.STEP_UP and outcome == "failed" and first.challenge is not None:
        stepped.engine.complete_challenge(
            first.challenge.id, passed=False, session_id=challenged.context.session_id, acr=None
        )
    # Only a challenged event is under test; the wary policies make most of them so.
    assume(first.decision is Outcome.STEP_UP)
    # The later event at the same moment in both arms.
    stepped.now += later.gap_s
    plain.now = stepped.now
    after = stepped.decide(later, "e-later")
    without = plain.decide(later, "e-later")

    assert after.features is not None and without.features is not None
    moved = more_familiar(after.features, without.features)
    assert not moved, (first.decision, outcome, moved)
    if retry:
        assert after.decision.rank >= first.decision.rank, (outcome, first, after)
