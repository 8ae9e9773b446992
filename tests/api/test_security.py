"""Issue 14: escaped client paths, key scopes, quiet probes, the audit's caller, private files."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from risk_engine.api import create_app
from risk_engine.assembly import build_engine
from risk_engine.cli import app as cli
from risk_engine.client import RiskEngineClient
from risk_engine.config import Settings
from risk_engine.engine import Engine
from risk_engine.errors import ConfigurationError, ForbiddenError, NotFoundError
from risk_engine.geo import GeoLocator
from risk_engine.privacy import Hasher
from risk_engine.profiles.redis import RedisStore
from risk_engine.scopes import key_id
from tests.api.conftest import flush_audit

Server = Any  # conftest's Server: a started `risk-engine serve` (base_url, process)

# The keys conftest configures (API_KEY: scope decide; ADMIN_API_KEY: scope admin).
API_KEY = "rek_test-key-for-the-api-tests"
ADMIN_API_KEY = "rek_test-admin-key-for-the-api-tests"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_API_KEY}"}

EventFactory = Callable[..., dict[str, Any]]

METRICS_KEY = "rek_test-metrics-key"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_KEY}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def _keys_as_conftest(api_key: str, admin_api_key: str) -> None:
    assert (api_key, admin_api_key) == (API_KEY, ADMIN_API_KEY)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def audit_records(settings: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in settings.audit_path.read_bytes().splitlines()]


# -- defect 3: ids in client paths ------------------------------------------------------------


@pytest.fixture
def server(serve: Callable[..., Server]) -> Server:
    return serve()


def test_the_client_escapes_ids_so_another_users_profile_survives(
    server: Server, make_event: EventFactory
) -> None:
    with (
        RiskEngineClient(server.base_url, api_key=API_KEY) as app_client,
        RiskEngineClient(server.base_url, api_key=ADMIN_API_KEY) as admin,
    ):
        for user in ("mallory", "victim", "victim2"):
            app_client.decide(make_event(user_id=user))
        # Ids are names, not paths: neither reaches the victims' profiles.
        with pytest.raises(NotFoundError):
            admin.delete_user("mallory/../victim")
        with pytest.raises(NotFoundError):
            admin.delete_user("victim2?x=1")
        # The victims' profiles survived: erasing them now finds them.
        admin.delete_user("victim")
        admin.delete_user("victim2")
        admin.delete_user("mallory")


def test_the_server_answers_404_for_encoded_traversal(server: Server) -> None:
    import httpx

    response = httpx.delete(
        server.base_url + "/v1/users/mallory%2F..%2Fvictim", headers=ADMIN_AUTH, timeout=5
    )
    assert response.status_code == 404


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    event_id=st.one_of(
        st.sampled_from(["..", ".", "e-1?x=1", "e-1#frag", "e 1", "%2e%2e", "e-1/../x", "?"]),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=40),
    )
)
def test_feedback_and_challenge_ids_reach_the_server_as_given(
    server: Server, make_event: EventFactory, event_id: str
) -> None:
    with RiskEngineClient(server.base_url, api_key=API_KEY) as client:
        # Feedback is taken only for events decided here: decide one with this id first.
        client.decide(make_event(event_id=event_id))
        if "/" in event_id:
            # One path segment can never hold a slash: refused, never rerouted.
            with pytest.raises(NotFoundError):
                client.feedback(event_id, "confirmed_legit")
        else:
            assert client.feedback(event_id, "confirmed_legit")["event_id"] == event_id
        with pytest.raises(NotFoundError):
            # Unknown challenge: 404 from the result route itself, whatever the id.
            client.report_challenge(event_id, True, "totp", "s-1")


# -- defect 6: key scopes -----------------------------------------------------------------------


@pytest.fixture
def scoped(make_settings: Callable[..., Settings], shared_engine: Engine) -> TestClient:
    settings = make_settings(
        api_keys={
            "ops": f"admin:{digest(ADMIN_API_KEY)}",
            "prometheus": f"metrics:{digest(METRICS_KEY)}",
        }
    )
    with TestClient(create_app(settings, engine=shared_engine)) as client:
        yield client


ADMIN_CALLS = (
    ("DELETE", "/v1/users/u-nobody"),
    ("GET", "/v1/model"),
    ("POST", "/v1/admin/reload"),
)


def test_a_decide_key_cannot_administer(scoped: TestClient, make_event: EventFactory) -> None:
    assert scoped.post("/v1/decisions", json=make_event(), headers=AUTH).status_code == 200
    for method, path in ADMIN_CALLS:
        response = scoped.request(method, path, headers=AUTH)
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"] == "forbidden"
        assert "admin" in response.json()["message"]
    assert scoped.get("/metrics", headers=AUTH).status_code == 403


def test_an_admin_key_administers_but_does_not_decide(
    scoped: TestClient, make_event: EventFactory
) -> None:
    assert scoped.get("/v1/model", headers=ADMIN_AUTH).status_code == 200
    assert scoped.delete("/v1/users/u-nobody", headers=ADMIN_AUTH).status_code == 404
    assert scoped.get("/metrics", headers=ADMIN_AUTH).status_code == 200
    # The plain ASGI endpoint and the FastAPI routes check the same scopes.
    for method, path, body in (
        ("POST", "/v1/decisions", make_event()),
        ("POST", "/v1/challenges/c-1/result", {"passed": True, "method": "totp"}),
        ("POST", "/v1/events/e-1/feedback", {"label": "confirmed_fraud"}),
    ):
        response = scoped.request(method, path, json=body, headers=ADMIN_AUTH)
        assert response.status_code == 403, (path, response.text)
        assert "decide" in response.json()["message"]


def test_a_metrics_key_reads_metrics_only(scoped: TestClient, make_event: EventFactory) -> None:
    assert scoped.get("/metrics", headers=METRICS_AUTH).status_code == 200
    assert scoped.post("/v1/decisions", json=make_event(), headers=METRICS_AUTH).status_code == 403
    assert scoped.get("/v1/model", headers=METRICS_AUTH).status_code == 403


def test_metrics_need_a_key_unless_auth_is_off(
    scoped: TestClient, make_settings: Callable[..., Settings], shared_engine: Engine
) -> None:
    response = scoped.get("/metrics")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert scoped.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    app = create_app(make_settings(auth_disabled=True), engine=shared_engine)
    with TestClient(app) as open_client:
        assert open_client.get("/metrics").status_code == 200


def test_the_legacy_digest_list_grants_decide_only(
    make_settings: Callable[..., Settings], shared_engine: Engine, make_event: EventFactory
) -> None:
    settings = make_settings(api_keys={}, api_keys_sha256=[digest(API_KEY)])
    with TestClient(create_app(settings, engine=shared_engine), headers=AUTH) as client:
        event = make_event()
        assert client.post("/v1/decisions", json=event).status_code == 200
        feedback = {"label": "confirmed_legit"}
        assert client.post(f"/v1/events/{event['event_id']}/feedback", json=feedback).is_success
        assert client.delete("/v1/users/u-1").status_code == 403
        assert client.post("/v1/admin/reload").status_code == 403


def test_openapi_declares_the_scopes(scoped: TestClient) -> None:
    spec = scoped.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    paths = spec["paths"]
    for path, method in (
        ("/v1/decisions", "post"),
        ("/v1/challenges/{challenge_id}/result", "post"),
        ("/v1/events/{event_id}/feedback", "post"),
        ("/v1/users/{user_id}", "delete"),
        ("/v1/model", "get"),
        ("/v1/admin/reload", "post"),
        ("/metrics", "get"),
    ):
        operation = paths[path][method]
        assert {"401", "403"} <= set(operation["responses"]), path
        assert operation["security"] == [{"HTTPBearer": []}], path


def test_apikey_prints_a_scoped_setting_and_two_combine(
    monkeypatch: pytest.MonkeyPatch,
    make_settings: Callable[..., Settings],
    shared_engine: Engine,
    make_event: EventFactory,
    secret: str,
) -> None:
    keys, settings_lines = {}, []
    for scope in ("decide", "admin"):
        result = CliRunner().invoke(cli, ["apikey", "--scope", scope])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        keys[scope] = next(line for line in lines if line.startswith("key: ")).split(": ", 1)[1]
        setting = next(line for line in lines if line.startswith("RISK_ENGINE_"))
        settings_lines.append(setting)
    for setting in settings_lines:
        name, value = setting.split("=", 1)
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RISK_ENGINE_API_KEYS_SHA256", raising=False)
    from_env = Settings(var_dir=make_settings().var_dir, secret=secret)
    assert len(from_env.api_keys) == 2
    with TestClient(create_app(from_env, engine=shared_engine)) as client:
        decide = {"Authorization": f"Bearer {keys['decide']}"}
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        assert client.post("/v1/decisions", json=make_event(), headers=decide).status_code == 200
        assert client.get("/v1/model", headers=decide).status_code == 403
        assert client.get("/v1/model", headers=admin).status_code == 200
        assert client.post("/v1/decisions", json=make_event(), headers=admin).status_code == 403


def test_a_malformed_key_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_ENGINE_API_KEY_OPS", "root:" + "0" * 64)
    with pytest.raises(ValueError, match="RISK_ENGINE_API_KEY_OPS"):
        Settings()
    monkeypatch.setenv("RISK_ENGINE_API_KEY_OPS", "admin:abc")
    with pytest.raises(ValueError, match="RISK_ENGINE_API_KEY_OPS"):
        Settings()


# -- defect 6: readiness without internals ------------------------------------------------------


def test_readiness_shows_no_internals_without_an_admin_key(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    engine = build_engine(
        make_settings(store="memory://"),
        store=RedisStore(url, prefix="t-ready"),
        geo=GeoLocator(),
    )
    settings = make_settings(api_keys={"ops": f"admin:{digest(ADMIN_API_KEY)}"})
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            for headers in ({}, AUTH, {"Authorization": "Bearer wrong"}):
                response = client.get("/readyz", headers=headers)
                assert response.status_code == 503
                assert response.json() == {
                    "status": "not_ready",
                    "checks": {"store": "failed", "geoip": "ok", "model": "ok"},
                }
            detailed = client.get("/readyz", headers=ADMIN_AUTH)
            assert detailed.status_code == 503
            assert detailed.json()["checks"]["store"] not in ("ok", "failed")
    finally:
        engine.store.close()


# -- defect 4: the caller in the audit ----------------------------------------------------------


def test_the_audit_records_which_key_called(
    scoped: TestClient, make_event: EventFactory, make_settings: Callable[..., Settings]
) -> None:
    settings = scoped.app.state.settings  # type: ignore[attr-defined]
    event = make_event()
    assert scoped.post("/v1/decisions", json=event, headers=AUTH).status_code == 200
    scoped.post(
        f"/v1/events/{event['event_id']}/feedback",
        json={"label": "confirmed_fraud"},
        headers=AUTH,
    )
    result = {"passed": True, "method": "totp"}
    scoped.post("/v1/challenges/c-none/result", json=result, headers=AUTH)
    scoped.delete("/v1/users/u-nobody", headers=ADMIN_AUTH)
    flush_audit(scoped)
    callers = {r["record"]: r["caller"] for r in audit_records(settings)}
    app_key, admin_key = key_id(digest(API_KEY)), key_id(digest(ADMIN_API_KEY))
    assert callers == {
        "decision": app_key,
        "feedback": app_key,
        "challenge_result": app_key,
        "erasure": admin_key,
    }
    assert API_KEY not in settings.audit_path.read_text()
    assert digest(API_KEY) not in settings.audit_path.read_text()


def test_the_audit_says_when_auth_was_off(
    make_settings: Callable[..., Settings], shared_engine: Engine, make_event: EventFactory
) -> None:
    settings = make_settings(auth_disabled=True)
    with TestClient(create_app(settings, engine=shared_engine)) as client:
        client.post("/v1/decisions", json=make_event())
        client.post("/v1/events/e-8/feedback", json={"label": "confirmed_fraud"})
    assert {r["caller"] for r in audit_records(settings)} == {"auth-disabled"}


# -- defect 7: secrets and files ----------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n", "short-secret\n"])
def test_a_weak_secret_file_is_refused(tmp_path: Path, content: str) -> None:
    var = tmp_path / "var"
    var.mkdir()
    (var / "secret.key").write_text(content)
    with pytest.raises(ConfigurationError, match=r"secret\.key"):
        Settings(var_dir=var).resolve_secret()


def test_a_weak_configured_secret_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="RISK_ENGINE_SECRET"):
        Settings(var_dir=tmp_path, secret="hunter2").resolve_secret()


def test_a_generated_secret_is_private(tmp_path: Path) -> None:
    var = tmp_path / "var"
    first = Settings(var_dir=var).resolve_secret()
    assert len(first) >= 32 and Settings(var_dir=var).resolve_secret() == first
    assert mode(var) == 0o700 and mode(var / "secret.key") == 0o600
    assert Hasher(first).digest("user", "u") != Hasher(first + "x").digest("user", "u")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_var_dir_and_its_files_are_private(
    tmp_path: Path, model_path: Path, make_event: EventFactory
) -> None:
    var = tmp_path / "var"
    # As an older version left it: world-readable.
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    (var / "profiles.db").touch()
    (var / "profiles.db").chmod(0o644)
    old = os.umask(0o022)
    try:
        settings = Settings(
            store=f"sqlite:///{var / 'profiles.db'}",
            var_dir=var,
            model_path=model_path,
            api_keys_sha256=[digest(API_KEY)],
        )
        with TestClient(create_app(settings), headers=AUTH) as client:
            assert client.post("/v1/decisions", json=make_event()).status_code == 200
            client.post("/v1/events/e-1/feedback", json={"label": "confirmed_fraud"})
            names = {p.name for p in var.iterdir()}
            assert {"secret.key", "audit.jsonl", "feedback.jsonl", "profiles.db"} <= names
            assert "profiles.db-wal" in names
            assert mode(var) == 0o700
            assert {p.name: mode(p) for p in var.iterdir()} == dict.fromkeys(names, 0o600)
    finally:
        os.umask(old)


def test_a_shared_var_dir_is_refused_not_taken_over(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "someone-elses").write_text("x")
    (shared / "someone-elses").chmod(0o644)
    with pytest.raises(ConfigurationError, match="RISK_ENGINE_VAR_DIR"):
        Settings(var_dir=shared, store="memory://").secure_files()
    assert mode(shared) == 0o1777 and mode(shared / "someone-elses") == 0o644


def test_forbidden_error_is_403() -> None:
    assert ForbiddenError("x").status_code == 403
