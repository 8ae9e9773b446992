"""The model artifact: a checked envelope that refuses changed files and other feature schemas."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import joblib
import numpy as np
import pytest

from risk_engine.errors import ConfigurationError, IncompatibleModelError
from risk_engine.features.registry import FEATURE_NAMES, SCHEMA_HASH
from risk_engine.model.artifact import (
    ModelArtifact,
    checksum_path,
    default_model_path,
    load_artifact,
    save_artifact,
)
from risk_engine.model.detector import DetectorParams, RiskModel


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, len(FEATURE_NAMES)))


@pytest.fixture(scope="module")
def artifact(rows: np.ndarray) -> ModelArtifact:
    model = RiskModel(DetectorParams(n_estimators=20, supervised=False)).fit(rows)
    return ModelArtifact(
        model=model,
        model_version="iforest-test-000001",
        metrics={"roc_auc": 0.9},
        thresholds={"login": {"step_up": 0.98, "deny": 0.999}},
        training={"events": 400},
    )


@pytest.fixture
def saved(artifact: ModelArtifact, tmp_path: Path) -> Path:
    path = tmp_path / "models" / "model.joblib"
    save_artifact(artifact, path)
    return path


def test_save_writes_the_file_and_its_checksum(saved: Path) -> None:
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    assert checksum_path(saved).read_text().split() == [digest, saved.name]


def test_round_trip_keeps_the_envelope_and_the_scores(
    artifact: ModelArtifact, saved: Path, rows: np.ndarray
) -> None:
    loaded = load_artifact(saved)
    assert loaded.model_version == artifact.model_version
    assert loaded.schema_hash == SCHEMA_HASH
    assert loaded.feature_names == FEATURE_NAMES
    assert loaded.metrics == artifact.metrics
    assert loaded.thresholds == artifact.thresholds
    assert loaded.training == artifact.training
    assert loaded.created_at == artifact.created_at
    np.testing.assert_array_equal(loaded.model.score(rows), artifact.model.score(rows))
    # Prepared on load: the single-row path works straight away.
    assert loaded.model.score_one(rows[0]) == pytest.approx(artifact.model.score_one(rows[0]))
    assert loaded.summary()["model_version"] == artifact.model_version


@pytest.mark.parametrize("where", [0, 100, -1], ids=["first", "middle", "last"])
def test_one_flipped_byte_is_refused(saved: Path, where: int) -> None:
    data = bytearray(saved.read_bytes())
    data[where] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(IncompatibleModelError, match="checksum") as caught:
        load_artifact(saved)
    assert isinstance(caught.value, ConfigurationError)


def test_missing_checksum_file_is_refused(saved: Path) -> None:
    checksum_path(saved).unlink()
    with pytest.raises(IncompatibleModelError, match="no checksum file"):
        load_artifact(saved)


@pytest.mark.parametrize("content", ["", "not-a-digest  model.joblib\n", "abc"])
def test_malformed_checksum_file_is_refused(saved: Path, content: str) -> None:
    checksum_path(saved).write_text(content)
    with pytest.raises(IncompatibleModelError, match="malformed"):
        load_artifact(saved)


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IncompatibleModelError, match="not found"):
        load_artifact(tmp_path / "absent.joblib")


def test_schema_hash_mismatch_says_to_retrain(saved: Path) -> None:
    with pytest.raises(IncompatibleModelError) as caught:
        load_artifact(saved, schema_hash="other")
    message = caught.value.message
    assert "retrain" in message
    assert SCHEMA_HASH in message and "other" in message


def _write_with_checksum(path: Path, payload: object) -> None:
    buffer = io.BytesIO()
    joblib.dump(payload, buffer)
    data = buffer.getvalue()
    path.write_bytes(data)
    checksum_path(path).write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")


@pytest.mark.parametrize(
    "payload",
    [{"format": 99, "schema_hash": SCHEMA_HASH}, ["not", "an", "envelope"], {"model": None}],
    ids=["other-format", "a-list", "no-format"],
)
def test_verified_file_that_is_no_artifact_is_refused(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "other.joblib"
    _write_with_checksum(path, payload)
    with pytest.raises(IncompatibleModelError, match="not a risk-engine artifact"):
        load_artifact(path)


def test_verified_envelope_without_a_risk_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.joblib"
    _write_with_checksum(
        path,
        {"format": 1, "schema_hash": SCHEMA_HASH, "model": "a string", "model_version": "x"},
    )
    with pytest.raises(IncompatibleModelError, match="RiskModel"):
        load_artifact(path)


def test_verified_bytes_that_are_no_joblib_are_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "junk.joblib"
    data = b"definitely not a pickle"
    path.write_bytes(data)
    checksum_path(path).write_text(hashlib.sha256(data).hexdigest() + "\n")
    with pytest.raises(IncompatibleModelError, match="cannot be loaded"):
        load_artifact(path)


def test_default_model_loads_for_this_feature_schema() -> None:
    artifact = load_artifact(default_model_path())
    assert artifact.schema_hash == SCHEMA_HASH
    assert artifact.feature_names == FEATURE_NAMES
    assert artifact.model_version


# -- a model file that is code: issue 14, defect 5 ---------------------------------------


class _Trap:
    """Unpickling this creates ``marker``: what any code in a crafted pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


def crafted_pickle(path: Path, marker: Path) -> Path:
    """A joblib file whose loading runs code, with its own matching checksum file."""
    envelope = {"format": 1, "schema_hash": SCHEMA_HASH, "model": _Trap(marker)}
    _write_with_checksum(path, envelope)
    return path


def test_a_crafted_pickle_with_a_matching_checksum_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = crafted_pickle(tmp_path / "evil.joblib", marker)
    with pytest.raises(IncompatibleModelError) as caught:
        load_artifact(evil)
    assert not marker.exists()
    message = caught.value.message
    assert str(evil) in message
    assert "risk-engine train" in message and "risk-engine convert-model --trusted-pickle" in message


def test_the_model_command_refuses_a_crafted_pickle_without_running_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from risk_engine.cli import app

    marker = tmp_path / "pwned"
    evil = crafted_pickle(tmp_path / "evil.joblib", marker)
    result = CliRunner().invoke(app, ["model", str(evil)])
    assert result.exit_code == 2
    assert not marker.exists()
    assert str(evil) in result.output and "risk-engine train" in result.output
    assert "Traceback" not in result.output
