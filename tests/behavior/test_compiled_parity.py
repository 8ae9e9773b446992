"""The compiled decision core decides exactly as its sources do, bit for bit.

Thousands of simulated events are replayed twice, in two processes: once on the
compiled modules (risk_engine/compiled.py), once on their sources
(RISK_ENGINE_PURE_PYTHON=1). Every feature value (as its exact float), score,
decision and reason must be the same. The profiles go through the SQLite store
without its cache, so every event also reads a profile packed and unpacked by the
code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from risk_engine.compiled import PURE_PYTHON_ENV, status

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    """Replay ``argv[1]`` and write one line per decision to ``argv[2]``; the mode first."""
    from risk_engine.assembly import load_scorer
    from risk_engine.engine import Engine
    from risk_engine.features import registry
    from risk_engine.geo import GeoLocator
    from risk_engine.offline.logs import LogReport, events_in_time_order
    from risk_engine.privacy import Hasher
    from risk_engine.profiles import SQLiteStore

    events, out = Path(sys.argv[1]), Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "parity.db", cache_profiles=0)
        engine = Engine(
            store=store,
            geo=GeoLocator(),
            scorer=load_scorer(None, None),
            hasher=Hasher("parity-secret"),
            include_features=True,
        )
        try:
            with out.open("w") as f:
                head = {"mode": status().mode, "registry": Path(registry.__file__).suffix}
                f.write(json.dumps(head) + "\n")
                for event in events_in_time_order(events, LogReport()):
                    d = engine.decide(event)
                    assert d.features is not None
                    line = {
                        "event_id": d.event_id,
                        "score": d.score.hex(),
                        "decision": d.decision.value,
                        "reasons": [[r.code, r.detail] for r in d.reasons],
                        "features": {k: v.hex() for k, v in d.features.items()},
                    }
                    f.write(json.dumps(line) + "\n")
        finally:
            store.close()


def _replay(events: Path, out: Path, *, pure: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != PURE_PYTHON_ENV}
    if pure:
        env[PURE_PYTHON_ENV] = "1"
    code = "from tests.behavior.test_compiled_parity import main; main()"
    subprocess.run(
        [sys.executable, "-c", code, str(events), str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=600,
    )
    return out.read_text().splitlines()


def test_compiled_and_pure_python_decide_identically(tmp_path: Path) -> None:
    if not status().compiled or os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0"):
        pytest.skip("the core is not compiled here: nothing to hold to its sources")
    events = tmp_path / "events.jsonl"
    subprocess.run(
        [
            *(sys.executable, "-c", "from risk_engine.cli import main; main()", "simulate"),
            *("--users", "200", "--days", "14", "--seed", "5", "--out", str(events)),
            *("--labels", str(tmp_path / "labels.jsonl")),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=600,
    )
    compiled = _replay(events, tmp_path / "compiled.jsonl", pure=False)
    pure = _replay(events, tmp_path / "pure.jsonl", pure=True)
    assert json.loads(compiled[0])["mode"].startswith("compiled")
    assert json.loads(compiled[0])["registry"] == ".so"
    assert json.loads(pure[0])["mode"].startswith("pure Python")
    assert json.loads(pure[0])["registry"] == ".py"
    assert len(compiled) == len(pure) > 3000
    for line_compiled, line_pure in zip(compiled[1:], pure[1:], strict=True):
        assert line_compiled == line_pure
    decisions = {json.loads(line)["decision"] for line in compiled[1:]}
    assert decisions == {"allow", "step_up", "deny"}
