"""The decision log and the console with a million decisions: server time per query and page.

Fills a decision log (SQLite, and PostgreSQL when one answers) with N synthetic
decisions of U users over D days, written the way the service writes them
(DecisionLogWriter: batches, rollups), then times each query of the API and
each console page through the app in-process (server time: no network), the
median and the worst of a few runs, against the 300 ms target.

    .venv/bin/python benchmarks/bench_decision_log.py [--rows 1000000] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from reference import python_speed

from risk_engine.api import create_app
from risk_engine.config import Settings
from risk_engine.decision import Acr, Challenge, Decision, Outcome, Reason
from risk_engine.decision_log import DecisionFilter, DecisionLog, DecisionLogWriter, LogEntry
from risk_engine.events import parse_event

ADMIN_KEY = "rek_bench-admin-key"
REASONS = ("new_device", "new_country", "impossible_travel", "unusual_hour", "new_network")
ACTIONS = (("login", "login"), ("view_account", "read"), ("transfer", "money"))


def fill(log: DecisionLog, rows: int, users: int, days: int, seed: int = 1) -> float:
    """Write ``rows`` decisions through the writer; returns the seconds it took."""
    rng = random.Random(seed)
    writer = DecisionLogWriter(log)
    writer.start()
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    span = (end - start).total_seconds()
    started = time.perf_counter()
    for i in range(rows):
        action, action_class = ACTIONS[i % 3]
        user = f"u-{rng.randrange(users):06d}"
        when = start + timedelta(seconds=span * i / rows)
        event = parse_event(
            {
                "event_id": f"e-{i:08d}",
                "timestamp": when.isoformat(),
                "user_id": user,
                "action": action,
                "ip": f"84.208.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "session_id": f"s-{user}-{i // 20}",
                "device": {"id": f"d-{user}", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"},
            }
        )
        roll = rng.random()
        outcome = (
            Outcome.ALLOW if roll < 0.97 else Outcome.STEP_UP if roll < 0.995 else Outcome.DENY
        )
        reasons = [Reason(code=rng.choice(REASONS), detail="bench")] if roll > 0.8 else []
        decision = Decision(
            event_id=event.event_id,
            score=rng.random(),
            decision=outcome,
            reasons=reasons,
            required_acr=Acr.MFA if outcome is Outcome.STEP_UP else None,
            model_version="m-bench",
            decision_id="d-" + hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest(),
            policy_version="p-bench",
            action_class=action_class,
            challenge=Challenge(
                id=f"c-{i}",
                expires_at="2026-01-01T00:00:00Z",
                required_acr=Acr.MFA,
                max_age=300,
                www_authenticate="Bearer",
            )
            if outcome is Outcome.STEP_UP
            else None,
            features={f"f{j}": rng.random() for j in range(8)},
        )
        writer.decision(event, decision)
        if outcome is Outcome.STEP_UP and rng.random() < 0.8:
            writer.entry(
                LogEntry.CHALLENGE_RESULT,
                event_id=event.event_id,
                outcome="passed",
                ts=when.timestamp(),
            )
        while writer._queue.qsize() > 50_000:  # keep memory flat: let the thread catch up
            time.sleep(0.01)
    writer.flush(timeout=600)
    elapsed = time.perf_counter() - started
    return elapsed


def timed(call: Any, repeat: int = 5) -> tuple[float, float]:
    """Median and worst milliseconds of ``call()`` over ``repeat`` runs (after one warm-up)."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times), max(times)


def report(name: str, result: tuple[float, float]) -> None:
    median, worst = result
    verdict = "ok" if worst < 300 else "OVER 300 ms"
    print(f"  {name:<48} median {median:8.1f} ms   worst {worst:8.1f} ms   {verdict}")


