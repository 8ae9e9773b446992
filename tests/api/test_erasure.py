"""Erasure that erases: after DELETE /v1/users/{id} nothing the service keeps links to the user.

A victim and another user act through the real app (history, sessions, devices,
amounts, a step-up left pending, feedback with a note); the victim is erased.
Then every file under the var directory (SQLite's -wal and -shm too) and every
Redis key and value under the test's prefix is searched for the victim's id, its
keyed hash, its session ids, its device, its note and its profile's ``ref``: none
may be found in the store, and in the logs the ``ref`` may only name records whose
key is gone. The other user's data stays whole and readable, and the audit chain
still verifies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.assembly import build_engine
from risk_engine.audit import verify_chain
from risk_engine.config import Settings
from risk_engine.engine import Engine
from risk_engine.offline.logs import LogReport, read_events
from risk_engine.policy import load_policy, save_policy
from risk_engine.profiles.redis import RedisStore
from tests.api.conftest import flush_audit

EventFactory = Callable[..., dict[str, Any]]
AUTH = {"Authorization": "Bearer rek_test-key-for-the-api-tests"}
ADMIN_AUTH = {"Authorization": "Bearer rek_test-admin-key-for-the-api-tests"}
OSLO, SYDNEY = "84.208.0.1", "203.2.218.214"
VICTIM, OTHER = "u-victim-5e1f0a", "u-other-77c2d9"
NOTE = "chargeback-note-victim-4711"


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def device(user_id: str, mobile: bool = False) -> dict[str, str]:
    """A device whose id and User-Agent name the user, so that any copy of them is found."""
    agent = f"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) Safari/605.1.15 Probe/{user_id}"
    if mobile:
        agent = f"Mozilla/5.0 (Linux; Android 14; SM-S918B) Chrome/123.0 Mobile Probe/{user_id}"
    return {
        "id": f"dev-{user_id}" + ("-phone" if mobile else ""),
        "user_agent": agent,
        "platform": "MacIntel",
        "timezone": "Europe/Oslo",
        "language": "nb-NO",
    }


@pytest.fixture
def risky_policy(tmp_path: Path) -> Path:
    """Nothing is denied: the impossible-travel floor makes the Sydney login a step_up."""
    policy = load_policy()
    for cls in policy.classes.values():
        cls.deny = 1.0
    save_policy(policy, tmp_path / "policy.toml")
    return tmp_path / "policy.toml"


def act(client: TestClient, make_event: EventFactory, user_id: str) -> dict[str, Any]:
    """Three days of history, transfers with amounts, then a Sydney login left pending."""
    now = datetime.now(UTC)
    sessions: list[str] = []
    event_ids: list[str] = []
    for day in range(3, 0, -1):
        session = f"sess-{user_id}-{day}"
        sessions.append(session)
        for i, action in enumerate(("login", "view_account", "transfer")):
            extra: dict[str, Any] = {"amount": 4711.5, "currency": "NOK"} if i == 2 else {}
            event = make_event(
                user_id=user_id,
                action=action,
                ip=OSLO,
                session_id=session,
                device=device(user_id),
                timestamp=stamp(now - timedelta(days=day, minutes=-3 * i)),
                **extra,
            )
            response = client.post("/v1/decisions", json=event)
            assert response.status_code == 200, response.text
            event_ids.append(event["event_id"])
    session = f"sess-{user_id}-sydney"
    sessions.append(session)
    risky = make_event(
        user_id=user_id,
        ip=SYDNEY,
        session_id=session,
        device=device(user_id, mobile=True),
        timestamp=stamp(now - timedelta(minutes=2)),
    )
    response = client.post("/v1/decisions", json=risky)
    assert response.status_code == 200, response.text
    decision = response.json()
    assert decision["decision"] == "step_up", decision
    feedback = {"label": "confirmed_legit", "user_id": user_id, "note": f"{NOTE}-{user_id}"}
    response = client.post(f"/v1/events/{event_ids[0]}/feedback", json=feedback)
    assert response.status_code == 200, response.text
    return {
        "sessions": sessions,
        "challenge": decision["challenge"]["id"],
        "risky_session": session,
        "event_ids": event_ids,
    }


def needles(engine: Engine, user_id: str, sessions: list[str]) -> dict[str, bytes]:
    """Everything that would link a stored byte back to the user."""
    user_key = engine.user_key(user_id)
    found = {
        "user id": user_id.encode(),
        "user key": user_key.encode(),
        "note": f"{NOTE}-{user_id}".encode(),
        "device id": f"dev-{user_id}".encode(),
        "device hash": engine.hasher.digest("device", f"dev-{user_id}").encode(),
    }
    for session in sessions:
        found[f"session {session}"] = session.encode()
        found[f"session hash {session}"] = engine.hasher.digest("session", session).encode()
    return found


def var_files(var: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(var.rglob("*")):
        if path.is_file():
            yield str(path), path.read_bytes()


def redis_items(url: str, prefix: str) -> Iterator[tuple[str, bytes]]:
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            kind = client.type(key)
            if kind == b"string":
                value = client.get(key) or b""
            elif kind == b"hash":
                value = orjson.dumps({k.hex(): v.hex() for k, v in client.hgetall(key).items()})
                value += b"".join(k + v for k, v in client.hgetall(key).items())
            elif kind == b"zset":
                value = b"".join(client.zrange(key, 0, -1))
            elif kind == b"set":
                value = b"".join(client.smembers(key))
            else:
                value = b""
            yield f"redis {key!r}", key + b"\x00" + value
    finally:
        client.close()


@contextmanager
def service(
    kind: str, tmp_path: Path, settings: Settings, redis_url: str | None, prefix: str | None
) -> Iterator[TestClient]:
    if kind == "redis":
        assert redis_url is not None and prefix is not None
        engine = build_engine(settings, store=RedisStore(redis_url, prefix=prefix))
        try:
            with TestClient(create_app(settings, engine=engine), headers=AUTH) as client:
                yield client
        finally:
            engine.store.close()
    else:
        with TestClient(create_app(settings), headers=AUTH) as client:
            yield client


@pytest.fixture(params=["sqlite", "redis", "memory"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None, str | None]:
    if request.param != "redis":
        return request.param, None, None
    url = request.getfixturevalue("redis_url")
    return "redis", url, request.getfixturevalue("redis_prefix")


def test_erasure_leaves_nothing_that_links_to_the_user(
    backend: tuple[str, str | None, str | None],
    make_settings: Callable[..., Settings],
    make_event: EventFactory,
    risky_policy: Path,
    tmp_path: Path,
) -> None:
    kind, redis_url, prefix = backend
    var = tmp_path / "var"
    store = {"sqlite": f"sqlite:///{var / 'profiles.db'}", "memory": "memory://"}.get(
        kind, "memory://"
    )
    settings = make_settings(store=store, var_dir=var, policy_path=risky_policy)
    with service(kind, tmp_path, settings, redis_url, prefix) as client:
        engine: Engine = client.app.state.service.engine  # type: ignore[attr-defined]
        victim = act(client, make_event, VICTIM)
        other = act(client, make_event, OTHER)
        victim_key, other_key = engine.user_key(VICTIM), engine.user_key(OTHER)
        victim_profile, other_profile = engine.store.get(victim_key), engine.store.get(other_key)
        assert victim_profile is not None and other_profile is not None

        assert client.delete(f"/v1/users/{VICTIM}", headers=ADMIN_AUTH).status_code == 204

        # The step-up left pending at erasure: 404, and no profile comes back.
        result = {"passed": True, "method": "totp", "session_id": victim["risky_session"]}
        response = client.post(f"/v1/challenges/{victim['challenge']}/result", json=result)
        assert response.status_code == 404, response.text
        assert engine.store.get(victim_key) is None
        ref, other_ref = victim_profile.ref, other_profile.ref
        # Feedback for the erased user's events is no longer accepted.
        response = client.post(
            f"/v1/events/{victim['event_ids'][1]}/feedback", json={"label": "confirmed_fraud"}
        )
        assert response.status_code == 404, response.text

        # The other user is whole: profile, pending challenge, feedback rules.
        assert engine.store.get(other_key) is not None
        keys = engine.store.sealing_keys()
        assert other_ref in keys and ref not in keys
        result = {"passed": True, "method": "totp", "session_id": other["risky_session"]}
        response = client.post(f"/v1/challenges/{other['challenge']}/result", json=result)
        assert response.status_code == 200, response.text
        response = client.post(
            f"/v1/events/{other['event_ids'][0]}/feedback", json={"label": "confirmed_fraud"}
        )
        assert response.status_code == 409, response.text

        report = LogReport(keys=keys)
        flush_audit(client)
        readable = list(read_events(settings.audit_path, report))
        assert {e.user_id for e in readable} == {OTHER}
        assert len(readable) == 10 and report.sealed == 10

    places: list[tuple[str, bytes]] = list(var_files(var))
    if kind == "redis":
        assert redis_url is not None and prefix is not None
        places += list(redis_items(redis_url, prefix))
    assert any(path.endswith("audit.jsonl") for path, _ in places)
    if kind == "sqlite":
        assert any(path.endswith("profiles.db") for path, _ in places)
    victim_needles = needles(engine, VICTIM, victim["sessions"])
    found = [
        f"{name} in {where}"
        for where, data in places
        for name, needle in victim_needles.items()
        if needle in data
    ]
    assert found == []
    # The ref is a random pseudonym: gone from the store; in the logs it names only
    # records whose key was shredded (the audit and feedback lines stay byte for byte).
    for where, data in places:
        if ref.encode() in data:
            assert where.endswith(("audit.jsonl", "feedback.jsonl")), where
    # The other user's records are still there and still name the user's ref.
    assert other_ref.encode() in settings.audit_path.read_bytes()
    chain = verify_chain(settings.audit_path, [settings.resolve_audit_key()])
    assert chain.ok, chain


def test_a_challenge_saved_with_raw_ids_before_the_upgrade_still_completes(
    make_settings: Callable[..., Settings], make_event: EventFactory, risky_policy: Path
) -> None:
    settings = make_settings(store="memory://", policy_path=risky_policy)
    with TestClient(create_app(settings), headers=AUTH) as client:
        engine: Engine = client.app.state.service.engine  # type: ignore[attr-defined]
        done = act(client, make_event, "u-upgraded")
        challenge_id = done["challenge"]
        record = orjson.loads(engine.store.load_challenge(challenge_id, time.time()) or b"")
        assert "user_id" not in record and record["user_key"] == engine.user_key("u-upgraded")
        # What an engine of the previous version saved: the raw ids.
        del record["user_key"], record["session_hash"]
        record.update(user_id="u-upgraded", session_id=done["risky_session"])
        engine.store.save_challenge(challenge_id, orjson.dumps(record), 60.0, time.time())
        wrong = {"passed": True, "method": "totp", "session_id": "sess-other"}
        response = client.post(f"/v1/challenges/{challenge_id}/result", json=wrong)
        assert response.status_code == 409, response.text
        result = {"passed": True, "method": "totp", "session_id": done["risky_session"]}
        response = client.post(f"/v1/challenges/{challenge_id}/result", json=result)
        assert response.status_code == 200, response.text
        assert response.json()["satisfied"] is True
