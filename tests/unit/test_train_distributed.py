"""Training, evaluation and calibration on Dask give what they give in one process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from risk_engine.cli import SAMPLE_ROWS_DEFAULT, app
from risk_engine.events import parse_event
from risk_engine.geo import GeoLocator
from risk_engine.model.artifact import load_artifact
from risk_engine.model.detector import DetectorParams
from risk_engine.offline.calibrate import calibrate_log
from risk_engine.offline.evaluate import evaluate
from risk_engine.offline.labels import Label, load_attack_labels, load_labels
from risk_engine.offline.logs import LogReport
from risk_engine.offline.sample import SAMPLE_ROWS, FeatureSample, priority
from risk_engine.offline.train import train

SAMPLES = Path(__file__).parents[2] / "data" / "samples"
EVENTS = SAMPLES / "events.jsonl"
LABELS = SAMPLES / "labels.jsonl"
PARAMS = DetectorParams(n_estimators=30, supervised_max_iter=15)
# Below the sample's 4,000 legitimate events: the sampling itself is compared too.
CAPACITY = 1500


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Boosting's OpenMP threads crawl on a busy 2-core machine; results do not depend on them.
    with threadpool_limits(limits=1):
        yield


def _event(k: int) -> Any:
    # Ids repeat across events at other instants: the priority hashes all three.
    return parse_event(
        {
            "event_id": f"e{k % 250}",
            "user_id": f"u{k % 7}",
            "timestamp": f"2026-01-01T00:{k // 60 % 60:02d}:{k % 60:02d}Z",
            "action": "login",
            "ip": "203.0.113.9",
            "success": True,
        }
    )


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 300),
    capacity=st.integers(1, 60),
    parts=st.integers(1, 5),
    attacks=st.sets(st.integers(0, 299), max_size=20),
    seed=st.integers(-(2**40), 2**40),
)
def test_merged_partition_samples_are_the_sample_of_the_whole(
    size: int, capacity: int, parts: int, attacks: set[int], seed: int
) -> None:
    """Bottom-k by a keyed hash: whatever the partitioning, the same rows, all attacks kept."""
    events = [_event(k) for k in range(size)]
    label = Label(is_attack=True, attack_type="x")
    whole = FeatureSample(capacity, seed)
    pieces = [FeatureSample(capacity, seed) for _ in range(parts)]
    for k, event in enumerate(events):
        values = [float(k)] * 52
        known = label if k in attacks else None
        whole.add(event, values, known)
        pieces[k % parts].add(event, values, known)
    merged = FeatureSample(capacity, seed)
    for piece in pieces:
        merged.merge(piece.finished())
    whole.finished()
    assert merged.legit == whole.legit
    assert sorted(merged.attack_rows) == sorted(whole.attack_rows)
    legit = [e for k, e in enumerate(events) if k not in attacks]
    expected = sorted(priority(e, seed) for e in legit)[:capacity]
    assert [row[0] for row in whole.legit] == expected
    assert len(whole.attack_rows) == whole.attacks == len([k for k in attacks if k < size])
    assert merged.events == whole.events == size


def test_training_reads_the_attack_labels_as_load_labels_would(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text(
        '{"event_id": "a", "is_attack": true, "attack_type": "x"}\n'
        '{"event_id": "b", "is_attack": true}\n'
        '{"event_id": "c", "is_attack": false}\n'
        "{torn\n"
        '{"event_id": "b", "is_attack": false}\n'  # a later line overrides
    )
    report = LogReport()
    attacks, count = load_attack_labels([path], report)
    everything = load_labels([path], LogReport())
    assert (
        attacks
        == {k: v for k, v in everything.items() if v.is_attack}
        == {"a": Label(is_attack=True, attack_type="x")}
    )
    assert count == 4 and report.bad == 1


def test_the_cli_default_is_the_sample_size() -> None:
    assert SAMPLE_ROWS_DEFAULT == SAMPLE_ROWS


def _trained(tmp_path: Path, name: str, **where: Any) -> tuple[Any, Any, Path]:
    out = tmp_path / name / "model.npz"
    artifact, table = train(
        [EVENTS], out, labels=[LABELS], params=PARAMS, sample_rows=CAPACITY, **where
    )
    return artifact, table, out


def _same_model(one: tuple[Any, Any, Path], other: tuple[Any, Any, Path]) -> None:
    (a1, t1, p1), (a2, t2, p2) = one, other
    np.testing.assert_array_equal(t1.X, t2.X)
    assert t1.event_ids == t2.event_ids
    assert a1.training == a2.training
    assert a1.metrics == a2.metrics
    assert a1.thresholds == a2.thresholds
    assert a1.model_version == a2.model_version
    m1, m2 = load_artifact(p1).model, load_artifact(p2).model
    probe = m1.probe_rows(2048)
    np.testing.assert_array_equal(m1.score(probe), m2.score(probe))
    np.testing.assert_array_equal(m1.score(t1.X), m2.score(t1.X))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    return _trained(tmp_path_factory.mktemp("one"), "one", workers=1)


def test_training_keeps_a_bounded_sample_and_counts_the_whole_log(
    one_process: tuple[Any, Any, Path],
) -> None:
    artifact, table, _ = one_process
    attacks = int(table.attack.sum())
    assert artifact.training["events"] > table.X.shape[0] == CAPACITY + attacks
    assert artifact.training["attacks"] == attacks > 0
    assert artifact.training["sample"] == {"rows": CAPACITY + attacks, "legit_capacity": CAPACITY}
    assert np.all(np.diff(table.timestamps) >= 0)


def test_a_local_cluster_trains_the_model_of_one_process(
    tmp_path: Path, one_process: tuple[Any, Any, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _same_model(one_process, _trained(tmp_path, "local", workers=2))
    assert "Dask dashboard: http://" in capsys.readouterr().err


def test_training_shows_progress_when_asked_and_is_quiet_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = DetectorParams(n_estimators=10, supervised_max_iter=5)
    train([EVENTS], tmp_path / "a.npz", params=small, workers=1, progress=True)
    shown = capsys.readouterr()
    assert "train" in shown.err and "events/s" in shown.err and "events/s" not in shown.out
    result = CliRunner().invoke(
        app,
        ["train", str(EVENTS), "--out", str(tmp_path / "b.npz"), "--trees", "10", "--workers", "1"],
    )
    assert result.exit_code == 0, result.output
    # Not a terminal: no progress bar, and no cluster, so no dashboard either.
    assert "events/s" not in result.output and "dashboard" not in result.output
    assert "fitted on a sample of" in result.output


def _figures(tmp_path: Path, **where: Any) -> tuple[Any, Any]:
    geo = GeoLocator()
    try:
        report, _ = evaluate(EVENTS, LABELS, geo=geo, **where)
        _, rows, reading = calibrate_log(
            EVENTS, LABELS, tmp_path / f"policy-{len(where)}.toml", geo=geo, **where
        )
    finally:
        geo.close()
    return report, (rows, reading.bad)


def test_a_local_cluster_evaluates_and_calibrates_as_one_process(tmp_path: Path) -> None:
    one = _figures(tmp_path, workers=1)
    local = _figures(tmp_path, workers=2)
    assert local == one


@pytest.mark.slow
def test_a_two_worker_cluster_trains_evaluates_and_calibrates_as_one_process(
    tmp_path: Path, dask_cluster: str, one_process: tuple[Any, Any, Path]
) -> None:
    _same_model(one_process, _trained(tmp_path, "cluster", scheduler=dask_cluster))
    assert _figures(tmp_path, scheduler=dask_cluster) == _figures(tmp_path, workers=1)
