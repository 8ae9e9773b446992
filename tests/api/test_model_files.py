"""The server's model file: a reload never runs code from it (issue 14, defect 5)."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from risk_engine.features.registry import SCHEMA_HASH

EventFactory = Callable[..., dict[str, Any]]
Serve = Callable[..., Any]


class _Trap:
    """Unpickling this creates ``marker``: what any code in a crafted pickle could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


def test_reload_of_a_crafted_pickle_runs_nothing_and_keeps_the_model(
    serve: Serve,
    model_path: Path,
    tmp_path: Path,
    api_key: str,
    admin_api_key: str,
    make_event: EventFactory,
) -> None:
    live = tmp_path / "live" / model_path.name
    live.parent.mkdir()
    shutil.copy(model_path, live)
    shutil.copy(model_path.with_name(model_path.name + ".sha256"), live.parent)
    server = serve(RISK_ENGINE_MODEL_PATH=str(live))
    headers = {"Authorization": f"Bearer {admin_api_key}"}
    url = server.base_url
    before = httpx.get(url + "/v1/model", headers=headers).json()["model_version"]

    # The attacker replaces the model file and writes its matching checksum.
    marker = tmp_path / "pwned"
    data = pickle.dumps({"format": 1, "schema_hash": SCHEMA_HASH, "model": _Trap(marker)})
    live.write_bytes(data)
    live.with_name(live.name + ".sha256").write_text(
        f"{hashlib.sha256(data).hexdigest()}  {live.name}\n"
    )
    response = httpx.post(url + "/v1/admin/reload", headers=headers, timeout=30)
    assert not marker.exists()
    assert response.status_code == 500
    message = response.json()["message"]
    assert "reload refused, the running model is kept" in message
    assert str(live) in message and "risk-engine train" in message
    assert httpx.get(url + "/v1/model", headers=headers).json()["model_version"] == before
    decide = {"Authorization": f"Bearer {api_key}"}
    decided = httpx.post(url + "/v1/decisions", json=make_event(), headers=decide)
    assert decided.status_code == 200, decided.text
    assert decided.json()["model_version"] == before
