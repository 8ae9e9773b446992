"""Health, readiness, metrics, model info, reload, feedback, erasure and the shadow model."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from risk_engine.api import create_app
from risk_engine.config import Settings
from risk_engine.offline.labels import load_labels
from risk_engine.offline.logs import LogReport
from risk_engine.policy import load_policy, save_policy
from tests.api.conftest import flush_audit

EventFactory = Callable[..., dict[str, Any]]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def audit_records(settings: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in settings.audit_path.read_bytes().splitlines()]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"store": "ok", "geoip": "ok", "model": "ok"},
    }


def test_metrics_count_decisions(
    client: TestClient, make_event: EventFactory, admin_auth: dict[str, str]
) -> None:
    for action in ("login", "login", "view_account"):
        assert client.post("/v1/decisions", json=make_event(action=action)).status_code == 200
    text = client.get("/metrics", headers=admin_auth).text
    found = samples(text)
    total = sum(v for (name, _), v in found.items() if name == "risk_engine_decisions_total")
    assert total == 3
    assert found[("risk_engine_decision_seconds_count", ())] == 3
    assert found[("risk_engine_degraded_decisions_total", ())] == 0
    model = client.get("/v1/model", headers=admin_auth).json()
    info = [k for k in found if k[0] == "risk_engine_model_info"]
    assert ("model_version", model["model_version"]) in info[0][1]


def test_model_info_shows_version_thresholds_and_training(
    client: TestClient, admin_auth: dict[str, str]
) -> None:
    body = client.get("/v1/model", headers=admin_auth).json()
    assert body["model_version"] and body["kind"] and len(body["schema_hash"]) == 16
    assert body["policy_version"]
    login = body["thresholds"]["login"]
    assert 0 < login["step_up"] < login["deny"] <= 1 and "login" in login["actions"]
    assert isinstance(body["training"], dict)
    assert body["shadow"] is None


def copy_model(source: Path, target_dir: Path) -> Path:
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / "model.joblib"
    shutil.copy(source, target)
    shutil.copy(source.with_name(source.name + ".sha256"), target.with_name("model.joblib.sha256"))
    return target


def test_reload_swaps_the_model_and_a_bad_file_keeps_the_old_one(
    make_settings: Callable[..., Settings],
    model_path: Path,
    tmp_path: Path,
    api_key: str,
    admin_auth: dict[str, str],
    make_event: EventFactory,
) -> None:
    live = copy_model(model_path, tmp_path / "live")
    settings = make_settings(model_path=live)
    with TestClient(create_app(settings), headers=admin_auth) as c:
        before = c.get("/v1/model").json()["model_version"]
        response = c.post("/v1/admin/reload")
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == before
        # A changed file no longer matches its checksum: refused, old model kept.
        live.write_bytes(live.read_bytes()[:-10] + b"0123456789")
        response = c.post("/v1/admin/reload")
        assert response.status_code == 500
        assert "reload refused" in response.json()["message"]
        assert "checksum" in response.json()["message"]
        assert c.get("/v1/model").json()["model_version"] == before
        app_key = {"Authorization": f"Bearer {api_key}"}
        assert c.post("/v1/decisions", json=make_event(), headers=app_key).status_code == 200
        metrics = samples(c.get("/metrics").text)
        assert metrics[("risk_engine_reloads_total", (("result", "failed"),))] == 1
        assert metrics[("risk_engine_reloads_total", (("result", "ok"),))] == 1


def test_shadow_verdict_is_audited_not_enforced(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    api_key: str,
    admin_auth: dict[str, str],
    make_event: EventFactory,
) -> None:
    strict = load_policy()
    for cls in strict.classes.values():
        cls.step_up, cls.deny = 0.0001, 0.0002  # the shadow denies everything
    strict.version = "shadow-strict"
    save_policy(strict, tmp_path / "strict.toml")
    settings = make_settings(shadow_policy_path=tmp_path / "strict.toml")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {api_key}"}) as c:
        event = make_event(action="view_account")
        body = c.post("/v1/decisions", json=event).json()
        assert body["decision"] != "deny" and "shadow" not in body
        shadow = c.get("/v1/model", headers=admin_auth).json()["shadow"]
        assert shadow["policy_version"] == "shadow-strict"
    record = audit_records(settings)[-1]
    assert record["event_id"] == event["event_id"]
    assert record["shadow"]["decision"] == "deny"
    assert record["shadow"]["policy_version"] == "shadow-strict"
    assert record["decision"] == body["decision"]


def test_feedback_is_a_training_label_and_audited(
    client: TestClient, settings: Settings, make_event: EventFactory
) -> None:
    for event_id in ("e-123", "e-124"):
        assert client.post("/v1/decisions", json=make_event(event_id=event_id)).is_success
    response = client.post(
        "/v1/events/e-123/feedback",
        json={"label": "confirmed_fraud", "user_id": "u-1", "note": "chargeback"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"event_id": "e-123", "label": "confirmed_fraud"}
    client.post("/v1/events/e-124/feedback", json={"label": "confirmed_legit"})
    flush_audit(client)
    lines = [orjson.loads(x) for x in settings.feedback_path.read_bytes().splitlines()]
    assert lines[0]["event_id"] == "e-123" and lines[0]["label"] == "confirmed_fraud"
    # The user id and the note are sealed under the user's key, not written out.
    assert "note" not in lines[0] and b"chargeback" not in settings.feedback_path.read_bytes()
    labels = load_labels([settings.feedback_path], LogReport())
    assert labels["e-123"].is_attack and not labels["e-124"].is_attack
    kinds = [r["record"] for r in audit_records(settings)]
    assert kinds == ["decision", "decision", "feedback", "feedback"]
    bad = client.post("/v1/events/e-1/feedback", json={"label": "maybe"})
    assert bad.status_code == 422 and bad.json()["field"] == "label"


def test_erasure_deletes_the_profile(
    client: TestClient, settings: Settings, make_event: EventFactory, admin_auth: dict[str, str]
) -> None:
    client.post("/v1/decisions", json=make_event(user_id="u-forget-me"))
    assert client.delete("/v1/users/u-forget-me", headers=admin_auth).status_code == 204
    assert client.delete("/v1/users/u-forget-me", headers=admin_auth).status_code == 404
    flush_audit(client)
    erasures = [r for r in audit_records(settings) if r["record"] == "erasure"]
    assert [r["outcome"] for r in erasures] == ["erased", "absent"]
    # Neither the raw id nor its keyed hash: the erased profile's ref, which opens nothing.
    user_key = client.app.state.service.engine.user_key("u-forget-me")  # type: ignore[attr-defined]
    assert "u-forget-me" not in str(erasures) and user_key not in str(erasures)
    assert erasures[0]["ref"].startswith("r-") and "ref" not in erasures[1]


def test_openapi_declares_the_errors(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    decisions = spec["paths"]["/v1/decisions"]["post"]
    assert {"200", "401", "413", "422"} <= decisions["responses"].keys()
    assert decisions["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Event"
    )
    result = spec["paths"]["/v1/challenges/{challenge_id}/result"]["post"]
    assert {"404", "409"} <= result["responses"].keys()


def test_profiles_past_retention_are_erased_at_start_up(
    make_settings: Callable[..., Settings], make_event: EventFactory
) -> None:
    # A retention of about a second: the profile written by the first process is
    # past it when the second starts, and the start-up purge erases it.
    settings = make_settings(retention_days=1.5 / 86400, auth_disabled=True)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/decisions", json=make_event(user_id="u-old")).status_code == 200
        service = client.app.state.service  # type: ignore[attr-defined]
        user_key = service.engine.user_key("u-old")
        assert service.engine.store.count() == 1
    time.sleep(2.0)
    database = settings.store.removeprefix("sqlite:///")

    def rows() -> int:
        # Counted in the file itself: the store already hides expired profiles.
        with closing(sqlite3.connect(database)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0])

    assert rows() == 1
    with TestClient(create_app(settings)) as client:
        store = client.app.state.service.engine.store  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while rows() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows() == 0
        assert store.get(user_key) is None
