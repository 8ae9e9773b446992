"""The model artifact: data, not code. One archive of arrays and JSON, plus a sha256 file.

A checksum proves a file is the one its checksum file names, not who wrote it,
so the artifact holds nothing that runs when read: a zip of ``.npy`` arrays (the
layout of ``numpy.savez``) read with ``allow_pickle=False``, and the envelope (what
the model was built for, how it was trained and measured, as JSON) as bytes. The
fast path's arrays and the calibrations' knots are the model (``RiskModel.to_arrays``):
loading checks the checksum, then reads the archive, then the feature schema, then
every array a compiled kernel will read, and never imports scikit-learn or
unpickles anything. A pickle or joblib file, the format of earlier versions, is
refused: ``risk-engine convert-model`` turns one you trust into this format.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from risk_engine.errors import IncompatibleModelError
from risk_engine.features.registry import FEATURE_NAMES, FEATURE_VERSION, SCHEMA_HASH
from risk_engine.model.detector import RiskModel

# 1: a joblib pickle of the envelope (refused); 2: arrays and JSON.
ARTIFACT_FORMAT = 2
ENVELOPE = "envelope"
# Far above any model's arrays: an archive claiming more is refused before it is inflated.
MAX_ARCHIVE_BYTES = 1 << 30
_ZIP_MAGIC = b"PK\x03\x04"
# Fixed member dates: the same model, the same bytes, the same checksum.
_EPOCH = (1980, 1, 1, 0, 0, 0)


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
        """Everything but the fitted arrays (for /v1/model and `risk-engine model`)."""
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
    """The versions a model was trained with (scikit-learn: imported here, at training)."""
    import sklearn

    return {
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }


def make_version(model: RiskModel, payload: bytes, when: datetime | None = None) -> str:
    """A readable, content-addressed version: ``iforest-2026-11-28-3f2a9c``."""
    day = (when or datetime.now(UTC)).strftime("%Y-%m-%d")
    return f"{model.kind}-{day}-{hashlib.sha256(payload).hexdigest()[:6]}"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _archive(arrays: dict[str, NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_artifact(
    artifact: ModelArtifact, path: Path, *, check_rows: NDArray[np.float64] | None = None
) -> str:
    """Write the artifact and its checksum file; returns the sha256.

    Before the file is written, the model's arrays are checked against its
    scikit-learn detectors where this process has them (after ``fit``), and the
    written file is loaded back and must score exactly as the model in memory,
    on ``check_rows`` and on rows probing every split (``RiskModel.probe_rows``).
    """
    model = artifact.model
    rows = model.probe_rows()
    if check_rows is not None:
        rows = np.vstack([np.asarray(check_rows, dtype=np.float64), rows])
    if model.detector_ is not None:
        model.check_against_sklearn(rows)
    meta, arrays = model.to_arrays()
    envelope = {
        "format": ARTIFACT_FORMAT,
        **{k: v for k, v in artifact.__dict__.items() if k != "model"},
        "model": meta,
    }
    text = json.dumps(envelope, sort_keys=True).encode()
    data = _archive({ENVELOPE: np.frombuffer(text, dtype=np.uint8), **arrays})
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    try:
        loaded = _parse(tmp, data, SCHEMA_HASH)
        if not np.array_equal(loaded.model.score(rows), model.score(rows), equal_nan=True):
            raise ValueError(f"the model read back from {path} does not score as the one written")
    except BaseException:
        tmp.unlink()
        raise
    tmp.replace(path)
    checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def _expected_digest(path: Path) -> str:
    sums = checksum_path(path)
    if not sums.is_file():
        raise IncompatibleModelError(
            f"model {path} has no checksum file {sums.name}; refusing to load it"
        )
    text = sums.read_text().split()
    if not text or len(text[0]) != 64:
        raise IncompatibleModelError(f"checksum file {sums} is malformed")
    return text[0].lower()


def verified_bytes(path: Path) -> bytes:
    """The file's bytes, once they matched its checksum file (IncompatibleModelError if not)."""
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
    return data


