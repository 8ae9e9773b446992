"""Settings from the environment: unknown RISK_ENGINE_* variables refused, effective ones logged."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from risk_engine.api.app import create_app, create_app_from_env
from risk_engine.config import Settings, check_environment
from risk_engine.errors import ConfigurationError

SETTING_VARIABLES = sorted("RISK_ENGINE_" + name.upper() for name in Settings.model_fields)


def run_serve(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISK_ENGINE_")}
    env.update(RISK_ENGINE_VAR_DIR=str(tmp_path / "var"), **variables)
    return subprocess.run(
        [sys.executable, "-c", "from risk_engine.cli import app; app()", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )


def test_a_misspelled_variable_stops_serve_naming_the_closest(tmp_path: Path) -> None:
    # Defect: RISK_ENGINE_STROE was ignored and the server ran on SQLite.
    done = run_serve(tmp_path, RISK_ENGINE_STROE="redis://127.0.0.1:6379/0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "risk-engine: error: unknown variable RISK_ENGINE_STROE: did you mean"
        " RISK_ENGINE_STORE? (unset it or correct its name)"
    ]
    assert not (tmp_path / "var").exists()  # stopped before anything was written


def test_the_app_factory_refuses_a_misspelled_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_ENGINE_RETENTON_DAYS", "30")
    with pytest.raises(SystemExit) as stopped:
        create_app_from_env()
    message = str(stopped.value.code)
    assert "RISK_ENGINE_RETENTON_DAYS" in message and "RISK_ENGINE_RETENTION_DAYS" in message


@pytest.mark.parametrize(
    ("typo", "closest"),
    [
        ("RISK_ENGINE_STROE", "RISK_ENGINE_STORE"),
        ("RISK_ENGINE_AUDITKEY", "RISK_ENGINE_AUDIT_KEY"),
        ("RISK_ENGINE_API_KEYS_SHA265", "RISK_ENGINE_API_KEYS_SHA256"),
        ("risk_engine_model_pth", "RISK_ENGINE_MODEL_PATH"),
        ("RISK_ENGINE_APIKEY_OPS", "RISK_ENGINE_API_KEY_<NAME>"),
    ],
)
def test_the_error_names_the_variable_and_the_closest_valid_one(typo: str, closest: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_environment({typo: "x"})
    assert refused.value.message.startswith(f"unknown variable {typo}: did you mean {closest}?")


def test_a_name_like_no_setting_is_refused_without_a_guess() -> None:
    with pytest.raises(ConfigurationError, match=r"^unknown variable RISK_ENGINE_XYZZY \(no "):
        check_environment({"RISK_ENGINE_XYZZY": "1"})


def test_settings_keys_test_and_client_variables_are_accepted() -> None:
    check_environment(
        {
            **dict.fromkeys(SETTING_VARIABLES, "x"),
            "RISK_ENGINE_API_KEY_OPS": "admin:" + "0" * 64,
            # Read by the test suite only: a namespace start-up ignores.
            "RISK_ENGINE_REQUIRE_REDIS": "1",
            "RISK_ENGINE_REQUIRE_BROWSER": "1",
            "RISK_ENGINE_REQUIRE_POSTGRES": "1",
            "RISK_ENGINE_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
            "RISK_ENGINE_TEST_POSTGRES_URL": "postgresql://127.0.0.1/test",
            "RISK_ENGINE_TEST_ARTIFACTS": "/tmp/x",
            # Read by applications through risk_engine.client.
            "RISK_ENGINE_URL": "http://127.0.0.1:8000",
            "RISK_ENGINE_API_KEY": "rek_x",
            # Read at import: the compiled core's sources instead of its build.
            "RISK_ENGINE_PURE_PYTHON": "1",
            "OTHER_VARIABLE": "not ours",
        }
    )


@given(name=st.from_regex(r"RISK_ENGINE_[A-Z][A-Z0-9_]{0,30}", fullmatch=True))
def test_every_variable_is_a_setting_or_refused_by_name(name: str) -> None:
    known = (
        name in SETTING_VARIABLES
        or name in {"RISK_ENGINE_URL", "RISK_ENGINE_API_KEY", "RISK_ENGINE_PURE_PYTHON"}
        or re.match(r"RISK_ENGINE_(API_KEY_.|TEST_|REQUIRE_)", name)
    )
    try:
        check_environment({name: "x"})
    except ConfigurationError as exc:
        assert not known
        assert exc.message.startswith(f"unknown variable {name}")
    else:
        assert known


def test_the_effective_settings_are_logged_at_start_with_secrets_masked(
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    secret: str,
    api_key: str,
) -> None:
    settings = make_settings(audit_key="the-audit-key-of-this-test-0123456789")
    with caplog.at_level(logging.INFO, logger="risk_engine"), TestClient(create_app(settings)):
        pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("settings: ")]
    assert len(lines) == 1
    line = lines[0]
    for name in Settings.model_fields:
        assert f" {name}=" in line or line.startswith(f"settings: {name}=")
    for hidden in (secret, "the-audit-key-of-this-test", digest(api_key)):
        assert hidden not in line
    assert settings.api_keys["ops"].sha256 not in line
    assert "api_keys={ops: admin}" in line and "api_keys_sha256=[1 digest]" in line
    assert "secret=***," in line and "audit_key=***," in line


def test_passwords_in_urls_are_redacted() -> None:
    settings = Settings(
        store="redis://:redis-password@cache.internal:6379/0",
        decision_log="postgresql://risk:pg-password@db.internal:5432/decisions",
    )
    line = settings.effective()
    assert "store=redis://:***@cache.internal:6379/0" in line
    assert "decision_log=postgresql://risk:***@db.internal:5432/decisions" in line
    assert "password" not in line
    assert "secret=(generated)," in line and "audit_key=(generated)," in line


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_serve_logs_the_effective_settings(
    serve: Callable[..., Any], secret: str, api_key: str
) -> None:
    server = serve()
    (line,) = [text for text in server.log().splitlines() if "settings: " in text]
    assert "store=sqlite:///" in line and "secret=***" in line
    assert secret not in server.log() and digest(api_key) not in server.log()
