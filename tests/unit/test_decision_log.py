"""The decision log on SQLite and PostgreSQL: writes, filters, pages, timeline, erasure."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from risk_engine.decision import Acr, Challenge, Decision, Outcome, Reason
from risk_engine.decision_log import DecisionFilter, DecisionLog, DecisionLogWriter, LogEntry
from risk_engine.decision_log.entries import Cursor
from risk_engine.errors import InvalidEventError
from risk_engine.events import Event, parse_event

START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
CLASSES = {"login": "login", "transfer": "money", "view_account": "read"}


def make_pair(
    n: int, *, user: str = "alice", minutes: float = 0.0, decision: Outcome = Outcome.ALLOW
) -> tuple[Event, Decision]:
    action = ("login", "transfer", "view_account")[n % 3]
    when = START + timedelta(minutes=minutes or n)
    event = parse_event(
        {
            "event_id": f"e-{user}-{n}",
            "timestamp": when.isoformat(),
            "user_id": user,
            "action": action,
            "ip": "84.208.0.1",
            "session_id": f"s-{user}-{n // 3}",
            "device": {"id": f"dev-{user}", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"},
            **({"amount": 100.0 + n, "currency": "NOK"} if action == "transfer" else {}),
        }
    )
    reasons = [Reason(code="new_device", detail="never seen")] if n % 2 else []
    challenge = None
    if decision is Outcome.STEP_UP:
        challenge = Challenge(
            id=f"c-{user}-{n}",
            expires_at="2026-03-01T09:00:00Z",
            required_acr=Acr.MFA,
            max_age=300,
            www_authenticate="Bearer",
        )
    out = Decision(
        event_id=event.event_id,
        score=(n % 10) / 10 + 0.05,
        decision=decision,
        reasons=reasons,
        required_acr=Acr.MFA if decision is Outcome.STEP_UP else None,
        model_version="m-1",
        decision_id=f"d-{user}-{n:05d}",
        policy_version="p-1",
        action_class=CLASSES[action],
        challenge=challenge,
        features={"geo_distance_km": float(n)},
        shadow={"decision": "step_up", "score": 0.5} if n % 5 == 0 else None,
    )
    return event, out


@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'decisions.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def writer(log_url: str) -> Iterator[DecisionLogWriter]:
    out = DecisionLogWriter(DecisionLog(log_url), device_key=lambda d: "h-" + d[::-1])
    out.start()
    yield out
    out.close()


def fill(writer: DecisionLogWriter, n: int, **kwargs: Any) -> None:
    for i in range(n):
        writer.decision(*make_pair(i, **kwargs))
    assert writer.flush()


def all_pages(log: DecisionLog, where: DecisionFilter, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = log.decisions(where, limit=limit, cursor=cursor)
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = Cursor.decode(page.next_cursor)


def test_filters_and_pages_newest_first(writer: DecisionLogWriter) -> None:
    fill(writer, 30)
    fill(writer, 6, user="bob", decision=Outcome.STEP_UP)
    log = writer.log
    everything = all_pages(log, DecisionFilter(), 7)
    assert len(everything) == 36
    stamps = [(d["timestamp"], d["decision_id"]) for d in everything]
    assert stamps == sorted(stamps, reverse=True)
    assert len({d["decision_id"] for d in everything}) == 36
    bob = all_pages(log, DecisionFilter(user_id="bob"), 4)
    assert {d["user_id"] for d in bob} == {"bob"} and len(bob) == 6
    stepped = log.decisions(DecisionFilter(decision="step_up"), limit=100).items
    assert {d["decision_id"] for d in stepped} == {d["decision_id"] for d in bob}
    money = log.decisions(DecisionFilter(action_class="money", user_id="alice"), limit=100)
    assert len(money.items) == 10 and all(d["action"] == "transfer" for d in money.items)
    with_reason = all_pages(log, DecisionFilter(reason="new_device"), 5)
    assert len(with_reason) == 18
    assert all(r["code"] == "new_device" for d in with_reason for r in d["reasons"])
    since = (START + timedelta(minutes=10)).timestamp()
    until = (START + timedelta(minutes=20)).timestamp()
    window = log.decisions(DecisionFilter(user_id="alice", since=since, until=until), limit=100)
    assert len(window.items) == 10
    assert log.decisions(DecisionFilter(model_version="other"), limit=10).items == []


def test_a_row_keeps_what_the_console_shows(writer: DecisionLogWriter) -> None:
    fill(writer, 3)
    row = writer.log.decision("d-alice-00001")
    assert row is not None
    assert row["user_id"] == "alice" and row["action"] == "transfer"
    assert row["amount"] == 101.0 and row["currency"] == "NOK"
    assert row["ip"] == "84.208.0.0"  # truncated like the audit log
    assert row["device"]["key"] == "h-" + "dev-alice"[::-1]
    assert row["reasons"] == [{"code": "new_device", "detail": "never seen"}]
    assert row["features"] == {"geo_distance_km": 1.0}
    assert row["timestamp"] == "2026-03-01T08:01:00Z"


def test_timeline_attaches_step_up_results_and_feedback(writer: DecisionLogWriter) -> None:
    fill(writer, 3, decision=Outcome.STEP_UP)
    writer.entry(
        LogEntry.CHALLENGE_RESULT,
        event_id="e-alice-1",
        challenge_id="c-alice-1",
        outcome="passed",
        detail={"method": "webauthn"},
    )
    writer.entry(LogEntry.FEEDBACK, event_id="e-alice-2", outcome="confirmed_fraud")
    assert writer.flush()
    page = writer.log.timeline("alice", limit=10)
    by_event = {item["event_id"]: item for item in page.items}
    assert [e["outcome"] for e in by_event["e-alice-1"]["step_up_results"]] == ["passed"]
    assert by_event["e-alice-1"]["step_up_results"][0]["detail"] == {"method": "webauthn"}
    assert [e["outcome"] for e in by_event["e-alice-2"]["feedback"]] == ["confirmed_fraud"]
    assert by_event["e-alice-0"]["feedback"] == []


def test_overview_counts_from_rollups(writer: DecisionLogWriter) -> None:
    fill(writer, 20)
    fill(writer, 4, user="bob", decision=Outcome.STEP_UP)
    writer.entry(
        LogEntry.CHALLENGE_RESULT, event_id="e-bob-0", outcome="passed", ts=START.timestamp()
    )
    assert writer.flush()
    overview = writer.log.overview(START.timestamp(), (START + timedelta(hours=2)).timestamp())
    assert overview.total == 24
    assert overview.decisions == {"allow": 20, "step_up": 4}
    assert sum(overview.score_bins) == 24
    assert overview.step_ups == {"issued": 4, "passed": 1}
    assert dict(overview.top_reasons)["new_device"] == 12
    assert overview.model_versions == {"m-1": 24}
    assert sum(overview.shadow.values()) == 4 + 1
    assert len(overview.hours) == 2
    assert sum(overview.by_class["login"]["allow"]) == 7


def test_erasure_removes_every_row_of_the_user_only(writer: DecisionLogWriter) -> None:
    fill(writer, 9)
    fill(writer, 9, user="bob")
    writer.entry(LogEntry.FEEDBACK, event_id="e-alice-3", outcome="confirmed_fraud")
    writer.entry(LogEntry.FEEDBACK, event_id="e-bob-3", outcome="confirmed_legit")
    assert writer.erase_user("alice") == 9
    log = writer.log
    assert log.decisions(DecisionFilter(user_id="alice"), limit=50).items == []
    assert log.decisions(DecisionFilter(reason="new_device", user_id="alice"), limit=50).items == []
    assert len(log.decisions(DecisionFilter(user_id="bob"), limit=50).items) == 9
    assert log.timeline("bob", limit=50).items[5]["feedback"][0]["outcome"] == "confirmed_legit"
    if log.path is not None:
        for path in log.path.parent.iterdir():
            assert b"alice" not in path.read_bytes(), path


def test_purge_drops_what_retention_ended(writer: DecisionLogWriter) -> None:
    fill(writer, 10)
    writer.log.purge((START + timedelta(minutes=5)).timestamp())
    left = writer.log.decisions(DecisionFilter(), limit=50).items
    assert len(left) == 5


def test_a_forged_cursor_is_a_422_naming_the_field() -> None:
    with pytest.raises(InvalidEventError) as caught:
        Cursor.decode("not-a-cursor")
    assert caught.value.field == "cursor"


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    writer = DecisionLogWriter(DecisionLog(f"sqlite:///{tmp_path / 'd.db'}"), max_queue=3)
    for i in range(5):  # the thread is not started: nothing drains
        writer.decision(*make_pair(i))
    assert writer.dropped == 2
    writer.close()
    assert (
        sqlite3.connect(tmp_path / "d.db").execute("select count(*) from decisions").fetchone()[0]
        == 3
    )


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(limit=st.integers(1, 12), n=st.integers(0, 25), same_minute=st.booleans())
def test_pages_cover_every_row_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, limit: int, n: int, same_minute: bool
) -> None:
    where = tmp_path_factory.mktemp("pages")
    writer = DecisionLogWriter(DecisionLog(f"sqlite:///{where / 'd.db'}"))
    for i in range(n):
        writer.decision(*make_pair(i, minutes=1.0 if same_minute else 0.0))
    writer.flush()
    items = all_pages(writer.log, DecisionFilter(), limit)
    writer.close()
    keys = [(d["timestamp"], d["decision_id"]) for d in items]
    assert len(keys) == n and len(set(keys)) == n
    assert keys == sorted(keys, reverse=True)


def test_close_waits_for_a_call_in_flight_and_refuses_later_ones(tmp_path: Path) -> None:
    # A retention purge still running in a worker thread at shutdown: closing its
    # connection under it crashed the process (SQLite's C code).
    import threading

    from risk_engine.errors import DecisionLogError

    log = DecisionLog(f"sqlite:///{tmp_path / 'd.db'}")
    entered, release = threading.Event(), threading.Event()

    def purge_in_flight() -> None:
        with log._using():
            entered.set()
            release.wait(5)
            log._run_query("SELECT count(*) FROM decisions", [])

    worker = threading.Thread(target=purge_in_flight)
    worker.start()
    assert entered.wait(5)
    timer = threading.Timer(0.3, release.set)
    timer.start()
    started = time.perf_counter()
    log.close()
    assert time.perf_counter() - started >= 0.25
    worker.join(5)
    with pytest.raises(DecisionLogError):
        log.count()