def bench(url: str, rows: int, users: int, days: int, work: Path) -> None:
    log = DecisionLog(url)
    have = log.count()
    if have < rows:
        added = rows - have
        seconds = fill(log, added, users, days)
        print(f"  filled {added:,} decisions in {seconds:.0f} s ({added / seconds:,.0f}/s)")
    print(f"  {log.count():,} decisions in the log")
    now = time.time()
    user = "u-000042"
    first = log.decisions(DecisionFilter(), limit=50)
    deep = first.next_cursor
    from risk_engine.decision_log.entries import Cursor

    for _ in range(20):  # twenty pages in
        assert deep is not None
        deep = log.decisions(DecisionFilter(), limit=50, cursor=Cursor.decode(deep)).next_cursor
    checks = {
        "decisions, newest 50": lambda: log.decisions(DecisionFilter(), limit=50),
        "decisions, page 21 (cursor)": lambda: log.decisions(
            DecisionFilter(), limit=50, cursor=Cursor.decode(deep or "")
        ),
        "decisions of one user": lambda: log.decisions(DecisionFilter(user_id=user), limit=50),
        "decisions, step_up in class money": lambda: log.decisions(
            DecisionFilter(decision="step_up", action_class="money"), limit=50
        ),
        "decisions, deny": lambda: log.decisions(DecisionFilter(decision="deny"), limit=50),
        "decisions with reason impossible_travel": lambda: log.decisions(
            DecisionFilter(reason="impossible_travel"), limit=50
        ),
        "decisions, one day a week ago": lambda: log.decisions(
            DecisionFilter(since=now - 8 * 86400, until=now - 7 * 86400), limit=50
        ),
        "timeline of one user": lambda: log.timeline(user, limit=50),
        "overview, 24 h": lambda: log.overview(now - 86400, now),
        "overview, 30 days": lambda: log.overview(now - 30 * 86400, now),
    }
    for name, call in checks.items():
        report(name, timed(call))
    log.close()

    settings = Settings(
        store=f"sqlite:///{work / 'profiles.db'}",
        var_dir=work / "var",
        secret="bench-secret-" + "0" * 32,
        api_keys={"bench": f"admin:{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"},
        decision_log=url,
    )
    with TestClient(create_app(settings), follow_redirects=False) as client:
        client.post("/console/sign-in", data={"api_key": ADMIN_KEY})
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        pages = {
            "console overview (24 h)": "/console/overview",
            "console overview (30 days)": "/console/overview?range=30d",
            "console decisions": "/console/decisions",
            "console decisions, deny, class money": (
                "/console/decisions?decision=deny&action_class=money"
            ),
            f"console user {user}": f"/console/users/{user}",
        }
        for name, path in pages.items():
            report(name, timed(lambda p=path: client.get(p)))
        api = {
            "GET /v1/decisions?limit=50": "/v1/decisions?limit=50",
            "GET /v1/decisions?reason=new_country": "/v1/decisions?reason=new_country",
            f"GET /v1/users/{user}/timeline": f"/v1/users/{user}/timeline",
        }
        for name, path in api.items():
            report(name, timed(lambda p=path: client.get(p, headers=headers)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--sqlite", type=Path, default=None, help="reuse this file (kept)")
    parser.add_argument(
        "--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test", help="'' to skip"
    )
    args = parser.parse_args()
    print(python_speed())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = args.sqlite or work / "decisions.db"
        print(f"SQLite ({path})")
        bench(f"sqlite:///{path}", args.rows, args.users, args.days, work)
        if args.postgres_url:
            import psycopg

            schema = f"bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(args.postgres_url, autocommit=True) as connection:
                connection.execute(f"CREATE SCHEMA {schema}")
            try:
                print(f"PostgreSQL (schema {schema})")
                sep = "&" if "?" in args.postgres_url else "?"
                url = f"{args.postgres_url}{sep}options=-csearch_path%3D{schema}"
                bench(url, args.rows, args.users, args.days, work)
            finally:
                with psycopg.connect(args.postgres_url, autocommit=True) as connection:
                    connection.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
