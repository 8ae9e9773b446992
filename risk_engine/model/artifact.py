"""The model artifact: one joblib file inside a checked envelope, plus a sha256 file.

joblib is pickle, and unpickling runs code: the file's bytes are hashed and
compared with the checksum file BEFORE they are unpickled, and the very bytes
that were checked are the ones loaded. The envelope records what the model was
built for; a model built for another feature schema is refused.
"""

from __future__ import annotations

import hashlib
import io
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

from risk_engine.errors import IncompatibleModelError
from risk_engine.features.registry import FEATURE_NAMES, FEATURE_VERSION, SCHEMA_HASH
from risk_engine.model.detector import RiskModel

ARTIFACT_FORMAT = 1


@dataclass
class ModelArtifact:
    """A fitted RiskModel and everything needed to trust and explain it."""

    model: RiskModel
    model_version: str
    schema_hash: str = SCHEMA_HASH
    feature_version: int = FEATURE_VERSION
    feature_names: tuple[str, ...] = FEATURE_NAMES
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    libraries: dict[str, str] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything but the fitted objects (for /v1/model and `risk-engine model`)."""
        return {
            "model_version": self.model_version,
            "kind": self.model.kind,
            "schema_hash": self.schema_hash,
            "feature_version": self.feature_version,
            "feature_names": list(self.feature_names),
            "created_at": self.created_at,
            "libraries": self.libraries,
            "training": self.training,
            "metrics": self.metrics,
            "thresholds": self.thresholds,
        }


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
    }


def make_version(model: RiskModel, payload: bytes, when: datetime | None = None) -> str:
    """A readable, content-addressed version: ``iforest-2026-11-28-3f2a9c``."""
    day = (when or datetime.now(UTC)).strftime("%Y-%m-%d")
    return f"{model.kind}-{day}-{hashlib.sha256(payload).hexdigest()[:6]}"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_artifact(artifact: ModelArtifact, path: Path) -> str:
    """Write the artifact and its checksum file; returns the sha256."""
    envelope = {"format": ARTIFACT_FORMAT, **artifact.__dict__}
    buffer = io.BytesIO()
    joblib.dump(envelope, buffer, compress=3)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def _expected_digest(path: Path) -> str:
    sums = checksum_path(path)
    if not sums.is_file():
        raise IncompatibleModelError(
            f"model {path} has no checksum file {sums.name}; refusing to unpickle it"
        )
    text = sums.read_text().split()
    if not text or len(text[0]) != 64:
        raise IncompatibleModelError(f"checksum file {sums} is malformed")
    return text[0].lower()


def load_artifact(path: Path, *, schema_hash: str = SCHEMA_HASH) -> ModelArtifact:
    """Verify the checksum, then the envelope and the feature schema, then load."""
    if not path.is_file():
        raise IncompatibleModelError(f"model file not found: {path}")
    expected = _expected_digest(path)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise IncompatibleModelError(
            f"model {path} does not match its checksum (sha256 {actual[:12]}..., "
            f"expected {expected[:12]}...): refusing to load a file that was changed"
        )
    try:
        envelope = joblib.load(io.BytesIO(data))
    except Exception as exc:  # verified bytes that still fail to load: say so, clearly
        raise IncompatibleModelError(f"model {path} cannot be loaded: {exc}") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != ARTIFACT_FORMAT:
        raise IncompatibleModelError(f"model {path} is not a risk-engine artifact of this format")
    if envelope.get("schema_hash") != schema_hash:
        raise IncompatibleModelError(
            f"model {path} was built for feature schema {envelope.get('schema_hash')}, "
            f"this engine computes {schema_hash}: retrain it with `risk-engine train`"
        )
    fields = {k: v for k, v in envelope.items() if k != "format"}
    fields["feature_names"] = tuple(fields.get("feature_names", ()))
    try:
        artifact = ModelArtifact(**fields)
    except TypeError as exc:
        raise IncompatibleModelError(f"model {path} has an unexpected envelope: {exc}") from exc
    if not isinstance(artifact.model, RiskModel):
        raise IncompatibleModelError(f"model {path} does not hold a RiskModel")
    artifact.model.prepare()
    return artifact


def default_model_path() -> Path:
    """The bundled default model: ``models/default.joblib`` in the project checkout."""
    return Path(__file__).resolve().parents[2] / "models" / "default.joblib"
