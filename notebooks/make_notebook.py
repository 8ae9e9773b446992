"""Write notebooks/calibrate_thresholds.ipynb from the cells below, without outputs.

The notebook is generated so that its JSON stays reviewable and reproducible:
edit the cells here, run ``.venv/bin/python notebooks/make_notebook.py``, and
commit both files. The computations live in risk_engine/offline/evaluate.py and
risk_engine/offline/calibrate.py; the notebook only calls them and draws.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("calibrate_thresholds.ipynb")

CELLS: list[tuple[str, str]] = [
    (
        "markdown",
        """# Threshold calibration

Replays a labelled log through the engine (the contract backtest, with step-up
outcomes taken from the labels), shows how well the scores separate attacks from
legitimate activity, and turns a friction target (challenge at most 2% of
legitimate events per action class) into per-class thresholds with
`risk_engine/offline/calibrate.py`, the code behind `risk-engine calibrate`.

Inputs come from environment variables (defaults in brackets):

| variable | meaning |
| --- | --- |
| `CALIBRATE_EVENTS` | events [data/samples/events.jsonl] |
| `CALIBRATE_LABELS` | labels [data/samples/labels.jsonl] |
| `CALIBRATE_MODEL` | model artifact [the bundled risk_engine/data/default.npz] |
| `CALIBRATE_POLICY` | policy to start from [the bundled one] |
| `CALIBRATE_POLICY_OUT` | where to write the calibrated policy [a temp file] |
| `CALIBRATE_TARGET_CHALLENGE`, `CALIBRATE_TARGET_DENY` | targets [0.02, 0.001] |
| `CALIBRATE_MIN_LEGIT` | fewer legitimate events: the class keeps its thresholds [200] |""",
    ),
    (
        "code",
        """import io
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless and the same everywhere; figures are shown as PNG below
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from IPython.display import Image, display
import risk_engine
from risk_engine.model.artifact import default_model_path
from risk_engine.offline.calibrate import (
    calibrate_policy,
    challenged,
    class_curves,
    class_names,
    write_policy,
)
from risk_engine.offline.evaluate import build_run, labelled_backtest, rates
from risk_engine.offline.labels import load_labels
from risk_engine.offline.logs import LogReport
from risk_engine.policy import load_policy

ROOT = Path(risk_engine.__file__).resolve().parents[1]
EVENTS = Path(os.environ.get("CALIBRATE_EVENTS", ROOT / "data/samples/events.jsonl"))
LABELS = Path(os.environ.get("CALIBRATE_LABELS", ROOT / "data/samples/labels.jsonl"))
MODEL = Path(os.environ.get("CALIBRATE_MODEL", default_model_path()))
POLICY = Path(os.environ["CALIBRATE_POLICY"]) if os.environ.get("CALIBRATE_POLICY") else None
OUT = Path(
    os.environ.get("CALIBRATE_POLICY_OUT", Path(tempfile.gettempdir()) / "calibrated_policy.toml")
)
TARGET_CHALLENGE = float(os.environ.get("CALIBRATE_TARGET_CHALLENGE", "0.02"))
TARGET_DENY = float(os.environ.get("CALIBRATE_TARGET_DENY", "0.001"))
MIN_LEGIT = int(os.environ.get("CALIBRATE_MIN_LEGIT", "200"))
print(f"events {EVENTS}\\nlabels {LABELS}\\nmodel  {MODEL}\\nout    {OUT}")