def _read_arrays(path: Path, data: bytes) -> dict[str, NDArray[Any]]:
    """The archive's arrays; nothing in it is unpickled or run (IncompatibleModelError)."""
    if not data.startswith(_ZIP_MAGIC):
        raise IncompatibleModelError(
            f"model {path} is not a risk-engine model archive; a pickle or joblib model "
            "(the format before 2) is not loaded, since unpickling runs whatever code the "
            "file holds: retrain with `risk-engine train`, or convert a model file you "
            "trust with `risk-engine convert-model --trusted-pickle`"
        )
    arrays: dict[str, NDArray[Any]] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
                raise IncompatibleModelError(f"model {path} claims more than 1 GiB of arrays")
            for member in members:
                name = member.filename.removesuffix(".npy")
                if name == member.filename or name in arrays or member.is_dir():
                    raise IncompatibleModelError(
                        f"model {path} holds an unexpected member {member.filename!r}"
                    )
                with archive.open(member) as handle:
                    arrays[name] = np.lib.format.read_array(handle, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        # Object arrays (pickles) are refused by allow_pickle=False with a ValueError.
        raise IncompatibleModelError(f"model {path} cannot be read: {exc}") from exc
    return arrays


def _parse(path: Path, data: bytes, schema_hash: str) -> ModelArtifact:
    arrays = _read_arrays(path, data)
    raw = arrays.pop(ENVELOPE, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise IncompatibleModelError(f"model {path} is not a risk-engine artifact: no envelope")
    try:
        envelope = json.loads(raw.tobytes())
    except ValueError as exc:
        raise IncompatibleModelError(f"model {path} has an unreadable envelope: {exc}") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != ARTIFACT_FORMAT:
        raise IncompatibleModelError(f"model {path} is not a risk-engine artifact of this format")
    if envelope.get("schema_hash") != schema_hash:
        raise IncompatibleModelError(
            f"model {path} was built for feature schema {envelope.get('schema_hash')}, "
            f"this engine computes {schema_hash}: retrain it with `risk-engine train`"
        )
    fields = {k: v for k, v in envelope.items() if k not in ("format", "model")}
    for name, kind in _ENVELOPE_TYPES.items():
        if not isinstance(fields.get(name), kind):
            raise IncompatibleModelError(f"model {path} has an unexpected envelope field {name}")
    try:
        model = RiskModel.from_arrays(envelope.get("model", {}), arrays, len(FEATURE_NAMES))
    except ValueError as exc:
        raise IncompatibleModelError(f"model {path} is refused: {exc}") from exc
    fields["feature_names"] = tuple(fields.get("feature_names", ()))
    try:
        return ModelArtifact(model=model, **fields)
    except TypeError as exc:
        raise IncompatibleModelError(f"model {path} has an unexpected envelope: {exc}") from exc


_ENVELOPE_TYPES: dict[str, type | tuple[type, ...]] = {
    "model_version": str,
    "schema_hash": str,
    "feature_version": int,
    "feature_names": list,
    "created_at": str,
    "libraries": dict,
    "training": dict,
    "metrics": dict,
    "thresholds": dict,
}


def load_artifact(path: Path, *, schema_hash: str = SCHEMA_HASH) -> ModelArtifact:
    """Verify the checksum, then read the arrays, the envelope and the feature schema.

    Returns the model checked and compiled, ready to score one row or many.
    """
    return _parse(path, verified_bytes(path), schema_hash)


def default_model_path() -> Path:
    """The bundled default model: ``risk_engine/data/default.npz``.

    Package data, so that a checkout, an editable install and an installed wheel
    all find it beside the code that reads it (``make model`` rebuilds it there).
    """
    return Path(__file__).resolve().parents[1] / "data" / "default.npz"
