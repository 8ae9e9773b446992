"""Training/serving parity: the HTTP endpoint, the backtest and the training replay agree.

The same sample events go through `POST /v1/decisions` (features echoed), through
`risk-engine backtest`'s code and through the training replay (`Engine.replay`,
told what the service decided); features and scores must be identical.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from risk_engine.api import create_app
from risk_engine.config import Settings
from risk_engine.engine import Engine
from risk_engine.events import parse_event_line
from risk_engine.features.registry import FEATURE_NAMES
from risk_engine.geo import GeoLocator
from risk_engine.offline.backtest import run_backtest
from risk_engine.privacy import Hasher
from risk_engine.profiles.memory import MemoryStore

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "events.jsonl"
COUNT = 600


@pytest.fixture(scope="module")
def sample_lines() -> list[bytes]:
    with SAMPLE.open("rb") as handle:
        return [next(handle) for _ in range(COUNT)]


def test_http_backtest_and_training_replay_agree(
    make_settings: Callable[..., Settings],
    model_path: Path,
    sample_lines: list[bytes],
    tmp_path: Path,
) -> None:
    settings = make_settings(store="memory://", include_features=True, auth_disabled=True)
    served = []
    with TestClient(create_app(settings)) as client:
        for raw in sample_lines:
            response = client.post(
                "/v1/decisions", content=raw, headers={"content-type": "application/json"}
            )
            assert response.status_code == 200, response.text
            served.append(response.json())

    events_path = tmp_path / "events.jsonl"
    events_path.write_bytes(b"".join(sample_lines))
    out = tmp_path / "decisions.jsonl"
    run_backtest(events_path, out, model_path=model_path, progress=False)
    backtested = [orjson.loads(line) for line in out.read_bytes().splitlines()]

    engine = Engine(
        store=MemoryStore(), geo=GeoLocator(), scorer=None, hasher=Hasher("another secret")
    )
    decisions = {d["decision"] for d in served}
    assert {"allow", "step_up"} <= decisions, "the sample should exercise trust and step-ups"
    for raw, http, offline in zip(sample_lines, served, backtested, strict=True):
        assert http["event_id"] == offline["event_id"]
        assert http["score"] == offline["score"]
        assert http["decision"] == offline["decision"]
        assert http["reasons"] == offline["reasons"]
        values, _ = engine.replay(
            parse_event_line(raw),
            trusted=http["decision"] == "allow",
            refused=http["decision"] == "deny",
        )
        assert http["features"] == dict(zip(FEATURE_NAMES, values, strict=True))
