"""The calibration notebook runs end to end on the sample data and writes a valid policy."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
from nbclient import NotebookClient

from risk_engine.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "calibrate_thresholds.ipynb"
GENERATOR = ROOT / "notebooks" / "make_notebook.py"
SAMPLES = ROOT / "data" / "samples"


def generator() -> ModuleType:
    """notebooks/make_notebook.py, loaded from its file (notebooks/ is no package)."""
    spec = importlib.util.spec_from_file_location("make_notebook", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebook_is_the_generated_one_without_outputs() -> None:
    expected = nbformat.writes(generator().build()) + "\n"
    assert NOTEBOOK.read_text() == expected, "run: .venv/bin/python notebooks/make_notebook.py"
    notebook = nbformat.reads(expected, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.timeout(120)
def test_notebook_calibrates_the_sample_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, labels = SAMPLES / "events.jsonl", SAMPLES / "labels.jsonl"
    assert events.is_file() and labels.is_file(), "sample data missing: run `make sample`"
    out = tmp_path / "calibrated.toml"
    # The kernel inherits this environment: inputs, output, and a headless matplotlib.
    monkeypatch.setenv("CALIBRATE_EVENTS", str(events))
    monkeypatch.setenv("CALIBRATE_LABELS", str(labels))
    monkeypatch.setenv("CALIBRATE_POLICY_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # jupyter_core warns (DeprecationWarning) unless told to use the platformdirs paths.
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=90,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
    figures = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert figures >= 4
    policy = load_policy(out)
    assert all(c.step_up < c.deny for c in policy.classes.values())
    assert policy.version != load_policy().version