def show(fig):
    # Display a figure as PNG (works under any backend) and release it.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    display(Image(data=buffer.getvalue()))""",
    ),
    ("markdown", "## Backtest: the engine's decisions on the labelled log"),
    (
        "code",
        """labels = load_labels([LABELS], LogReport())
workdir = Path(tempfile.mkdtemp(prefix="calibrate-notebook-"))
decisions, outcomes, summary = labelled_backtest(
    EVENTS, labels, workdir, model_path=MODEL, policy_path=POLICY
)
run = build_run(EVENTS, labels, decisions)
policy = load_policy(POLICY)
legit, attack = ~run.attack, run.attack
print(
    f"{summary.events:,} events, {int(attack.sum()):,} attacks; model {summary.model_version}; "
    f"policy {policy.version}; decisions {dict(summary.decisions)}"
)""",
    ),
    ("markdown", "## Scores: legitimate against attack"),
    (
        "code",
        """fig, ax = plt.subplots(figsize=(8, 4))
bins = np.linspace(0.0, 1.0, 51)
ax.hist(run.score[legit], bins=bins, alpha=0.6, density=True, label=f"legitimate ({legit.sum():,})")
ax.hist(run.score[attack], bins=bins, alpha=0.6, density=True, label=f"attack ({attack.sum():,})")
ax.set_yscale("log")
ax.set_xlabel("score")
ax.set_ylabel("density")
ax.legend()
fig.tight_layout()
show(fig)""",
    ),
    (
        "code",
        """fpr, tpr, _ = roc_curve(attack, run.score)
precision, recall, _ = precision_recall_curve(attack, run.score)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
left.plot(fpr, tpr)
left.set_xscale("log")
left.set_xlim(1e-4, 1.0)
left.set_xlabel("legitimate events flagged (FPR)")
left.set_ylabel("attacks caught (TPR)")
left.set_title("ROC")
right.plot(recall, precision)
right.set_xlabel("recall")
right.set_ylabel("precision")
right.set_title("precision-recall")
fig.tight_layout()
show(fig)""",
    ),
    ("markdown", "## Friction against catch, per action class (floors included)"),
    (
        "code",
        """curves = class_curves(run, policy)
fig, ax = plt.subplots(figsize=(8, 5))
for name, curve in curves.items():
    (line,) = ax.plot(curve.legit_rate, curve.catch_rate, label=name)
    current = policy.classes[name].step_up
    at = np.searchsorted(-curve.thresholds, -current, side="right") - 1
    if at >= 0:
        ax.plot(curve.legit_rate[at], curve.catch_rate[at], "o", color=line.get_color())
ax.axvline(TARGET_CHALLENGE, linestyle="--", color="grey", label="target")
ax.set_xscale("symlog", linthresh=1e-3)
ax.set_xlim(0.0, 1.0)
ax.set_xlabel("legitimate events challenged")
ax.set_ylabel("attacks caught")
ax.legend()
fig.tight_layout()
show(fig)""",
    ),
    ("markdown", "## Calibrate: per-class thresholds for the target"),
    (
        "code",
        """calibrated, report = calibrate_policy(
    run,
    policy,
    target_challenge=TARGET_CHALLENGE,
    target_deny=TARGET_DENY,
    min_legit=MIN_LEGIT,
)
table = pd.DataFrame(
    {
        "class": r.name,
        "legit": r.legit,
        "attacks": r.attacks,
        "step_up": f"{r.step_up[0]:.6g} -> {r.step_up[1]:.6g}",
        "deny": f"{r.deny[0]:.6g} -> {r.deny[1]:.6g}",
        "legit challenged (new)": r.challenge_rate[1],
        "attacks caught (new)": r.catch_rate[1],
        "note": r.note,
    }
    for r in report
)
table""",
    ),
    (
        "code",
        """types = run.attack_types
before = rates(challenged(run, policy), attack, types)
after = rates(challenged(run, calibrated), attack, types)
kinds = sorted(before["catch_by_type"])
x = np.arange(len(kinds))
fig, ax = plt.subplots(figsize=(9, 4))
ax.bar(x - 0.2, [before["catch_by_type"][k] for k in kinds], 0.4, label=f"{policy.version}")
ax.bar(x + 0.2, [after["catch_by_type"][k] for k in kinds], 0.4, label=f"{calibrated.version}")
ax.set_xticks(x, kinds, rotation=20, ha="right")
ax.set_ylabel("attacks stepped up or denied")
ax.set_ylim(0.0, 1.05)
ax.legend()
fig.tight_layout()
show(fig)
print(
    f"legitimate challenge rate {before['legit_challenge_rate']:.2%} -> "
    f"{after['legit_challenge_rate']:.2%}; catch {before['catch_rate']:.2%} -> "
    f"{after['catch_rate']:.2%}"
)""",
    ),
    ("markdown", "## Write the calibrated policy (validated by loading it back)"),
    (
        "code",
        """written = write_policy(calibrated, OUT)
print(f"policy {written.version} -> {OUT}")""",
    ),
]


def build() -> nbformat.NotebookNode:
    """The notebook, with no outputs and no execution counts."""
    cells = [
        new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        for kind, source in CELLS
    ]
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    # Stable cell ids: a regenerated notebook differs only where a cell changed.
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"
    nbformat.validate(notebook)
    return notebook


def main() -> None:
    NOTEBOOK.write_text(nbformat.writes(build()) + "\n")
    print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
    main()
