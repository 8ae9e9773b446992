"""Converting a trusted pickled model (artifact format 1, joblib) into the data format.

Unpickling runs whatever code the file holds, and a matching checksum proves
only that the file is the one its checksum file names: this module is the one
place that unpickles a model, and only when told the file is trusted (the
`risk-engine convert-model --trusted-pickle` command). The engine never imports it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from risk_engine.errors import IncompatibleModelError
from risk_engine.model.artifact import ModelArtifact, save_artifact, verified_bytes
from risk_engine.model.detector import RiskModel

PICKLE_FORMAT = 1


def convert_trusted_pickle(
    source: Path,
    out: Path,
    *,
    trusted: bool,
    check_rows: np.ndarray | None = None,
) -> ModelArtifact:
    """Unpickle ``source`` (a format-1 joblib artifact you trust) and save it as data at ``out``.

    The envelope is kept as it was (model version included, so decisions name the
    same model); ``training["converted_from"]`` records the source and its sha256.
    The saved model must score ``check_rows`` and rows probing every split as the
    pickled scikit-learn detectors do (``save_artifact``).
    """
    if not trusted:
        raise IncompatibleModelError(
            f"converting {source} unpickles it, which runs any code it holds: "
            "only for a file you trust, and only when told so (--trusted-pickle)"
        )
    data = verified_bytes(source)
    import joblib

    try:
        envelope = joblib.load(io.BytesIO(data))
    except Exception as exc:  # verified bytes that still fail to unpickle: say so, clearly
        raise IncompatibleModelError(f"model {source} cannot be unpickled: {exc}") from exc
    if not isinstance(envelope, dict) or envelope.get("format") != PICKLE_FORMAT:
        raise IncompatibleModelError(f"model {source} is not a format-1 risk-engine artifact")
    model = envelope.get("model")
    if not isinstance(model, RiskModel):
        raise IncompatibleModelError(f"model {source} does not hold a RiskModel")
    model.flatten_fitted()
    fields = {k: v for k, v in envelope.items() if k not in ("format", "model")}
    fields["feature_names"] = tuple(fields.get("feature_names", ()))
    fields["training"] = {
        **fields.get("training", {}),
        "converted_from": {"file": source.name, "sha256": hashlib.sha256(data).hexdigest()},
    }
    try:
        artifact = ModelArtifact(model=model, **fields)
    except TypeError as exc:
        raise IncompatibleModelError(f"model {source} has an unexpected envelope: {exc}") from exc
    save_artifact(artifact, out, check_rows=check_rows)
    return artifact
