"""Converting a trusted pickled model (format 1) into the data format: only when told so."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import joblib
import numpy as np
import pytest
from typer.testing import CliRunner

from risk_engine.cli import app
from risk_engine.features.registry import FEATURE_NAMES, SCHEMA_HASH
from risk_engine.model.artifact import checksum_path, load_artifact
from risk_engine.model.detector import DetectorParams, RiskModel

runner = CliRunner()


class _Trap:
    """Unpickling this creates ``marker``: what any code in a crafted pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


def _write_pickle(path: Path, payload: object) -> Path:
    buffer = io.BytesIO()
    joblib.dump(payload, buffer, compress=3)
    data = buffer.getvalue()
    path.write_bytes(data)
    checksum_path(path).write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return path


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, len(FEATURE_NAMES)))
    X[:, 0] = rng.random(600) < 0.3
    return X


@pytest.fixture(scope="module")
def fitted(rows: np.ndarray) -> RiskModel:
    attack = (rows[:, 0] > 0.5) & (rows[:, 1] > 0.5)
    params = DetectorParams(n_estimators=20, supervised_max_iter=10, supervised_min_attacks=5)
    model = RiskModel(params).fit(rows, attack)
    assert model.kind == "iforest+hgb"
    return model


@pytest.fixture
def legacy(fitted: RiskModel, tmp_path: Path) -> Path:
    """A model saved as versions before format 2 saved it: the envelope, joblib-pickled."""
    fast = (fitted._fast_forest, fitted._fast_boosting, fitted._fast_ensemble)
    fitted._fast_forest = fitted._fast_boosting = fitted._fast_ensemble = None
    envelope = {
        "format": 1,
        "model": fitted,
        "model_version": "iforest+hgb-2026-01-01-abcdef",
        "schema_hash": SCHEMA_HASH,
        "feature_version": 1,
        "feature_names": FEATURE_NAMES,
        "created_at": "2026-01-01T00:00:00+00:00",
        "libraries": {},
        "training": {"events": 600},
        "metrics": {"roc_auc": 0.9},
        "thresholds": {},
    }
    try:
        return _write_pickle(tmp_path / "old.joblib", envelope)
    finally:
        fitted._fast_forest, fitted._fast_boosting, fitted._fast_ensemble = fast


def test_a_trusted_pickle_converts_to_data_that_scores_the_same(
    legacy: Path, fitted: RiskModel, rows: np.ndarray, tmp_path: Path
) -> None:
    out = tmp_path / "new.npz"
    result = runner.invoke(
        app, ["convert-model", str(legacy), "--out", str(out), "--trusted-pickle"]
    )
    assert result.exit_code == 0, result.output
    assert "iforest+hgb-2026-01-01-abcdef" in result.output
    artifact = load_artifact(out)
    assert artifact.model_version == "iforest+hgb-2026-01-01-abcdef"
    assert artifact.metrics == {"roc_auc": 0.9}
    source = artifact.training["converted_from"]
    assert source["sha256"] == hashlib.sha256(legacy.read_bytes()).hexdigest()
    probes = fitted.probe_rows(2000)
    for X in (rows, probes):
        np.testing.assert_array_equal(artifact.model.score(X), fitted.score(X))
    assert artifact.model.detector_ is None and artifact.model.supervised_ is None


def test_conversion_without_the_trust_flag_unpickles_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _write_pickle(tmp_path / "evil.joblib", {"format": 1, "model": _Trap(marker)})
    out = tmp_path / "new.npz"
    result = runner.invoke(app, ["convert-model", str(evil), "--out", str(out)])
    assert result.exit_code == 2
    assert "--trusted-pickle" in result.output and "runs any code" in result.output
    assert not marker.exists() and not out.exists()


def test_conversion_refuses_a_changed_pickle_before_unpickling_it(
    legacy: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    joblib.dump({"format": 1, "model": _Trap(marker)}, buffer)
    legacy.write_bytes(buffer.getvalue())  # the checksum file still names the old bytes
    out = tmp_path / "new.npz"
    result = runner.invoke(
        app, ["convert-model", str(legacy), "--out", str(out), "--trusted-pickle"]
    )
    assert result.exit_code == 2 and "checksum" in result.output
    assert not marker.exists() and not out.exists()


def test_the_help_says_the_conversion_unpickles() -> None:
    result = runner.invoke(app, ["convert-model", "--help"])
    assert result.exit_code == 0
    assert "UNPICKLES" in result.output and "--trusted-pickle" in result.output
