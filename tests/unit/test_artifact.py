"""The model artifact: a checked envelope that refuses changed files and other feature schemas."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pytest

from risk_engine.errors import ConfigurationError, IncompatibleModelError
from risk_engine.features.registry import FEATURE_NAMES, SCHEMA_HASH
from risk_engine.model.artifact import (
    ARTIFACT_FORMAT,
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
    path = tmp_path / "models" / "model.npz"
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


@pytest.mark.parametrize("content", ["", "not-a-digest  model.npz\n", "abc"])
def test_malformed_checksum_file_is_refused(saved: Path, content: str) -> None:
    checksum_path(saved).write_text(content)
    with pytest.raises(IncompatibleModelError, match="malformed"):
        load_artifact(saved)


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IncompatibleModelError, match="not found"):
        load_artifact(tmp_path / "absent.npz")


def test_schema_hash_mismatch_says_to_retrain(saved: Path) -> None:
    with pytest.raises(IncompatibleModelError) as caught:
        load_artifact(saved, schema_hash="other")
    message = caught.value.message
    assert "retrain" in message
    assert SCHEMA_HASH in message and "other" in message


def _write_with_checksum(path: Path, payload: object) -> None:
    buffer = io.BytesIO()
    joblib.dump(payload, buffer)
    _write_bytes(path, buffer.getvalue())


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    checksum_path(path).write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")


def _arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _write_archive(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An archive as numpy.savez writes one (its pickles too), with a matching checksum."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write_bytes(path, buffer.getvalue())


def _envelope(arrays: dict[str, np.ndarray]) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(arrays["envelope"].tobytes())
    return loaded


def _with_envelope(arrays: dict[str, np.ndarray], envelope: object) -> dict[str, np.ndarray]:
    return {**arrays, "envelope": np.frombuffer(json.dumps(envelope).encode(), dtype=np.uint8)}


def test_the_archive_is_arrays_and_json_that_numpy_reads_without_pickles(saved: Path) -> None:
    arrays = _arrays_of(saved)
    assert all(a.dtype != object for a in arrays.values())
    envelope = _envelope(arrays)
    assert envelope["format"] == ARTIFACT_FORMAT and envelope["schema_hash"] == SCHEMA_HASH
    assert {"forest.words", "forest.reals", "calibration.final.knots_x"} <= set(arrays)


def test_the_same_model_saves_to_the_same_bytes(artifact: ModelArtifact, tmp_path: Path) -> None:
    assert save_artifact(artifact, tmp_path / "a.npz") == save_artifact(
        artifact, tmp_path / "b.npz"
    )


def _drop_envelope(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k != "envelope"}


def _not_json(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**arrays, "envelope": np.frombuffer(b"{not json", dtype=np.uint8)}


def _format(number: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    return lambda arrays: _with_envelope(arrays, {**_envelope(arrays), "format": number})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop_envelope, "no envelope"),
        (_not_json, "unreadable envelope"),
        (_format(1), "not a risk-engine artifact of this format"),
        (_format(99), "not a risk-engine artifact of this format"),
        (lambda a: _with_envelope(a, ["a", "list"]), "not a risk-engine artifact"),
        (lambda a: _with_envelope(a, {**_envelope(a), "metrics": 3}), "envelope field metrics"),
        (lambda a: _with_envelope(a, {**_envelope(a), "extra": 1}), "unexpected envelope"),
    ],
    ids=["no-envelope", "not-json", "format-1", "format-99", "a-list", "bad-field", "extra"],
)
def test_verified_archive_that_is_no_artifact_is_refused(
    saved: Path, change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], message: str
) -> None:
    _write_archive(saved, change(_arrays_of(saved)))
    with pytest.raises(IncompatibleModelError, match=message):
        load_artifact(saved)


def _poke(name: str, index: int, value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays[name] = arrays[name].copy()
        arrays[name][index] = value

    return change


def _child_out_of_range(arrays: dict[str, np.ndarray]) -> None:
    words = arrays["forest.words"].copy()
    n_trees, steps, n_nodes = (int(v) for v in words[:3])
    words[3 + steps + n_trees + 1] = n_nodes  # the first node's left child
    arrays["forest.words"] = words


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_child_out_of_range, "child index is out of range"),
        (lambda a: a.pop("forest.reals"), "missing \\['forest.reals'\\]"),
        (lambda a: a.update(extra=np.zeros(3)), "extra \\['extra'\\]"),
        (lambda a: a.update({"forest.words": a["forest.words"].astype(np.int64)}), "uint32"),
        (_poke("calibration.final.knots_x", 1, -1e300), "not increasing"),
        (_poke("calibration.final.knots_p", -1, 2.0), "leave \\[0, 1\\]"),
        (_poke("calibration.final.knots_x", 0, np.nan), "not finite"),
    ],
    ids=["child", "missing", "extra", "dtype", "knots-x", "knots-p", "nan"],
)
def test_verified_arrays_a_kernel_could_misread_are_refused(
    saved: Path, change: Callable[[dict[str, np.ndarray]], object], message: str
) -> None:
    arrays = _arrays_of(saved)
    change(arrays)
    _write_archive(saved, arrays)
    with pytest.raises(IncompatibleModelError, match=message):
        load_artifact(saved)


def test_an_object_array_in_a_verified_archive_is_never_unpickled(
    saved: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(marker)
    _write_archive(saved, {**_arrays_of(saved), "forest.reals": trap})
    with pytest.raises(IncompatibleModelError, match="cannot be read"):
        load_artifact(saved)
    assert not marker.exists()


def test_verified_bytes_that_are_no_archive_are_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    _write_bytes(path, b"definitely not a model")
    with pytest.raises(IncompatibleModelError, match="retrain with `risk-engine train`"):
        load_artifact(path)


def test_save_refuses_arrays_that_score_unlike_scikit_learn(
    rows: np.ndarray, tmp_path: Path
) -> None:
    model = RiskModel(DetectorParams(n_estimators=20, supervised=False)).fit(rows)
    assert model._fast_forest is not None
    _, reals = model._fast_forest.arrays()
    reals[1:] += 1e-6  # every node's path length, a hair off
    path = tmp_path / "model.npz"
    with pytest.raises(ValueError, match="forest differs from scikit-learn's"):
        save_artifact(ModelArtifact(model=model, model_version="x"), path)
    assert not path.exists() and not checksum_path(path).exists()


def test_loading_needs_neither_scikit_learn_nor_joblib() -> None:
    code = (
        "import sys\n"
        "from risk_engine.model.artifact import default_model_path, load_artifact\n"
        "artifact = load_artifact(default_model_path())\n"
        "assert artifact.model.score_one(artifact.model.probe_rows(1)[0]) >= 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'joblib')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


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
    assert (
        "risk-engine train" in message and "risk-engine convert-model --trusted-pickle" in message
    )


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
