"""Training is a pure function of its inputs and seed: same seed, same model; other seed, other."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import ModelArtifact, load_artifact
from risk_engine.model.detector import DetectorParams, RiskModel
from risk_engine.offline.replay import FeatureTable
from risk_engine.offline.train import train

SAMPLES = Path(__file__).parents[2] / "data" / "samples"
# Small: fewer trees and boosting rounds than the shipped model, same code.
PARAMS = DetectorParams(n_estimators=50, supervised_max_iter=25)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Boosting's OpenMP threads crawl on a busy 2-core machine; results do not depend on them.
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def geo() -> Iterator[GeoLocator]:
    locator = GeoLocator()
    yield locator
    locator.close()


Run = tuple[ModelArtifact, FeatureTable, Path, str]


def _train(tmp_path: Path, name: str, geo: GeoLocator, params: DetectorParams) -> Run:
    out = tmp_path / name / "model.joblib"
    artifact, table = train(
        [SAMPLES / "events.jsonl"],
        out,
        labels=[SAMPLES / "labels.jsonl"],
        params=params,
        geo=geo,
    )
    return artifact, table, out, datetime.now(UTC).strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, geo: GeoLocator) -> tuple[Run, Run]:
    root = tmp_path_factory.mktemp("train")
    return _train(root, "first", geo, PARAMS), _train(root, "second", geo, PARAMS)


def test_same_seed_gives_identical_scores_and_version(two_runs: tuple[Run, Run]) -> None:
    (a1, table1, path1, day1), (a2, table2, path2, day2) = two_runs
    np.testing.assert_array_equal(table1.X, table2.X)
    assert a1.model.kind == "iforest+hgb"
    s1 = load_artifact(path1).model.score(table1.X)
    s2 = load_artifact(path2).model.score(table1.X)
    np.testing.assert_array_equal(s1, s2)
    assert a1.metrics == a2.metrics
    assert a1.thresholds == a2.thresholds
    if day1 == day2:  # the version names the day it was made
        assert a1.model_version == a2.model_version
    assert a1.model_version.rsplit("-", 1)[1] == a2.model_version.rsplit("-", 1)[1]


def test_training_records_what_it_was_trained_on(two_runs: tuple[Run, Run]) -> None:
    (artifact, table, _, _), _ = two_runs
    assert artifact.training["events"] == table.X.shape[0]
    assert artifact.training["attacks"] == int(table.attack.sum()) > 0
    assert artifact.training["params"]["n_estimators"] == 50
    assert artifact.model_version.startswith("iforest+hgb-")


def test_another_seed_gives_another_model(two_runs: tuple[Run, Run]) -> None:
    (artifact, table, _, _), _ = two_runs
    other = RiskModel(DetectorParams(n_estimators=50, supervised_max_iter=25, seed=1))
    other.fit(table.X, table.attack)
    assert not np.array_equal(other.score(table.X), artifact.model.score(table.X))


def test_too_little_data_is_refused(tmp_path: Path, geo: GeoLocator) -> None:
    events = tmp_path / "few.jsonl"
    with (SAMPLES / "events.jsonl").open() as handle:
        events.write_text("".join(line for _, line in zip(range(20), handle, strict=False)))
    with pytest.raises(ValueError, match="too few"):
        train([events], tmp_path / "m.joblib", params=PARAMS, geo=geo)
