"""The deployment files name only settings that exist, and the systemd unit verifies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from risk_engine.config import Settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "risk-engine.service"
DEPLOY_FILES = [UNIT, ROOT / "deploy" / "risk-engine.env", ROOT / "deploy" / "kubernetes.yaml"]
VARIABLE = re.compile(r"\bRISK_ENGINE_([A-Z0-9_]+)")


def unknown_settings(text: str) -> set[str]:
    """The RISK_ENGINE_* names in ``text`` that no setting reads."""
    fields = {name.upper() for name in Settings.model_fields}
    return {
        f"RISK_ENGINE_{name}"
        for name in VARIABLE.findall(text)
        if name not in fields and not name.startswith("API_KEY_")
    }


@pytest.mark.parametrize("path", [*DEPLOY_FILES, ROOT / "Dockerfile"], ids=lambda p: p.name)
def test_deployment_files_name_only_real_settings(path: Path) -> None:
    text = path.read_text()
    assert unknown_settings(text) == set()


def test_a_misspelt_setting_is_caught() -> None:
    assert unknown_settings("RISK_ENGINE_STORE=x RISK_ENGINE_DECISIONS_LOG=y") == {
        "RISK_ENGINE_DECISIONS_LOG"
    }


def test_the_operations_guide_names_only_real_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    guide = readme.split("## Operations", 1)[1].split("\n## ", 1)[0]
    assert unknown_settings(guide) == set()


def test_the_unit_is_hardened() -> None:
    settings = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert settings["User"] == "risk-engine"
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert settings["PrivateTmp"] == "yes"
    assert settings["StateDirectory"] == "risk-engine"
    assert settings["EnvironmentFile"] == "/etc/risk-engine/risk-engine.env"
    assert "RISK_ENGINE_VAR_DIR=%S/risk-engine" in UNIT.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_verifies_the_unit(tmp_path: Path) -> None:
    # The unit as installed, pointed at this environment's command and an optional
    # environment file, so that verify checks every directive here.
    command = Path(sys.executable).with_name("risk-engine")
    text = UNIT.read_text().replace("/opt/risk-engine/bin/risk-engine", str(command))
    text = text.replace("EnvironmentFile=/", "EnvironmentFile=-/")
    copy = tmp_path / "risk-engine.service"
    copy.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
